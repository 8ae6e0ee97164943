"""``export(cfg) -> path``: a training checkpoint -> a FAISS index artifact (see ``twotower.artifact``)."""
from __future__ import annotations

import datetime as dt
import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import safetensors
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import twotower
from twotower.artifact import (
    CANDIDATE_TOWER,
    INDEX,
    INDEX_INFOS,
    INDEX_PLOT,
    ITEM_EVENTS,
    ITEM_FEATURES,
    ITEM_IDS,
    ITEM_VECTORS,
    ITEMS,
    MAX_ID_CHARS,
    QUERY_ONNX,
    QUERY_PROGRAM,
    QUERY_TORCHSCRIPT,
    QUERY_TOWER,
    TOWER_CONFIG,
    TOWER_VOCAB,
    USER_FEATURES,
    USER_HISTORIES,
    USER_IDS,
    USER_SEEN,
    ArtifactWriter,
)
from twotower.artifact_checks import tower_digest
from twotower.config_check import ConfigError, ExportConfig, check_config
from twotower.data.serving_data import ServingData
from twotower.data.store import Features
from twotower.index import IndexSpec, build_and_measure
from twotower.model.saving import SavedTower
from twotower.model.two_tower import TwoTower
from twotower.plots import plot_recall_vs_latency
from twotower.portable import export_program, serving_signature, write_onnx
from twotower.progress import progress
from twotower.query_inputs import query_inputs
from twotower.task.popularity_prior import PopularityPrior
from twotower.task.retrieval import encode_catalogue
from twotower.tracking import log_exported_artifact, wandb_logger_config

log = logging.getLogger(__name__)


def find_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file as is; for a run directory, the best checkpoint its ModelCheckpoint recorded.

    The best path is read from ``checkpoints/last.ckpt`` (and looked up by name in that folder,
    so a run directory that moved still works); without it, the folder's only checkpoint that is
    not a resume point (``resume-*.ckpt``).
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a .ckpt file or a training run directory)")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    last = folder / "last.ckpt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        for name, callback in state.get("callbacks", {}).items():
            # Only a checkpoint callback that monitors a metric has a best; resume-point callbacks have none.
            best = callback.get("best_model_path") if name.startswith("ModelCheckpoint") and callback.get("monitor") else None
            if best and (folder / Path(best).name).is_file():
                return folder / Path(best).name
    others = sorted(p for p in folder.glob("*.ckpt") if p.name != "last.ckpt" and not p.name.startswith("resume-"))
    if len(others) == 1:
        return others[0]
    if not others and last.is_file():
        return last
    raise FileNotFoundError(f"no best checkpoint found in {folder} (checkpoints: {[p.name for p in folder.glob('*.ckpt')]}); pass a .ckpt file")


def load_checkpoint(path: Path) -> tuple[TwoTower, dict[str, Any], dict[str, Any]]:
    """The towers with trained weights, the checkpoint's ``twotower`` metadata, and the raw checkpoint."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint.get("twotower")
    if not meta or not meta.get("run_config"):
        raise ValueError(f"checkpoint {path} has no 'twotower' metadata (model_config, preprocessor, run_config): was it written by twotower's train?")
    model = TwoTower.from_config(meta["model_config"])
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(weights)
    return model.eval(), meta, checkpoint


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda where available, else cpu) or a torch device; ConfigError naming the setting for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device (auto, cpu, cuda, cuda:<n>, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}, but this machine has no CUDA device (device=auto or device=cpu)")
    return device


@torch.inference_mode()
def encode(tower: SavedTower, rows: int, gather, device: torch.device, chunk: int, desc: str = "encoding") -> np.ndarray:
    """(rows, dim) float32 vectors, ``chunk`` rows on the device at a time (``encode_catalogue``)."""
    starts = progress(range(0, rows, chunk), desc=desc, unit="chunk")
    chunks = ({k: v.to(device) for k, v in gather(torch.arange(start, min(rows, start + chunk))).items()} for start in starts)
    return encode_catalogue(lambda features: tower(features).float().cpu(), chunks).numpy()


def export(cfg: DictConfig | Mapping[str, Any]) -> Path:
    """Encode the catalogue with a checkpoint's candidate tower, build the index, write the artifact.

    ``cfg`` has ``checkpoint``, ``output_dir``, ``index`` (an ``IndexSpec`` config), ``device``,
    ``chunk_size``, ``eval_queries``, ``torchscript``, ``torch_export``, ``onnx`` (see ``conf/export.yaml``). Returns the artifact path.
    """
    cfg = OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg
    check_config(cfg, ExportConfig)  # before any work: unknown keys, wrongly typed or missing values
    spec = IndexSpec.from_config(OmegaConf.to_container(cfg.index, resolve=True))  # before any work too: settings the index would not read
    device = resolve_device(cfg.device)
    writer = ArtifactWriter(cfg.output_dir)  # before any work too: refuses an output_dir that is not a twotower artifact
    checkpoint_path = find_checkpoint(cfg.checkpoint)
    model, meta, checkpoint = load_checkpoint(checkpoint_path)
    log.info("exporting %s", checkpoint_path)
    datamodule = instantiate(meta["run_config"]["data"])
    datamodule.setup("fit")
    if datamodule.prepared.preprocessor.to_json() != meta["preprocessor"]:
        raise ValueError(f"the data of {checkpoint_path}'s run config no longer gives the vocabularies it was trained with: the tables changed since training")
    for table, ids in (("users", datamodule.prepared.user_rows), ("items", datamodule.prepared.item_rows)):
        longest = max(ids.astype(str), key=len, default="")
        if len(longest) > MAX_ID_CHARS:  # Retriever.load refuses wider ids: refuse before the work, not after
            raise ValueError(f"the {table} table has an id of {len(longest)} characters ({longest[:40]!r}...); an artifact's ids have at most {MAX_ID_CHARS}")
    model.to(device)
    data: ServingData = datamodule.serving_data()
    started = time.perf_counter()
    item_vectors = encode(model.candidate_tower, len(data.item_ids), lambda rows: {k: v[rows] for k, v in data.item_features.items()},
                          device, cfg.chunk_size, "encoding the catalogue")  # (n_items, D)
    sample = _sample(datamodule.prepared.eval_users["val"], cfg.eval_queries, datamodule.seed)
    queries = encode(model.query_tower, len(sample), lambda rows: datamodule.eval_batch(sample[rows], "val").query, device, cfg.chunk_size, "encoding queries")
    # Without a terminal the bars are off: one line for the encoding, and the index line below, instead.
    log.info("encoded %d items and %d queries on %s in %.1fs", len(item_vectors), len(queries), device, time.perf_counter() - started)
    prior = PopularityPrior.from_json(meta["popularity_prior"]) if meta.get("popularity_prior") else None
    if prior is not None and prior.active:
        # The blend the checkpoint was validated with, as the index's extra dimension: popularity over the whole exported log.
        popularity, _ = PopularityPrior.item_scores(prior.counts(data.log.event_items, data.log.event_times, len(data.item_ids)))
        item_vectors = np.concatenate([item_vectors, popularity[:, None]], axis=1)  # (n_items, D + 1)
        weights = prior.user_weights(datamodule.prepared.known["val"].row_lengths(sample).cpu()).numpy()
        queries = np.concatenate([queries, weights[:, None]], axis=1)
    else:
        prior = None
    started = time.perf_counter()
    index, infos = build_and_measure(item_vectors, queries, spec)
    log.info("index %s built, tuned and measured in %.1fs: recall@10 %.4f, p99 %.2f ms", infos["key"], time.perf_counter() - started,
             infos.get("recall@10", float("nan")), infos["latency_ms"]["p99"])

    model.cpu()
    with writer as out:  # waits for another export into the same output_dir to publish first
        faiss.write_index(index, str(out.file(INDEX)))
        out.json(INDEX_INFOS, infos)
        plot_recall_vs_latency(infos, out.file(INDEX_PLOT))
        out.array(ITEM_IDS, data.item_ids)
        out.array(ITEM_VECTORS, item_vectors)
        out.arrays(ITEM_FEATURES, {k: v.numpy() for k, v in data.item_features.items()})
        out.array(USER_IDS, data.user_ids)
        out.arrays(USER_FEATURES, {k: v.numpy() for k, v in data.user_features.items()})
        out.arrays(USER_HISTORIES, {k: v.numpy() for k, v in data.log.histories.items()})
        out.arrays(USER_SEEN, {"indptr": data.log.seen.indptr.numpy(), "indices": data.log.seen.indices.numpy()})
        out.arrays(ITEM_EVENTS, {"items": data.log.event_items, "times": data.log.event_times})
        _write_items_table(data.items, out.file(ITEMS))
        preprocessor, digests = meta["preprocessor"], {}
        for name, tower, side, ids in ((QUERY_TOWER, model.query_tower, "query", "user_ids"), (CANDIDATE_TOWER, model.candidate_tower, "candidate", "item_ids")):
            vocab = {"features": preprocessor[side], "ids": preprocessor[ids]}
            tower.save(out.file(f"{name}/{TOWER_CONFIG}").parent, vocab)
            digests[name] = tower_digest(tower.config, vocab, tower.weights())  # load refuses a tower whose files give another
        query = datamodule.prepared.preprocessor.query
        rows = torch.arange(min(2, len(data.user_ids)))
        example = query_inputs(query, {k: v[rows] for k, v in data.user_features.items()},
                               {k: v[rows] for k, v in data.log.histories.items()}, datamodule.prepared.item_vocab_index.cpu(),
                               lambda items: {k: v[items] for k, v in data.item_features.items()}, now=float(data.log.event_times.max(initial=0.0)))
        if cfg.torchscript:
            _torchscript(model.query_tower, example).save(str(out.file(QUERY_TORCHSCRIPT)))
        if cfg.torch_export:
            torch.export.save(export_program(model.query_tower, example, query), str(out.file(QUERY_PROGRAM)))
        if cfg.onnx:
            write_onnx(model.query_tower, example, query, out.file(QUERY_ONNX))
        path = out.commit({
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "libraries": {"twotower": twotower.__version__, "torch": torch.__version__, "faiss": faiss.__version__,
                          "numpy": np.__version__, "pandas": pd.__version__, "safetensors": safetensors.__version__},
            "dim": int(model.query_tower.output_dim),
            "metric": "inner_product",
            "normalized": bool(model.query_tower.normalize and model.candidate_tower.normalize) and prior is None,
            "popularity_prior": None if prior is None else prior.to_json(),
            "timestamps": bool(data.log.timed),  # false: item_events' times are zeros, so trending and the freshness knob are refused
            "counts": {"items": len(data.item_ids), "users": len(data.user_ids), "interactions": len(data.log.event_items), "indexed": int(index.ntotal)},
            "index": {"key": infos["key"], "search_params": infos["search_params"], "fetch_factor": infos["fetch_factor"], "recall@10": infos.get("recall@10")},
            "towers": digests,
            "serving_signature": serving_signature(example, query, f"{QUERY_TOWER}/{TOWER_VOCAB}", f"{CANDIDATE_TOWER}/{TOWER_VOCAB}"),
            "checkpoint": str(checkpoint_path),
            "training": _training_metrics(checkpoint, checkpoint_path),
            "config": {"run": meta["run_config"], "export": OmegaConf.to_container(cfg, resolve=True)},
        })
    log.info("artifact written to %s", path)
    wandb_logger = wandb_logger_config(meta["run_config"])
    if wandb_logger is not None:
        trained_in = meta.get("wandb_run") or {}
        log_exported_artifact(path, project=trained_in.get("project") or wandb_logger.get("project") or "twotower",
                              metadata={"index": infos["key"], "dim": int(index.d), "items": int(index.ntotal)}, run_id=trained_in.get("id"))
    return path


def _sample(users: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(users) <= n:
        return users
    generator = torch.Generator().manual_seed(seed)
    return users[torch.randperm(len(users), generator=generator)[:n]].sort().values


def _torchscript(tower: SavedTower, example: Features) -> torch.jit.ScriptModule:
    """The query tower traced for a batch of feature tensors (batch size stays free)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, which still lacks dict inputs with free batch sizes
        return torch.jit.trace(tower.eval(), (example,), strict=False)


def _write_items_table(items: pd.DataFrame, path: Path) -> None:
    """The items table for display; columns parquet cannot hold are written as text."""
    frame = items.copy()
    for column in frame.columns:
        if frame[column].dtype == object and not frame[column].map(lambda v: isinstance(v, (str, type(None)))).all():
            frame[column] = frame[column].astype(str)
    frame.to_parquet(path, index=False)


def _training_metrics(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """Epoch, step and monitored best score from the checkpoint; its epoch's val values and the test values from the run's CSV log."""
    out: dict[str, Any] = {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
    for name, state in checkpoint.get("callbacks", {}).items():
        if name.startswith("ModelCheckpoint") and state.get("best_model_score") is not None:
            out["monitor"], out["best_score"] = state.get("monitor"), float(state["best_model_score"])
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    for csv in sorted(run_dir.glob("*/metrics.csv"))[:1]:
        log_frame = pd.read_csv(csv)
        at_epoch = log_frame[log_frame["epoch"] == out["epoch"]] if "epoch" in log_frame else log_frame
        for column in log_frame.columns:
            values = (at_epoch if column.startswith("val/") else log_frame)[column].dropna()
            if column.startswith(("val/", "test/")) and len(values):
                out[column] = float(values.iloc[-1])
    return out
