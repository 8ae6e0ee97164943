"""Side-by-side quality on MovieLens-100K: classic baselines and two-tower variants, every protocol, one metric code.

    python benchmarks/quality.py [--protocols random temporal "temporal warm" ...] [--models popularity trending ...] [--seed 42] [--epochs N]

For each protocol the split is built once from the seed; baselines are fitted on the known
interactions of the test split (train + val) and the two-tower variants are trained with their
``conf/experiment`` config, the checkpoint chosen on validation, then scored on test. All rows go
through ``RetrievalMetrics`` / ``BeyondAccuracyMetrics`` with the same exclusion of known items.
Writes one markdown table to ``benchmarks/results/quality.md``.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twotower.baselines import ALS, BPR, EASE, ItemKNN, Popularity, RecencyPopularity, Trending, evaluate  # noqa: E402
from twotower.training import train  # noqa: E402

# Each protocol is what a user selects on the command line (conf/protocol/, conf/data/split/).
PROTOCOLS = {
    "random": ["protocol=random"],
    "temporal": ["protocol=temporal"],
    "temporal warm": ["protocol=temporal_warm"],
    "temporal cold": ["protocol=temporal_cold"],
    "leave-last-out": ["data/split=leave_last_out"],
    "cold-start items": ["protocol=cold_items"],
    "cold-start users": ["protocol=cold_users"],
}
TWO_TOWER = {"two-tower id-only": "id_only", "two-tower content-only": "content_only", "two-tower hybrid": "ml100k_best",
             "two-tower hybrid + request time": "ml100k_temporal", "two-tower hybrid, cold-start tuned": "ml100k_cold_items"}
COLUMNS = ["recall@20", "ndcg@10", "coverage@20", "diversity@20", "novelty@20", "longtail@20", "recall_light@20", "recall_heavy@20"]


def baselines(seed: int) -> list:
    return [Popularity(), RecencyPopularity(half_life_days=30.0), Trending(window_days=7.0), ItemKNN(neighbours=100), ALS(seed=seed), BPR(seed=seed), EASE(l2=300.0)]


def config(protocol: str, seed: int, experiment: str | None, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        experiments = [f"experiment={experiment}"] if experiment else []
        return compose("train", overrides=[f"seed={seed}", "logger=none", *PROTOCOLS[protocol], *experiments, *overrides])


def run_baselines(protocol: str, seed: int, models: list[str], rows: dict[str, dict[str, float]], save) -> None:
    """Fills ``rows`` model by model, calling ``save()`` after each, so a cut-short run keeps what it measured."""
    datamodule = instantiate(config(protocol, seed, None, []).data)
    datamodule.setup("fit")
    for model in baselines(seed):
        if model.name not in models:
            continue
        start = time.perf_counter()
        rows[model.name] = evaluate(model, datamodule, "test", seed=seed) | {"seconds": time.perf_counter() - start}
        report(protocol, model.name, rows[model.name])
        save()


def run_two_tower(protocol: str, seed: int, name: str, epochs: int | None) -> dict[str, float]:
    """One two-tower row, in a worker process with one torch thread: test metrics at the best validation checkpoint."""
    torch.set_num_threads(1)
    quiet()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        # Checkpointing (the best validation epoch is tested) and early stopping stay; plots and resume points go.
        drop = ["~callbacks.run_plots", "~callbacks.sample_recommendations", "~callbacks.step_checkpoint", "trainer.enable_progress_bar=false"]
        overrides = [f"paths.output_dir={out}", *drop, *([f"trainer.max_epochs={epochs}"] if epochs else [])]
        metrics, _ = train(config(protocol, seed, TWO_TOWER[name], overrides))
    return {k.removeprefix("test/"): v for k, v in metrics.items() if k.startswith("test/")} | {"seconds": time.perf_counter() - start}


def report(protocol: str, model: str, row: dict[str, float]) -> None:
    print(f"  {protocol:17s} {model:24s} R@20 {row['recall@20']:.4f} N@10 {row['ndcg@10']:.4f} ({row['seconds']:.0f}s)", flush=True)


def quiet() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    # The popularity prior's weight, where a row tuned one on validation (twotower.task.popularity_prior).
    columns = COLUMNS + ["popularity_prior"] * any("popularity_prior" in values for rows in results.values() for values in rows.values())
    lines = ["| protocol | model | " + " | ".join(columns) + " | seconds |", "|" + "---|" * (len(columns) + 3)]
    for protocol, rows in results.items():
        for model, values in rows.items():
            cells = [f"{values[c]:.4f}" if c in values else "-" for c in columns]
            lines.append(f"| {protocol} | {model} | " + " | ".join(cells) + f" | {values['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    order = [m.name for m in baselines(0)] + list(TWO_TOWER)
    parser.add_argument("--models", nargs="+", default=order)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=None, help="override the experiments' trainer.max_epochs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.md")
    parser.add_argument("--jobs", type=int, default=2, help="two-tower rows trained at once, one torch thread each")
    args = parser.parse_args()
    quiet()
    start = time.perf_counter()
    command = "python benchmarks/quality.py " + shlex.join(sys.argv[1:])
    results: dict[str, dict[str, dict[str, float]]] = {protocol: {} for protocol in args.protocols}

    def save() -> str:
        text = "\n".join([
            "# Quality on MovieLens-100K",
            "",
            f"Command: `{command.strip()}`; seed {args.seed}; test split, metrics at the best validation checkpoint for the two-tower;",
            "known (train + val) items excluded; cold-start items rank only the held-out items.",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; two-tower rows {args.jobs} at a time with one torch thread each; total {(time.perf_counter() - start) / 60:.1f} min.",
            "",
            table({p: dict(sorted(rows.items(), key=lambda row: order.index(row[0]))) for p, rows in results.items()}),
            "",
        ])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        return text

    # The two-tower rows train in worker processes while this one scores the baselines.
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {pool.submit(run_two_tower, protocol, args.seed, name, args.epochs): (protocol, name) for protocol in args.protocols for name in TWO_TOWER if name in args.models}
        for protocol in args.protocols:
            run_baselines(protocol, args.seed, args.models, results[protocol], save)
        for job in as_completed(jobs):
            protocol, name = jobs[job]
            results[protocol][name] = job.result()
            report(protocol, name, results[protocol][name])
            save()
    print(save())


if __name__ == "__main__":
    main()
