"""Impression AUC/MRR/nDCG of the MIND towers against a popularity ranker, on all dev impressions
and on the fresh news only (never in train), on generated MIND-format data; beside them the ceiling
(the oracle, which knows the planted click probabilities) and the history-category overlap heuristic.
Then what each would have done deployed on the logged impressions: the click-through of its top-ranked
shown item (and of its top 3 and 5) next to a random shown item's, and the towers team-draft interleaved
with popularity, with 95% confidence intervals over impressions (``twotower.task.logged_impressions``).

    python benchmarks/mind_quality.py --users 3000 --news 4000 --epochs 4 [--preset realistic] [overrides ...]

Writes benchmarks/results/mind_quality.json. Any further argument is a Hydra override of the run.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from twotower.data.tables import SPLIT
from twotower.datasets.mind.evaluation import evaluate_impressions, model_scorer, popularity_scorer
from twotower.datasets.mind.generator import PRESETS, generate_mind
from twotower.datasets.mind.oracle import load_planted, oracle_metrics, oracle_scores, overlap_metrics, overlap_scores
from twotower.datasets.mind.source import read_behaviors, read_news
from twotower.task.logged_impressions import interleave, replay_clicks
from twotower.training import train

ROOT = Path(__file__).resolve().parents[1]
KS = (1, 3, 5)


def line_entries(behaviors: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat labels and impression ids (line numbers) of the shown items of ``behaviors``, as the oracle's scores lie."""
    sizes = behaviors["news"].map(len).to_numpy()
    return torch.from_numpy(np.concatenate(behaviors["labels"].to_numpy())), torch.from_numpy(np.repeat(np.arange(len(sizes)), sizes))


def logged_clicks(tmp: str, datamodule, split: str, impression_ids: set[str], towers, popularity) -> tuple[dict, dict]:
    """Top-k click-through of each scorer on the ``split`` impressions, and the towers interleaved with popularity."""
    item, impression, label = datamodule.prepared.impressions.entries[split]
    user = datamodule.prepared.impressions.users[split]
    scores = {"towers": towers(user, item, impression), "popularity": popularity(user, item, impression)}
    clicks = {name: {k: v.as_dict() for k, v in replay_clicks(s, label, impression, KS).items()} for name, s in scores.items()}
    # The oracle and overlap score the behaviors.tsv lines themselves (the same impressions, read from the file).
    behaviors = read_behaviors(Path(tmp) / "dev" / "behaviors.tsv")
    behaviors = behaviors[behaviors["impression_id"].isin(impression_ids)].reset_index(drop=True)
    line_label, line = line_entries(behaviors)
    news = pd.concat([read_news(Path(tmp) / d / "news.tsv") for d in ("train", "dev")])
    for name, line_scores in (("oracle", oracle_scores(load_planted(tmp), behaviors, "dev")),
                              ("overlap", overlap_scores(behaviors, dict(zip(news["news_id"], news["category"]))))):
        clicks[name] = {k: v.as_dict() for k, v in replay_clicks(torch.from_numpy(line_scores), line_label, line, KS).items()}
    interleaving = {"towers_vs_popularity": interleave(scores["towers"], scores["popularity"], label, impression).as_dict()}
    return clicks, interleaving


def interval(estimate: dict[str, float]) -> str:
    return f"{estimate['value']:.4f} [{estimate['low']:.4f}, {estimate['high']:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--news", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help="the generator's difficulty (default: easy)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mind_quality.json"))
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        counts = generate_mind(tmp, users=args.users, news=args.news, seed=args.seed, preset=args.preset)
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
        datamodule.gather_on("cpu")  # where the model now is
        # The same val/test halves of dev as the model's, by their behaviors.tsv impression ids.
        meta = datamodule.source.load().impression_meta
        results = {"data": counts, "overrides": run_overrides, "train_seconds": round(seconds, 1), "machine": platform.processor() or platform.machine()}
        results["clicks"], results["interleaving"] = {}, {}
        for split in ("val", "test"):
            towers = model_scorer(model, datamodule, split)
            popularity = popularity_scorer(datamodule)
            results[split] = {
                "towers": evaluate_impressions(datamodule, split, towers),
                "popularity": evaluate_impressions(datamodule, split, popularity),
                "towers_fresh_news": evaluate_impressions(datamodule, split, towers, fresh_only=True),
                "popularity_fresh_news": evaluate_impressions(datamodule, split, popularity, fresh_only=True),
                "oracle": oracle_metrics(tmp, "dev", set(meta.loc[meta[SPLIT] == split, "impression_id"])),
                "overlap": overlap_metrics(tmp, "dev", set(meta.loc[meta[SPLIT] == split, "impression_id"])),
            }
            results["clicks"][split], results["interleaving"][split] = logged_clicks(
                tmp, datamodule, split, set(meta.loc[meta[SPLIT] == split, "impression_id"]), towers, popularity)
        results["logged"] = {k: v for k, v in metrics.items() if k.startswith("val/") and ("impression" in k or "recall" in k)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    for split in ("val", "test"):
        for name, values in results[split].items():
            print(f"{split:5s} {name:22s} " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
    for split in ("val", "test"):
        print(f"{split:5s} {'random shown item':22s} top-1 CTR {interval(results['clicks'][split]['towers']['random_hit_rate@1'])}")
        for name, values in results["clicks"][split].items():
            print(f"{split:5s} {name:22s} top-1 CTR {interval(values['hit_rate@1'])}  lift {interval(values['lift@1'])}  "
                  + "  ".join(f"hit@{k} {interval(values[f'hit_rate@{k}'])}" for k in KS[1:]))
        for name, values in results["interleaving"][split].items():
            print(f"{split:5s} {name:22s} won A {values['won_by_a']:.4f} B {values['won_by_b']:.4f} ties {values['ties']:.4f}  "
                  f"preference for A {interval(values['preference_for_a'])}  p={values['p_value']:.3g}  ({values['impressions']} impressions)")


if __name__ == "__main__":
    main()
