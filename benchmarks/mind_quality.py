"""Impression AUC/MRR/nDCG of the MIND towers against a popularity ranker, on all dev impressions
and on the fresh news only (never in train), on generated MIND-format data.

    python benchmarks/mind_quality.py --users 3000 --news 4000 --epochs 4 [overrides ...]

Writes benchmarks/results/mind_quality.json. Any further argument is a Hydra override of the run.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from twotower.datasets.mind.evaluation import evaluate_impressions, model_scorer, popularity_scorer
from twotower.datasets.mind.generator import generate_mind
from twotower.training import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--news", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mind_quality.json"))
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        counts = generate_mind(tmp, users=args.users, news=args.news, seed=args.seed)
        run_overrides = [
            "experiment=mind_text", f"data.source.path={tmp}", f"trainer.max_epochs={args.epochs}", "logger=none", "test=false",
            f"hydra.run.dir={tmp}/run", f"paths.output_dir={tmp}/run", *overrides,
        ]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=run_overrides, return_hydra_config=False)
        start = time.perf_counter()
        metrics, objects = train(cfg)
        seconds = time.perf_counter() - start
        datamodule, model = objects["datamodule"], objects["module"].model.cpu()
        datamodule._move_to(torch.device("cpu"))
        results = {"data": counts, "overrides": run_overrides, "train_seconds": round(seconds, 1), "machine": platform.processor() or platform.machine()}
        for split in ("val", "test"):
            towers = model_scorer(model, datamodule, split)
            popularity = popularity_scorer(datamodule)
            results[split] = {
                "towers": evaluate_impressions(datamodule, split, towers),
                "popularity": evaluate_impressions(datamodule, split, popularity),
                "towers_fresh_news": evaluate_impressions(datamodule, split, towers, fresh_only=True),
                "popularity_fresh_news": evaluate_impressions(datamodule, split, popularity, fresh_only=True),
            }
        results["logged"] = {k: v for k, v in metrics.items() if k.startswith("val/") and ("impression" in k or "recall" in k)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for split in ("val", "test"):
        for name, values in results[split].items():
            print(f"{split:5s} {name:22s} " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))


if __name__ == "__main__":
    main()
