"""Side-by-side quality on MovieLens-100K: classic baselines and two-tower variants, every protocol, one metric code.

    python benchmarks/quality.py [--protocols random temporal ...] [--seed 42] [--epochs N]

For each protocol the split is built once from the seed; baselines are fitted on the known
interactions of the test split (train + val) and the two-tower variants are trained with their
``conf/experiment`` config, the checkpoint chosen on validation, then scored on test. All rows go
through ``RetrievalMetrics`` / ``BeyondAccuracyMetrics`` with the same exclusion of known items.
Writes one markdown table to ``benchmarks/results/quality.md``.
"""
from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twotower.baselines import ALS, BPR, EASE, ItemKNN, Popularity, evaluate  # noqa: E402
from twotower.training import train  # noqa: E402

PROTOCOLS = {
    "random": {"_target_": "twotower.data.splits.RandomSplit", "test": 0.2, "val": 0.1},
    "temporal": {"_target_": "twotower.data.splits.TemporalSplit", "test": 0.2, "val": 0.1},
    "leave-last-out": {"_target_": "twotower.data.splits.LeaveLastOut"},
    "cold-start items": {"_target_": "twotower.data.splits.ColdStartItems", "test": 0.2, "val": 0.1},
    "cold-start users": {"_target_": "twotower.data.splits.ColdStartUsers", "test": 0.2, "val": 0.1},
}
PROTOCOL_KEYS = {"random": "random", "temporal": "temporal", "leave-last-out": "leave_last_out", "cold-start items": "cold_items", "cold-start users": "cold_users"}
TWO_TOWER = {"two-tower id-only": "id_only", "two-tower content-only": "content_only", "two-tower hybrid": "ml100k_best"}
COLUMNS = ["recall@20", "ndcg@10", "coverage@20", "diversity@20", "novelty@20", "longtail@20", "recall_light@20", "recall_heavy@20"]


def baselines(seed: int) -> list:
    return [Popularity(), ItemKNN(neighbours=100), ALS(seed=seed), BPR(seed=seed), EASE(l2=300.0)]


def config(protocol: str, seed: int, experiment: str | None, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"seed={seed}", "logger=none", *([f"experiment={experiment}"] if experiment else []), *overrides])
    split = dict(PROTOCOLS[protocol], seed=seed)
    OmegaConf.set_struct(cfg, False)
    cfg.data.split = split  # replaced, not merged: the splits take different arguments
    cfg.data.candidates = "heldout" if protocol == "cold-start items" else "all"
    return cfg


def run_protocol(protocol: str, seed: int, models: list[str], epochs: int | None, rows: dict[str, dict[str, float]], save) -> None:
    """Fills ``rows`` model by model, calling ``save()`` after each, so a cut-short run keeps what it measured."""
    cfg = config(protocol, seed, None, [])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    for model in baselines(seed):
        if model.name not in models:
            continue
        start = time.perf_counter()
        rows[model.name] = evaluate(model, datamodule, "test", seed=seed) | {"seconds": time.perf_counter() - start}
        print(f"  {protocol:17s} {model.name:24s} R@20 {rows[model.name]['recall@20']:.4f} N@10 {rows[model.name]['ndcg@10']:.4f} ({rows[model.name]['seconds']:.0f}s)", flush=True)
        save()
    for name, experiment in TWO_TOWER.items():
        if name not in models:
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            overrides = [f"paths.output_dir={out}", *([f"trainer.max_epochs={epochs}"] if epochs else [])]
            metrics, _ = train(config(protocol, seed, experiment, overrides))
        rows[name] = {k.removeprefix("test/"): v for k, v in metrics.items() if k.startswith("test/")} | {"seconds": time.perf_counter() - start}
        print(f"  {protocol:17s} {name:24s} R@20 {rows[name]['recall@20']:.4f} N@10 {rows[name]['ndcg@10']:.4f} ({rows[name]['seconds']:.0f}s)", flush=True)
        save()


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| protocol | model | " + " | ".join(COLUMNS) + " | seconds |", "|" + "---|" * (len(COLUMNS) + 3)]
    for protocol, rows in results.items():
        for model, values in rows.items():
            cells = [f"{values[c]:.4f}" if c in values else "-" for c in COLUMNS]
            lines.append(f"| {protocol} | {model} | " + " | ".join(cells) + f" | {values['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--models", nargs="+", default=[m.name for m in baselines(0)] + list(TWO_TOWER))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=None, help="override the experiments' trainer.max_epochs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.md")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    results: dict[str, dict[str, dict[str, float]]] = {}

    def save() -> str:
        text = "\n".join([
            "# Quality on MovieLens-100K",
            "",
            f"Command: `{command.strip()}`; seed {args.seed}; test split, metrics at the best validation checkpoint for the two-tower;",
            "known (train + val) items excluded; cold-start items rank only the held-out items.",
            f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; total {(time.perf_counter() - start) / 60:.1f} min.",
            "",
            table(results),
            "",
        ])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        return text

    for protocol in args.protocols:
        run_protocol(protocol, args.seed, args.models, args.epochs, results.setdefault(protocol, {}), save)
    print(save())


if __name__ == "__main__":
    main()
