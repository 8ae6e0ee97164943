"""The serving-side freshness knob's effect on recall and freshness: MovieLens-100K, temporal_warm split.

    python benchmarks/freshness.py [--epochs 3] [--seed 42] [--write]

Trains the default hybrid on the temporal_warm protocol (the latest 20% of interactions is test, of
users with training history), exports it with an exact (flat) index, and serves every test user
through ``Retriever.recommend`` with several ``max_age`` / ``freshness_boost`` values, ``now`` set to
the end of the data known at test (train + val): ages are then those a deployment at the cut would see
(items first seen in the test period are not seen yet: age 0, like an item never seen). Known (train +
val) items are excluded as in evaluation; the lists are scored by the project's own ``RetrievalMetrics``
and ``BeyondAccuracyMetrics`` (recall@20, age@20, fresh@20 with fresh = younger than 7 days).
``--write`` writes the table to ``benchmarks/results/freshness.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twotower import Retriever  # noqa: E402
from twotower.exporting import export  # noqa: E402
from twotower.task.beyond_accuracy import beyond_accuracy_for_split  # noqa: E402
from twotower.task.freshness import DAY  # noqa: E402
from twotower.task.metrics import RetrievalMetrics  # noqa: E402
from twotower.training import train  # noqa: E402

K = 20
# (label, recommend keyword arguments): the filter at a month and a quarter, the boost at three strengths
# with a 30-day half-life (MovieLens-100K spans seven months; a week-long half-life would leave almost
# no item with a visible bonus).
SETTINGS = [
    ("none", {}),
    ("max_age 90 d", {"max_age": 90 * DAY}),
    ("max_age 30 d", {"max_age": 30 * DAY}),
    ("boost 0.05, half-life 30 d", {"freshness_boost": 0.05, "freshness_half_life": 30 * DAY}),
    ("boost 0.2, half-life 30 d", {"freshness_boost": 0.2, "freshness_half_life": 30 * DAY}),
    ("boost 1.0, half-life 30 d", {"freshness_boost": 1.0, "freshness_half_life": 30 * DAY}),
]


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/freshness.md")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, artifact = Path(tmp) / "run", Path(tmp) / "artifact"
        _, objects = train(compose_config("train", [
            "protocol=temporal_warm", f"seed={args.seed}", f"trainer.max_epochs={args.epochs}", "logger=none", "test=false",
            "trainer.enable_progress_bar=false", f"paths.output_dir={run_dir}"]))
        export(compose_config("export", [f"checkpoint={run_dir}", f"output_dir={artifact}", "index=flat"]))
        trained = time.perf_counter() - started
        retriever = Retriever.load(artifact)
        dm = objects["datamodule"]
        prepared = dm.prepared
        users = prepared.eval_users["test"]
        user_ids = prepared.user_rows[users.numpy()].tolist()
        position, item = prepared.known["test"].gather(users)  # each known (train + val) pair: (position in users, item row)
        known = [set() for _ in range(len(users))]
        for q, r in zip(position.tolist(), item.tolist()):
            known[q].add(r)
        deepest = K + max(len(s) for s in known)  # enough to drop every known item and keep K
        now = prepared.first_seen["test"].end
        targets = torch.stack(prepared.heldout["test"].gather(users))  # (2, nnz) (position in users, item row)
        rows = []
        for label, knob in SETTINGS:
            got = retriever.recommend(user_ids, k=deepest, exclude_seen=False, now=now, **knob)
            item_rows = prepared.item_rows.get_indexer(np.where(got.item_ids == "", "\0", got.item_ids).reshape(-1)).reshape(got.item_ids.shape)
            top = np.full((len(users), K), -1, dtype=np.int64)
            for q, ranked in enumerate(item_rows):
                ranked = [r for r in ranked if r >= 0 and r not in known[q]][:K]
                top[q, : len(ranked)] = ranked
            padded = (top < 0).any(1)
            accuracy, beyond = RetrievalMetrics([K]), beyond_accuracy_for_split(dm, "test", [K])
            # A filter can leave a user fewer than K items: the gaps repeat the list's first item (no extra hit,
            # its age again) so the metric code's (U, K) shape holds; such users are counted in the last column.
            top_t = torch.from_numpy(np.where(top < 0, top[:, :1], top))
            accuracy.update(top_t, targets, len(prepared.item_rows))
            beyond.update(top_t, targets, users, len(prepared.item_rows))
            values = {**{n: float(v) for n, v in accuracy.compute().items()}, **{n: float(v) for n, v in beyond.compute().items()}}
            rows.append((label, values[f"recall@{K}"], values[f"age@{K}"], values[f"fresh@{K}"], values[f"coverage@{K}"], int(padded.sum())))
    elapsed = time.perf_counter() - started
    header = f"| knob | recall@{K} | age@{K} (days) | fresh@{K} (< 7 d) | coverage@{K} | users with < {K} items |"
    lines = [header, "|---|---|---|---|---|---|"]
    lines += [f"| {label} | {recall:.4f} | {age:.1f} | {fresh:.4f} | {coverage:.4f} | {short} |" for label, recall, age, fresh, coverage, short in rows]
    table = "\n".join(lines)
    print(table)
    print(f"\n{len(user_ids)} test users; now = end of train + val; trained + exported in {trained:.0f} s, total {elapsed:.0f} s")
    if args.write:
        command = "python benchmarks/freshness.py " + " ".join(sys.argv[1:])
        machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}"
        (ROOT / "benchmarks" / "results" / "freshness.md").write_text(
            "# The freshness knob on MovieLens-100K (temporal_warm)\n\n"
            f"Command: `{command.strip()}`  \nMachine: {machine}; {elapsed:.0f} s in all.\n\n"
            f"{len(user_ids)} test users, `now` = the end of the data known at test (train + val); known items excluded; "
            "recall, age and fresh by the project's own metric code (fresh = first seen under 7 days before `now`).\n\n"
            f"{table}\n")


if __name__ == "__main__":
    main()
