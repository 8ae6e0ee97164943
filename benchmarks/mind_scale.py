"""Generate, load and train one epoch on MIND-small-sized data (about 50k users, 51k news, 230k
impressions), or a measured number of steps of it, timing each phase and recording peak memory.

    python benchmarks/mind_scale.py [--steps 40] [--device cpu|cuda] [--out benchmarks/results/mind_scale_cpu.json]

``--steps 0`` runs the whole epoch; otherwise the epoch time is extrapolated from the measured
steps (after two warm-up steps) and said so in the output.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from twotower.datasets.mind.generator import generate_mind
from twotower.module import TwoTowerModule
from twotower.task.retrieval import encode_catalogue

ROOT = Path(__file__).resolve().parents[1]
MIND_SMALL = {"users": 50_000, "news": 51_282, "train_impressions": 156_965, "dev_impressions": 73_152}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def main() -> None:
    warnings.filterwarnings("ignore", message=".*self.log.*")
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--eval-users", type=int, default=2048, help="users of the impression evaluation pass that is timed (0 = all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", default=None, help="an existing MIND directory (skips generation)")
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    device = torch.device(args.device)
    results: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads, {platform.machine()})", "sizes": MIND_SMALL}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data or tmp
        if not args.data:
            start = time.perf_counter()
            results["generated"] = generate_mind(tmp, shown_mean=37.0, history_mean=32.0, seed=0, **MIND_SMALL)
            results["generate_seconds"] = round(time.perf_counter() - start, 1)
            results["files_mib"] = round(sum(f.stat().st_size for f in Path(tmp).rglob("*.tsv")) / 2**20, 1)
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["experiment=mind_text", f"data.source.path={path}", "paths.output_dir=/tmp/unused", *overrides])
        start = time.perf_counter()
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        results["load_seconds"] = round(time.perf_counter() - start, 1)
        results["peak_rss_after_load_gib"] = round(peak_rss_gib(), 2)
        results["train_clicks"] = len(datamodule.prepared.train_pairs)
        model = instantiate(cfg.model)(preprocessor=datamodule.prepared.preprocessor)
        options = {**OmegaConf.to_container(cfg.loss, resolve=True), **OmegaConf.to_container(cfg.module, resolve=True)}
        module = TwoTowerModule(model=model, optimizer=instantiate(cfg.optimizer), **options).to(device)
        datamodule.gather_on(device)
        optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.optimizer.lr)
        steps_per_epoch = len(datamodule.prepared.train_pairs) // datamodule.batch_size
        steps = steps_per_epoch if args.steps == 0 else min(args.steps + 2, steps_per_epoch)
        order = torch.randperm(len(datamodule.prepared.train_pairs), device=device)
        module.train()
        for step in range(steps):
            if step == 2:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            batch = datamodule.train_batch(order[step * datamodule.batch_size : (step + 1) * datamodule.batch_size])
            loss = module.training_step(batch, step)  # its self.log is a no-op outside a Trainer
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / (steps - 2)
        results["batch_size"] = datamodule.batch_size
        results["steps_per_epoch"] = steps_per_epoch
        results["measured_steps"] = steps - 2
        results["seconds_per_step"] = round(per_step, 3)
        results["epoch_minutes" if args.steps == 0 else "epoch_minutes_extrapolated"] = round(per_step * steps_per_epoch / 60, 1)

        # The impression evaluation pass: catalogue encoding plus the users' queries and impressions.
        module.eval()
        users = datamodule.prepared.eval_users["val"]
        users = users if args.eval_users == 0 else users[: args.eval_users]
        start = time.perf_counter()
        with torch.no_grad():
            module._catalogue = encode_catalogue(model.encode_candidate, datamodule.catalogue())  # (n_items, D)
            for chunk in users.split(datamodule.eval_batch_size):
                module._evaluate(datamodule.eval_batch(chunk, "val"), "val")
        if device.type == "cuda":
            torch.cuda.synchronize()
        eval_seconds = time.perf_counter() - start
        results["eval_users_timed"] = len(users)
        results["eval_seconds"] = round(eval_seconds, 1)
        results["eval_all_val_users_minutes_extrapolated"] = round(eval_seconds * len(datamodule.prepared.eval_users["val"]) / len(users) / 60, 1)
        results["val_impression_auc_untrained_or_partial"] = round(float(module.task.impression_metrics["val"].compute()["impression_auc"]), 4)
        results["peak_rss_gib"] = round(peak_rss_gib(), 2)
        if device.type == "cuda":
            results["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"mind_scale_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
