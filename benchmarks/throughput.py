"""Training and evaluation throughput: twotower's Trainer path against a raw loop and a naive build.

    python -m benchmarks.throughput --size cpu                 # MovieLens-100K-sized, 2 CPU cores
    python -m benchmarks.throughput --size full --device cuda  # 1M users x 1M items x 20M, one GPU

Synthetic skewed data (``twotower.data.sources.SkewedSource``); user tower: id + 2 categoricals;
item tower: id + 1 categorical + multi-hot (3 of 20 genres); 64-d embeddings and output, one
256-unit hidden layer; in-batch softmax with logQ and accidental-hit (and same-user) masking.
Every figure of one run comes from the same process and data, so ratios hold on a noisy machine.

Full-corpus evaluation is timed on the training data and on larger catalogues (``--eval-scales``:
100k and 1M items, a few thousand users, fixed random towers): ``trainer.validate`` against a
plain-torch yardstick with the same vectors, k and known-item exclusion (``compare_evaluation``).
Results go to ``benchmarks/results/throughput.md`` (``--out``) with the device named.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import yaml

from benchmarks.yardsticks import Clock, DeviceData, NaiveModule, PlainTwoTower, _autocast, naive_loader, raw_loop
from twotower.data import Prepared, TwoTowerDataModule
from twotower.data.prepared import log_q_of
from twotower.data.schema import Schema
from twotower.data.sources.skewed import SkewedArrays, SkewedSource
from twotower.data.store import CSR, FeatureStore
from twotower.data.tables import ITEM, USER, Tables
from twotower.data.vocab import Vocabulary
from twotower.features import FittedFeature, Preprocessor
from twotower.model import build_two_tower
from twotower.module import TwoTowerModule
from twotower.optim import RowWiseAdagrad
from twotower.task.retrieval import RANK_CHUNK, rank

ROOT = Path(__file__).resolve().parent.parent
FEATURES = {
    "query": [{"name": "user_id", "kind": "id"}, {"name": "segment", "kind": "categorical"}, {"name": "country", "kind": "categorical"}],
    "candidate": [{"name": "item_id", "kind": "id"}, {"name": "category", "kind": "categorical"}, {"name": "genres", "kind": "multi_hot", "separator": "|", "max_len": 3}],
}
LR = 0.003  # conf/train.yaml's AdamW
TOP_K = 100


@dataclass(frozen=True)
class Size:
    users: int
    items: int
    interactions: int
    batch: int
    steps: int
    warmup: int
    eval_batch: int
    naive_steps: int


SIZES = {
    # CI: every path once, in seconds.
    "ci": Size(1_000, 1_000, 20_000, 256, 4, 1, 512, 3),
    # MovieLens-100K's scale (943 users x 1682 items x 100k ratings), batch as conf/data/movielens.yaml. 200 timed steps
    # (4 s a path): with 40, the raw loop alone moved 52-58k samples/s between runs of the same code on this box.
    "cpu": Size(1_000, 1_700, 100_000, 1024, 200, 5, 1024, 50),
    "medium": Size(100_000, 100_000, 2_000_000, 8192, 100, 10, 2048, 20),
    # The benchmark: one H100/H200.
    "full": Size(1_000_000, 1_000_000, 20_000_000, 8192, 300, 30, 2048, 60),
}


@dataclass(frozen=True)
class EvalScale:
    """A catalogue to evaluate against, with enough users that ranking, not set-up, takes the time."""

    items: int
    users: int  # about 85% of them have held-out items and are evaluated
    interactions_per_user: int = 50


EVAL_SCALES = {
    "20k": EvalScale(20_000, 500),  # CI: the path once, in seconds
    "100k": EvalScale(100_000, 4_000),
    "1m": EvalScale(1_000_000, 3_000),
}
DEFAULT_EVAL_SCALES = {"ci": "20k", "cpu": "100k,1m", "medium": "100k,1m", "full": "100k,1m"}
EVAL_BATCH = 1024  # users per evaluation batch (conf/data/*.yaml's eval_batch_size)


class GeneratedSource:
    """A source whose ``prepare`` fills ``Prepared`` from generated integer arrays.

    The pandas pipeline (vocabularies, string ids, splits) takes minutes at 20M interactions and is
    not what this benchmark measures; everything after set-up (index loaders, the device-side
    gather hook, batch steps, stores, CSRs) is twotower's own code, unchanged.
    """

    def __init__(self, arrays: SkewedArrays, n_genres: int, val_share: float):
        self.arrays, self.n_genres, self.val_share = arrays, n_genres, val_share

    def prepare(self, schema: Schema, split: None, seed: int, candidates: str) -> Prepared:
        a = self.arrays
        n_users, n_items = len(a.segment), len(a.category)
        specs = {s.name: s for s in (*schema.query, *schema.candidate)}

        def codes(prefix: str, n: int) -> Vocabulary:
            return Vocabulary([f"{prefix}{k}" for k in range(n)])

        user_ids, item_ids = codes("", n_users), codes("", n_items)
        preprocessor = Preprocessor(
            query={"user_id": FittedFeature(specs["user_id"], user_ids), "segment": FittedFeature(specs["segment"], codes("G", self.n_genres)),
                   "country": FittedFeature(specs["country"], codes("C", int(a.country.max()) + 1))},
            candidate={"item_id": FittedFeature(specs["item_id"], item_ids), "category": FittedFeature(specs["category"], codes("K", int(a.category.max()) + 1)),
                       "genres": FittedFeature(specs["genres"], codes("G", self.n_genres), max_len=a.genres.shape[1])},
            user_ids=user_ids, item_ids=item_ids,
        )
        shift = lambda x: torch.from_numpy(np.ascontiguousarray(x)).long() + 1  # noqa: E731 - index 0 is OOV
        u, i = torch.from_numpy(a.users).long(), torch.from_numpy(a.items).long()
        val = torch.from_numpy(np.random.default_rng(seed).random(len(u)) < self.val_share)
        train = ~val
        train_pairs = torch.stack([u[train], i[train]], 1)  # (n_train, 2)
        empty = CSR.from_pairs(u[:0], i[:0], n_users)
        item_counts = torch.bincount(train_pairs[:, 1], minlength=n_items).long()
        frame = lambda **cols: pd.DataFrame(cols)  # noqa: E731
        return Prepared(
            preprocessor=preprocessor,
            users=FeatureStore({"user_id": shift(np.arange(n_users)), "segment": shift(a.segment), "country": shift(a.country)}, n_users),
            items=FeatureStore({"item_id": shift(np.arange(n_items)), "category": shift(a.category), "genres": shift(a.genres)}, n_items),
            user_rows=pd.RangeIndex(n_users), item_rows=pd.RangeIndex(n_items), item_vocab_index=torch.arange(1, n_items + 1),
            item_counts=item_counts, item_log_q=log_q_of(item_counts), trained_items=torch.unique(train_pairs[:, 1]),
            known={"val": CSR.from_pairs(u[train], i[train], n_users), "test": empty},
            heldout={"val": CSR.from_pairs(u[val], i[val], n_users), "test": empty},
            eval_users={"val": torch.unique(u[val]), "test": u[:0]}, candidates={"val": None, "test": None},  # the whole catalogue
            histories={}, history_name=None, split_counts={"train": int(train.sum()), "val": int(val.sum()), "test": 0},
            tables=Tables(frame(**{USER: a.users, ITEM: a.items}), frame(**{USER: np.arange(n_users)}), frame(**{ITEM: np.arange(n_items)}),
                          {"interactions": "skewed synthetic interactions", "users": "skewed synthetic users", "items": "skewed synthetic items"}),
            train_pairs=train_pairs,
        )


def prepared_datamodule(arrays: SkewedArrays, n_genres: int, val_share: float, batch_size: int, eval_batch_size: int, seed: int = 0) -> TwoTowerDataModule:
    """The data module over generated arrays, set up."""
    dm = TwoTowerDataModule(GeneratedSource(arrays, n_genres, val_share), FEATURES, split=None, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
    dm.setup("fit")
    return dm


def device_data(dm: TwoTowerDataModule, device: torch.device) -> DeviceData:
    """The same columns as plain device tensors, for the yardsticks."""
    data = dm.prepared
    u, i = data.users.columns, data.items.columns
    to = lambda t: t.to(device)  # noqa: E731
    return DeviceData(to(u["user_id"]), to(u["segment"]), to(u["country"]), to(i["item_id"]), to(i["category"]), to(i["genres"]),
                      to(data.train_pairs), to(data.item_log_q))


class StepTimer(pl.Callback):
    """Times the steps after ``warmup`` (waiting for the device only at the two ends)."""

    def __init__(self, warmup: int):
        self.warmup, self.steps, self.clock = warmup, 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.clock is None:
            self.clock = Clock(pl_module.device)
            self.clock.start()

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.stop()
        self.steps = trainer.global_step - self.warmup


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyncAudit(pl.Callback):
    """Turns on CUDA's sync debug mode for the steps after ``warmup``: each host sync warns."""

    def __init__(self, warmup: int):
        self.warmup, self.steps = warmup, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            torch.cuda.set_sync_debug_mode("warn")
        self.steps += trainer.global_step > self.warmup

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode("default")


def audit_host_syncs(dm: TwoTowerDataModule, size: Size, device: torch.device, refresh_rate: int | None, **module_options) -> tuple[float, list[str]]:
    """Host syncs per training step of twotower's Trainer path (CUDA only), and where they come from.

    ``refresh_rate``: a TQDM progress bar refreshed every so many steps; None: Lightning's default bar.
    """
    audit = SyncAudit(size.warmup)
    bar = [pl.callbacks.TQDMProgressBar(refresh_rate=refresh_rate)] if refresh_rate else []
    trainer = pl.Trainer(**{**trainer_options(device), "max_steps": size.warmup + 20, "max_epochs": -1, "limit_val_batches": 0,
                            "logger": False, "enable_checkpointing": False, "callbacks": [audit, *bar]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(twotower_module(dm, **module_options), datamodule=dm)
    syncs = [w for w in caught if "synchronizing" in str(w.message)]
    places = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return len(syncs) / max(audit.steps, 1), [f"{place} ({n})" for place, n in places.most_common(5)]


def trainer_options(device: torch.device) -> dict:
    """The project's trainer config (conf/trainer/gpu.yaml or cpu.yaml) minus what needs Hydra."""
    options = yaml.safe_load((ROOT / "conf" / "trainer" / ("gpu.yaml" if device.type == "cuda" else "cpu.yaml")).read_text())
    return {k: v for k, v in options.items() if not k.startswith("_") and k not in ("default_root_dir", "plugins") and not str(v).startswith("${")}


class Memory:
    """Peak memory of a section: the GPU allocator's peak, or the process' peak RSS so far on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def plain_model(dm: TwoTowerDataModule) -> PlainTwoTower:
    p = dm.prepared.preprocessor
    return PlainTwoTower([len(p.user_ids), p.query["segment"].cardinality, p.query["country"].cardinality],
                         [len(p.item_ids), p.candidate["category"].cardinality], p.candidate["genres"].cardinality)


def twotower_module(dm: TwoTowerDataModule, **options) -> TwoTowerModule:
    model = build_two_tower(dm.prepared.preprocessor, embedding_dim=64, hidden_dims=[256], output_dim=64)
    return TwoTowerModule(model, partial(torch.optim.AdamW, lr=LR), ks=[10, TOP_K], **options)


def run_twotower(dm: TwoTowerDataModule, size: Size, device: torch.device, **module_options) -> Clock:
    timer = StepTimer(size.warmup)
    trainer = pl.Trainer(**{**trainer_options(device), "max_steps": size.warmup + size.steps, "max_epochs": -1, "limit_val_batches": 0,
                            "logger": False, "enable_checkpointing": False, "callbacks": [timer]})
    trainer.fit(twotower_module(dm, **module_options), datamodule=dm)
    return timer.clock


def run_naive(dm: TwoTowerDataModule, size: Size, device: torch.device, workers: int) -> Clock:
    timer = StepTimer(min(size.warmup, size.naive_steps // 2))
    trainer = pl.Trainer(**{**trainer_options(device), "max_steps": timer.warmup + size.naive_steps, "max_epochs": -1,
                            "logger": False, "enable_checkpointing": False, "callbacks": [timer]})
    loader = naive_loader(device_data(dm, torch.device("cpu")), size.batch, workers, pin_memory=device.type == "cuda")
    trainer.fit(NaiveModule(plain_model(dm), LR), train_dataloaders=loader)
    return timer.clock


def plain_ranking(query: torch.Tensor, items: torch.Tensor, exclude: torch.Tensor, k: int, rows: int, buffer: torch.Tensor | None) -> torch.Tensor:
    """The yardstick's ranking, in plain torch: ``rows`` users at a time, matmul, known items -> -inf, topk.

    ``exclude``: (2, nnz) (row in ``query``, item); ``buffer``: flat, >= rows x N, reused by every product (None under autocast).
    """
    top = []
    for start in range(0, len(query), rows):
        q = query[start:start + rows]
        scores = q @ items.T if buffer is None else torch.mm(q, items.T, out=buffer[:len(q) * len(items)].view(len(q), len(items)))  # (r, N)
        inside = (exclude[0] >= start) & (exclude[0] < start + len(q))
        scores[exclude[0, inside] - start, exclude[1, inside]] = float("-inf")
        top.append(scores.topk(k, dim=1).indices)
    return torch.cat(top)  # (U, k)


def compare_evaluation(dm: TwoTowerDataModule, device: torch.device, repeats: int, rank_chunk: int = RANK_CHUNK) -> dict:
    """Seconds of full-catalogue evaluation, twotower against a plain-torch yardstick, in interleaved rounds.

    * twotower: ``trainer.validate`` of ``TwoTowerModule`` (fixed random towers; metrics ks [10, 100]
      and the default beyond-accuracy metrics; the first call also builds their item similarity).
    * plain, encode + rank: the same towers encode the same catalogue and users (features gathered
      beforehand, for free), then ``plain_ranking`` with the same k, exclusions and rows per product.
    * plain, rank only: ``plain_ranking`` of the same query and item vectors, computed beforehand.
    """
    module = twotower_module(dm, rank_chunk=rank_chunk)
    trainer = pl.Trainer(**{**trainer_options(device), "logger": False, "enable_checkpointing": False, "enable_progress_bar": False})
    bf16 = trainer_options(device).get("precision") == "bf16-mixed"
    k = max(module.task.ks + list(module.hparams.beyond_accuracy_ks))
    n_items = len(dm.prepared.items)
    rows = max(1, rank_chunk // n_items)
    users = dm.prepared.eval_users["val"]
    batches = [dm.eval_batch(chunk, "val").to(device) for chunk in users.split(dm.eval_batch_size)]
    item_features = [{name: x.to(device) for name, x in features.items()} for features in dm.catalogue(module.hparams.catalogue_chunk)]
    model = module.model.to(device).eval()
    memory = Memory(device)

    def buffer() -> torch.Tensor | None:
        return None if bf16 else torch.empty(rows * n_items, device=device)

    @torch.inference_mode()
    def encode() -> tuple[torch.Tensor, list[torch.Tensor]]:
        with _autocast(device, bf16):
            items = torch.cat([model.encode_candidate(features) for features in item_features])  # (N, D)
            return items, [model.encode_query(batch.query) for batch in batches]

    @torch.inference_mode()
    def plain(vectors: tuple[torch.Tensor, list[torch.Tensor]] | None) -> float:
        _sync(device)
        start = time.perf_counter()
        items, queries = vectors or encode()
        scratch = buffer()
        with _autocast(device, bf16):
            for query, batch in zip(queries, batches):
                plain_ranking(query, items, batch.exclude, k, rows, scratch)
        _sync(device)
        return time.perf_counter() - start

    def validate() -> float:
        _sync(device)
        start = time.perf_counter()
        trainer.validate(module, datamodule=dm, verbose=False)
        _sync(device)
        return time.perf_counter() - start

    vectors = encode()
    with torch.inference_mode(), _autocast(device, bf16):  # the yardstick ranks as twotower does (ties and rounding aside)
        few = min(64, len(vectors[1][0]))
        query, exclude = vectors[1][0][:few], batches[0].exclude[:, batches[0].exclude[0] < few]
        ours = rank(query, vectors[0], k, exclude, max_scores=rank_chunk).values.float()
        theirs = (query @ vectors[0].T).float().gather(1, plain_ranking(query, vectors[0], exclude, k, rows, buffer()))
        tolerance = 1e-2 if bf16 else 1e-4
        assert torch.allclose(ours, theirs, rtol=tolerance, atol=tolerance), "the yardstick ranks differently from twotower"
    times: dict[str, list[float]] = {"validate": [], "plain": [], "plain_rank": []}
    peaks: dict[str, float] = {}
    for _ in range(repeats):
        for name, run in (("validate", validate), ("plain", lambda: plain(None)), ("plain_rank", lambda: plain(vectors))):
            memory.reset()
            times[name].append(run())
            peaks[name] = max(peaks.get(name, 0.0), memory.peak_gib())
            print(f"evaluation over {n_items:,} items, {name}: {len(users) / times[name][-1]:,.0f} users/s", flush=True)
    return {"items": n_items, "users": len(users), "k": k, "rows": rows, "rank_chunk": rank_chunk, "seconds": times, "peak_gib": peaks}


def scale_datamodule(scale: EvalScale) -> TwoTowerDataModule:
    source = SkewedSource(scale.users, scale.items, scale.users * scale.interactions_per_user)
    return prepared_datamodule(source.generate(), source.n_genres, val_share=0.05, batch_size=1024, eval_batch_size=EVAL_BATCH)


def movielens_validate_seconds(repeats: int = 2) -> list[float]:
    """``trainer.validate`` of the default train.py config (MovieLens-100K, hybrid towers) on CPU."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/twotower-benchmark", "logger=none", "callbacks=none"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    module = TwoTowerModule(instantiate(cfg.model)(preprocessor=dm.prepared.preprocessor), instantiate(cfg.optimizer), ks=list(cfg.module.ks))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.validate(module, datamodule=dm, verbose=False)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: the size's)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of every training path; the best of each is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the naive build (default: 8 on GPU, 0 on CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="also time torch.compile variants (default: on GPU only)")
    parser.add_argument("--movielens", action=argparse.BooleanOptionalAction, default=None, help="time trainer.validate on MovieLens-100K (default: --size cpu)")
    parser.add_argument("--eval-scales", default=None,
                        help=f"comma-separated catalogues to also evaluate against ({', '.join(EVAL_SCALES)}; 'none'); default: the size's ({DEFAULT_EVAL_SCALES})")
    parser.add_argument("--eval-repeats", type=int, default=3, help="interleaved rounds of each evaluation path; the best of each is compared")
    parser.add_argument("--rank-chunk", type=int, default=RANK_CHUNK, help="score-matrix entries per product (TwoTowerModule's rank_chunk), for both paths")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/throughput.md (CPU) or throughput-gpu.md (CUDA)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size, device = SIZES[args.size], torch.device(args.device)
    if args.steps:
        size = replace(size, steps=args.steps, warmup=min(size.warmup, args.steps), naive_steps=min(size.naive_steps, args.steps))
    args.out = args.out or ROOT / "benchmarks" / "results" / ("throughput-gpu.md" if device.type == "cuda" else "throughput.md")
    compile = args.compile if args.compile is not None else device.type == "cuda"
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    bf16 = trainer_options(device).get("precision") == "bf16-mixed"
    torch.manual_seed(0)
    memory = Memory(device)
    load_start = os.getloadavg()

    start = time.perf_counter()
    source = SkewedSource(size.users, size.items, size.interactions)
    dm = prepared_datamodule(source.generate(), source.n_genres, val_share=0.05, batch_size=size.batch, eval_batch_size=size.eval_batch)
    setup_s = time.perf_counter() - start
    data = device_data(dm, device)

    # name -> (samples/s, samples per CPU-second, peak GiB): the best of --repeats interleaved rounds.
    best: dict[str, tuple[float, float, float]] = {}
    failures: list[str] = []

    def raw(compiled: bool) -> Clock:
        model = plain_model(dm).to(device)
        return raw_loop(data, model, torch.optim.AdamW(model.parameters(), lr=LR), size.batch, size.warmup, size.steps, device, bf16, compiled)

    rowwise_sync_free = {"table_optimizer": partial(RowWiseAdagrad, lr=0.05), "progress_bar_loss": False}
    variants = [("raw loop (yardstick)", lambda: raw(False), size.steps, False)]
    if compile:
        variants.append(("raw loop, torch.compile", lambda: raw(True), size.steps, True))
    variants += [
        ("twotower, AdamW (default)", lambda: run_twotower(dm, size, device), size.steps, False),
        ("twotower, row-wise Adagrad tables + AdamW", lambda: run_twotower(dm, size, device, table_optimizer=partial(RowWiseAdagrad, lr=0.05)), size.steps, False),
        ("twotower, SparseAdam tables + AdamW", lambda: run_twotower(dm, size, device, table_optimizer=partial(torch.optim.SparseAdam, lr=LR)), size.steps, False),
        ("twotower, row-wise Adagrad + AdamW, no step loss in the bar", lambda: run_twotower(dm, size, device, **rowwise_sync_free), size.steps, False),
    ]
    if compile:
        # A torch.compile failure is reported, not fatal: it must not cost the rest of a GPU run.
        variants.append(("twotower, row-wise Adagrad + AdamW, no step loss in the bar, compile",
                         lambda: run_twotower(dm, size, device, **rowwise_sync_free, compile=True), size.steps, True))
    variants.append((f"naive Lightning, per-sample DataLoader ({workers} workers)", lambda: run_naive(dm, size, device, workers), size.naive_steps, False))

    for _ in range(args.repeats):
        for name, run, steps, may_fail in variants:
            if any(f.startswith(name + ":") for f in failures):
                continue
            memory.reset()
            try:
                clock = run()
            except Exception as err:
                if not may_fail:
                    raise
                traceback.print_exc()
                failures.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                continue
            samples = steps * size.batch
            row = (samples / clock.wall, samples / clock.cpu, memory.peak_gib())
            print(f"{name}: {row[0]:,.0f} samples/s, {row[1]:,.0f} per CPU-second", flush=True)
            old = best.get(name)
            best[name] = row if old is None else (max(old[0], row[0]), max(old[1], row[1]), max(old[2], row[2]))
    train_rows = [(name, *values) for name, values in best.items()]

    evaluations = [compare_evaluation(dm, device, args.eval_repeats, args.rank_chunk)]
    scales = (args.eval_scales if args.eval_scales is not None else DEFAULT_EVAL_SCALES[args.size]).split(",")
    for name in [n.strip() for n in scales if n.strip() not in ("", "none")]:
        if name not in EVAL_SCALES:
            raise SystemExit(f"--eval-scales: '{name}' is not one of {', '.join(EVAL_SCALES)}, none")
        evaluations.append(compare_evaluation(scale_datamodule(EVAL_SCALES[name]), device, args.eval_repeats, args.rank_chunk))
    main_eval = evaluations[0]
    movielens = movielens_validate_seconds() if (args.movielens if args.movielens is not None else args.size == "cpu") else None
    syncs = None
    if device.type == "cuda":
        syncs = {
            "AdamW, step loss in the bar, Lightning's default bar": audit_host_syncs(dm, size, device, None),
            "AdamW, step loss in the bar, bar every 50 steps": audit_host_syncs(dm, size, device, 50),
            "AdamW, no step loss in the bar, bar every 50 steps": audit_host_syncs(dm, size, device, 50, progress_bar_loss=False),
            "row-wise Adagrad tables, no step loss in the bar, bar every 50 steps": audit_host_syncs(dm, size, device, 50, **rowwise_sync_free),
        }

    results = {"train": train_rows, "validate_s": main_eval["seconds"]["validate"], "eval_users": main_eval["users"],
               "raw_eval_users_per_s": main_eval["users"] / min(main_eval["seconds"]["plain"]), "evaluations": evaluations,
               "movielens_validate_s": movielens, "load": (load_start, os.getloadavg()), "setup_s": setup_s, "syncs": syncs, "failures": failures}
    write_report(args, size, device, workers, bf16, results)
    return results


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _evaluation_row(e: dict) -> str:
    best = {name: e["users"] / min(seconds) for name, seconds in e["seconds"].items()}
    first = e["users"] / e["seconds"]["validate"][0]
    return (f"| {e['items']:,} | {e['users']:,} | {e['rows']:,} | {best['validate']:,.0f} ({first:,.0f}) | {best['plain']:,.0f} | "
            f"{best['validate'] / best['plain']:.2f} | {best['plain_rank']:,.0f} | {best['validate'] / best['plain_rank']:.2f} |")


def write_report(args, size: Size, device: torch.device, workers: int, bf16: bool, r: dict) -> None:
    raw, raw_cpu = r["train"][0][1], r["train"][0][2]
    memory_kind = "peak GPU memory (GiB)" if device.type == "cuda" else "process peak RSS so far (GiB)"
    lines = [
        f"# Throughput: `python -m benchmarks.throughput --size {args.size} --device {device.type}"
        f"{f' --steps {args.steps}' if args.steps else ''}{f' --threads {args.threads}' if args.threads else ''}"
        f"{f' --repeats {args.repeats}' if args.repeats > 1 else ''}{f' --eval-scales {args.eval_scales}' if args.eval_scales is not None else ''}"
        f"{f' --eval-repeats {args.eval_repeats}' if args.eval_repeats != 3 else ''}{f' --rank-chunk {args.rank_chunk}' if args.rank_chunk != RANK_CHUNK else ''}`",
        "",
        f"- device: **{device_name(device)}**; torch {torch.__version__}, lightning {pl.__version__}; precision: {'bf16-mixed' if bf16 else 'fp32'}",
        f"- data: {size.users:,} users x {size.items:,} items x {size.interactions:,} interactions (Zipf item popularity), 5% held out for evaluation",
        "- model: user tower id + 2 categoricals, item tower id + 1 categorical + 3-of-20 genres; 64-d, one 256-unit hidden layer",
        f"- batch {size.batch:,}; {size.steps} timed steps after {size.warmup} warm-up steps ({size.naive_steps} for the naive build);"
        f" best of {args.repeats} interleaved round(s)",
        f"- set-up (generate + fill the datamodule): {r['setup_s']:.1f} s",
        f"- load average (1, 5, 15 min) at start: {', '.join(f'{x:.2f}' for x in r['load'][0])}; at end: "
        f"{', '.join(f'{x:.2f}' for x in r['load'][1])}; {os.cpu_count()} CPUs (other processes' load slows every path alike)",
        "",
        "## Training (samples/s; ratios to the raw loop of the same run)",
        "",
        f"| path | samples/s | x raw loop | samples per CPU-second | x raw loop | {memory_kind} |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {name} | {value:,.0f} | {value / raw:.2f} | {cpu:,.0f} | {cpu / raw_cpu:.2f} | {peak:.2f} |" for name, value, cpu, peak in r["train"]],
        "",
        "CPU-seconds are the process' own (DataLoader worker processes not counted); with one torch thread they",
        "measure the work of a path regardless of other load on the machine.",
        *[f"\nFailed: {failure}" for failure in r["failures"]],
        "",
        "## Full-corpus evaluation (users/s; ratios to the plain-torch yardstick of the same run)",
        "",
        f"Best of {args.eval_repeats} interleaved round(s) of each path, fixed random towers, exact top-{r['evaluations'][0]['k']}"
        f" over the whole catalogue with each user's known items excluded, {EVAL_BATCH:,} users per evaluation batch",
        "(the training data's own batch size for the first row). twotower: `trainer.validate` (metrics @10, @100, beyond-accuracy",
        "@10, @20, logging). Yardstick, encode + rank: the same towers encode the same items and users (features gathered",
        "beforehand, for free), then per chunk of users `torch.mm(q, items.T, out=buffer)`, known items set to -inf by one",
        "scatter, `topk`: the same k, the same rows per product as twotower's `rank_chunk`. Rank only: the same product,",
        "scatter and topk over query and item vectors computed beforehand. Set-up (data, first-call item similarity) not timed",
        "except in twotower's call 1.",
        "",
        "| items | users | rows per product | twotower users/s (best; call 1) | yardstick: encode + rank users/s | x yardstick | rank only users/s | x rank only |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[_evaluation_row(e) for e in r["evaluations"]],
        *(["\nPeak GPU memory (GiB), twotower / encode + rank / rank only: " + "; ".join(
            f"{e['items']:,} items: {e['peak_gib']['validate']:.2f} / {e['peak_gib']['plain']:.2f} / {e['peak_gib']['plain_rank']:.2f}"
            for e in r["evaluations"])] if device.type == "cuda" else []),
        "",
        "First row, each call: " + ", ".join(f"`trainer.validate`, call {k + 1}: {r['eval_users'] / s:,.0f} users/s" for k, s in enumerate(r["validate_s"])) + ".",
    ]
    if r["movielens_validate_s"]:
        lines += ["", "## MovieLens-100K `trainer.validate` (default train.py config, untrained towers)", "",
                  ", ".join(f"call {k + 1}: {s:.3f} s" for k, s in enumerate(r["movielens_validate_s"]))]
    if r["syncs"]:
        lines += ["", "## Host syncs per training step (CUDA sync debug mode, twotower Trainer path)", "",
                  "| configuration | syncs/step | where |", "| --- | ---: | --- |",
                  *[f"| {name} | {per_step:.2f} | {'; '.join(places) or '-'} |" for name, (per_step, places) in r["syncs"].items()]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
