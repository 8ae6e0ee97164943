"""A run directory's record of what it trains, so that rerunning into it resumes only the same run.

``ckpt_path=last`` resumes from the newest checkpoint in the run directory. Rerun there with another
temperature, another output size or other tables, the old weights would continue under new
settings (or die on a shape mismatch) while ``.hydra/config.yaml`` claimed the new ones. The
record holds the settings the weights depend on and a fingerprint of the data; a resume that
differs in either is refused before training, naming every difference.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

RECORD = "run_record.json"
# What the trained weights and their selection depend on. The rest (trainer, loggers, callbacks,
# paths, test) may change on resume: more epochs, another machine, another logger.
COMPARED = ("seed", "data", "model", "loss", "optimizer", "table_optimizer", "module", "monitor")
# Hydra's copies of the composed config, which it rewrites before a run starts; a refused resume
# puts back the ones that describe the directory's checkpoints.
HYDRA_FILES = ("config.yaml", "overrides.yaml")


class ResumeRefused(ValueError):
    """Rerunning a run directory with other settings or other data than its checkpoints were trained on."""


@dataclass
class RunRecord:
    config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    hydra_files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: DictConfig, hydra_dir: Path | None) -> RunRecord:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        config = {key: resolved.get(key) for key in COMPARED}
        files = {name: (hydra_dir / name).read_text() for name in HYDRA_FILES if hydra_dir and (hydra_dir / name).exists()}
        return cls(config, hydra_files=files)

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord | None:
        path = run_dir / RECORD
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self, run_dir: Path) -> None:
        """Written whole or not at all (a temporary file, then one rename)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        partial = run_dir / f"{RECORD}.{os.getpid()}.partial"
        partial.write_text(json.dumps(asdict(self), indent=1, sort_keys=True, default=str))
        os.replace(partial, run_dir / RECORD)

    @classmethod
    def resumed(cls, checkpoint: str | Path, run_dir: Path) -> tuple[RunRecord | None, Path | None]:
        """The record of the run ``checkpoint`` continues, and the checkpoint where it lies outside ``run_dir`` (else None).

        A checkpoint of this run directory continues its record. One from elsewhere (``ckpt_path=<file>``) continues
        the run it was trained in: that directory's record (the checkpoint's folder or the one above, as in
        ``<run>/checkpoints/``), else the settings the checkpoint stores (no data fingerprint then)."""
        checkpoint = Path(checkpoint).resolve()
        if run_dir.resolve() in checkpoint.parents:
            return cls.load(run_dir), None
        for folder in (checkpoint.parent, checkpoint.parent.parent):
            if (found := cls.load(folder)) is not None:
                return found, checkpoint
        run_config = (torch.load(checkpoint, map_location="cpu", weights_only=True).get("twotower") or {}).get("run_config")
        return (cls({key: run_config.get(key) for key in COMPARED}) if run_config else None), checkpoint

    def refuse_other_config(self, recorded: RunRecord, run_dir: Path, hydra_dir: Path | None, checkpoint: Path | None = None) -> None:
        """``checkpoint``: the resumed file where it lies outside ``run_dir`` (``RunRecord.resumed``)."""
        self._refuse(_differences(_flat(recorded.config), _flat(self.config)), "settings", recorded, run_dir, hydra_dir, checkpoint)

    def refuse_other_data(self, recorded: RunRecord, run_dir: Path, hydra_dir: Path | None, checkpoint: Path | None = None) -> None:
        if recorded.data:  # a checkpoint found without its run directory's record carries no data fingerprint
            self._refuse(_differences(_flat(recorded.data), _flat(self.data)), "data", recorded, run_dir, hydra_dir, checkpoint)

    @staticmethod
    def _refuse(differences: list[str], what: str, recorded: RunRecord, run_dir: Path, hydra_dir: Path | None, checkpoint: Path | None) -> None:
        if not differences:
            return
        if checkpoint is not None:
            raise ResumeRefused(_checkpoint_message(checkpoint, what, differences))
        recorded.restore_hydra_files(hydra_dir)  # Hydra's copies describe this directory's checkpoints again
        raise ResumeRefused(_message(run_dir, what, differences))

    def restore_hydra_files(self, hydra_dir: Path | None) -> None:
        for name, text in self.hydra_files.items():
            if hydra_dir is not None:
                (hydra_dir / name).write_text(text)


def data_fingerprint(datamodule: Any) -> dict[str, Any]:
    """What the data gives after set-up: a hash of each table, the split's counts, each fitted feature's hash.

    Tables in memory are hashed by content; interactions streamed from parquet shards by each file's
    name, size and modification time (hashing every shard's bytes would read them all again).
    """
    tables = datamodule.prepared.tables
    fingerprint: dict[str, Any] = {"tables": {}, "split": dict(datamodule.prepared.split_counts)}
    for name in ("interactions", "users", "items"):
        frame = getattr(tables, name)
        if isinstance(frame, pd.DataFrame):
            fingerprint["tables"][name] = _frame_hash(frame)
        else:
            fingerprint["tables"][name] = {str(f): [f.stat().st_size, f.stat().st_mtime_ns] for f in map(Path, frame.files)}
    fitted = datamodule.prepared.preprocessor.to_json()
    for side in ("query", "candidate"):
        for feature, state in fitted[side].items():
            fingerprint[f"{side} feature {feature}"] = _json_hash(state)
    fingerprint["user ids"], fingerprint["item ids"] = _json_hash(fitted["user_ids"]), _json_hash(fitted["item_ids"])
    return fingerprint


def _frame_hash(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    for column in frame.columns:
        values = frame[column]
        try:
            hashed = pd.util.hash_pandas_object(values, index=False)
        except TypeError:  # cells holding lists (tags, histories)
            hashed = pd.util.hash_pandas_object(values.astype(str), index=False)
        digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()


def _json_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of every leaf; lists are leaves (they are set whole)."""
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: tree}


def _differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(recorded.keys() | current.keys()):
        before, now = recorded.get(key, _NOT_SET), current.get(key, _NOT_SET)
        if before != now:
            lines.append(f"{key}: {_show(before)} when the run started, {_show(now)} now")
    return lines


_NOT_SET = object()


def _show(value: Any) -> str:
    if value is _NOT_SET:
        return "(not set)"
    if isinstance(value, str) and len(value) == 64:  # a sha256: its start is enough to tell two apart
        return f"{value[:12]}…"
    return repr(value)


def _checkpoint_message(checkpoint: Path, what: str, differences: list[str]) -> str:
    listed = "\n".join(f"  {line}" for line in differences)
    return (f"ckpt_path={checkpoint} was trained with other {what}; resuming it would continue its weights, optimizer "
            f"state and schedule under these {what}, and a new value such as a learning rate would not apply:\n{listed}\n"
            f"Resume it with the {what} it was trained with, or start fresh with ckpt_path=null.")


def _message(run_dir: Path, what: str, differences: list[str]) -> str:
    listed = "\n".join(f"  {line}" for line in differences)
    return (f"{run_dir} holds checkpoints of a run with other {what}; resuming it would continue those weights under "
            f"these {what}:\n{listed}\nStart a new run in another directory (hydra.run.dir=<dir>), or start this one "
            f"over with ckpt_path=null (its checkpoints are then replaced).")
