"""Memory and time of sharded interactions (``data=shards``) against the in-memory ``TableSource`` path.

    python -m benchmarks.shards_scale                                  # 1M, 10M, 100M rows
    python -m benchmarks.shards_scale --sizes 1e6 --memory-sizes 1e6   # a quick check

For each size, synthetic skewed shards are written to ``--dir`` (user_id, item_id, timestamp as
int64; 5M rows per file, pyarrow's default row groups of 1Mi rows; 100k users and 100k items,
from ``SkewedSource``'s generators), then each measurement runs in a fresh process (peak RSS is
per process, ``ru_maxrss``), with one torch and one Arrow thread:

- ``shards``: ``TwoTowerDataModule`` over a ``ShardSource``: set-up (one streaming pass) and one whole epoch of training
  batches gathered from the feature stores (the data path alone, no model).
- ``memory``: the same for ``TwoTowerDataModule(TableSource(...))`` on the same files, same split
  (``HashSplit``) and features; only at the sizes given by ``--memory-sizes``.
- ``train``: ``train()`` with ``data=shards`` for ``--train-steps`` steps and one validation on
  the sampled users (model, optimizer, Lightning included), with ``module.beyond_accuracy_ks=[]``:
  the beyond-accuracy metrics' item vectors come from a dense users x items matrix (40 GB here).

Features (both paths): user id, a 50-item history (by timestamp), item id. The shards are
deleted after each size unless ``--keep``. Results: ``benchmarks/results/shards_scale.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
FEATURES = {
    "query": [{"name": "user_id", "kind": "id"}, {"name": "history", "kind": "history", "max_len": 50}],
    "candidate": [{"name": "item_id", "kind": "id"}],
}
N_USERS = N_ITEMS = 100_000
ROWS_PER_FILE = 5_000_000
BATCH = 1024


def generate(directory: Path, rows: int, seed: int = 0) -> float:
    """Writes users.parquet, items.parquet and shards/part-*.parquet; returns the shards' size in GB."""
    from twotower.data.sources.skewed import SkewedSource, _zipf_draws

    source = SkewedSource(n_users=N_USERS, n_items=N_ITEMS, n_interactions=1, seed=seed)
    tables = source.load()  # the users and items tables; interactions are drawn per file below
    arrays = source.generate()
    shards = directory / "shards"
    shards.mkdir(parents=True)
    tables.users.assign(user_id=tables.users["user_id"].astype("int64")).to_parquet(directory / "users.parquet", index=False)
    tables.items.assign(item_id=tables.items["item_id"].astype("int64")).to_parquet(directory / "items.parquet", index=False)
    for number, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        rng = np.random.default_rng([seed, number])
        users = _zipf_draws(rng, N_USERS, source.user_exponent, n)
        items = source._draw_items(rng, arrays.genres[:, 0], arrays.segment[users])
        table = pa.table({"user_id": users.astype(np.int64), "item_id": items.astype(np.int64), "timestamp": np.arange(start, start + n, dtype=np.int64)})
        pq.write_table(table, shards / f"part-{number:05d}.parquet")
    return sum(f.stat().st_size for f in shards.iterdir()) / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(mode: str, directory: Path, train_steps: int, eval_users: int) -> dict:
    import torch

    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    import twotower.training  # noqa: F401  (what every run imports: torch, Lightning, pandas, pyarrow)
    from twotower.data import TwoTowerDataModule
    from twotower.data.sources import TableSource
    from twotower.data.splits import HashSplit
    from twotower.data.streaming import ShardSource

    if mode == "imports":
        return {"peak_mb": peak_rss_mb()}
    paths = (str(directory / "shards"), str(directory / "users.parquet"), str(directory / "items.parquet"))
    if mode == "train":
        return train_child(paths, train_steps, eval_users)
    start = time.perf_counter()
    if mode == "shards":
        dm = TwoTowerDataModule(ShardSource(*paths, timestamp="timestamp", eval_users=eval_users), FEATURES, HashSplit(), batch_size=BATCH)
    else:
        dm = TwoTowerDataModule(TableSource(*paths, timestamp="timestamp"), FEATURES, HashSplit(), batch_size=BATCH)
    dm.setup("fit")
    setup_s, setup_peak, after_setup = time.perf_counter() - start, peak_rss_mb(), rss_mb()
    start, batches = time.perf_counter(), 0
    for batch in dm.train_dataloader():
        dm.train_batch(batch["rows"])
        batches += 1
    return {"setup_s": setup_s, "setup_peak_mb": setup_peak, "rss_after_setup_mb": after_setup, "epoch_s": time.perf_counter() - start,
            "batches": batches, "peak_mb": peak_rss_mb(), "split": dm.prepared.split_counts}


def train_child(paths: tuple[str, str, str], steps: int, eval_users: int) -> dict:
    from hydra import compose, initialize_config_dir

    from twotower.training import train

    overrides = [
        "data=shards", f"data.source.interactions={paths[0]}", f"data.source.users={paths[1]}", f"data.source.items={paths[2]}",
        "data.source.timestamp=timestamp", f"data.batch_size={BATCH}", f"data.source.eval_users={eval_users}", "trainer.max_epochs=1", f"+trainer.limit_train_batches={steps}",
        "test=false", "logger=none", "callbacks=none", "+module.beyond_accuracy_ks=[]", "trainer.enable_progress_bar=false", "paths.output_dir=/tmp/shards_scale_run", "ckpt_path=null",
    ]  # fmt: skip
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=overrides)
    start = time.perf_counter()
    metrics, objects = train(cfg)
    return {"train_s": time.perf_counter() - start, "steps": int(objects["trainer"].global_step), "peak_mb": peak_rss_mb(),
            "val_recall@20": metrics.get("val/recall@20"), "train_loss": metrics.get("train/loss_epoch")}


def measure(mode: str, directory: Path, train_steps: int, eval_users: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.shards_scale", "--child", mode, "--dir", str(directory), "--train-steps", str(train_steps), "--eval-users", str(eval_users)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} (shared dev box, other jobs running)"


def report(results: list[dict], out: Path) -> None:
    lines = [
        "# Sharded interactions at scale: peak memory and time per process", "",
        f"Machine: {machine()}. One torch thread, one Arrow thread per process. "
        f"Commands: {', '.join(sorted({'`python -m benchmarks.shards_scale ' + r['args'] + '`' for r in results}))}.", "",
        f"Data: {N_USERS:,} users, {N_ITEMS:,} items, skewed synthetic interactions (int64 user_id, item_id, timestamp), "
        f"{ROWS_PER_FILE:,} rows per file, row groups of 1Mi rows. Split: HashSplit 70/10/20 (train/val/test shares 0.72/0.08/0.2). "
        "Features: user id + 50-item history by time, item id. Batch 1024.", "",
        "`set-up`: reading, checking, splitting, vocabularies, logQ counts, histories, evaluation sets. "
        "`epoch`: every training batch of one epoch gathered from the feature stores (data path only, no model). "
        "`peak RSS`: the process's high-water mark (`ru_maxrss`) over set-up and the epoch. "
        "`train`: `train()` with `data=shards`, the given steps plus one validation on the sampled users (`data.source.eval_users`), in its own process "
        "(beyond-accuracy metrics off: they build a dense users x items matrix).", "",
        f"For scale: a process that only imports twotower (torch, Lightning, pandas, pyarrow) peaks at "
        f"{measure('imports', Path('.'), 0, 0)['peak_mb']:,.0f} MB.", "",
        "| rows | shards on disk | path (sharded: data.source.eval_users) | set-up s | RSS after set-up MB | epoch s (batches) | peak RSS MB | train: steps, s, peak RSS MB |",
        "|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for mode in ("shards", "memory"):
            m = r.get(mode)
            if m is None:
                continue
            path = f"shards, {r['eval_users']:,}" if mode == "shards" else "in-memory TableSource"
            train_cell = ""
            if mode == "shards" and r.get("train"):
                t = r["train"]
                train_cell = t.get("error") or f"{t['steps']} steps, {t['train_s']:.0f} s, {t['peak_mb']:,.0f} MB"
            if "error" in m:
                lines.append(f"| {r['rows']:,} | {r['gb'] * 1000:,.0f} MB | {path} | failed: {m['error']} | | | | {train_cell} |")
                continue
            lines.append(f"| {r['rows']:,} | {r['gb'] * 1000:,.0f} MB | {path} | {m['setup_s']:.1f} | {m['rss_after_setup_mb']:,.0f} | "
                         f"{m['epoch_s']:.1f} ({m['batches']:,}) | {m['peak_mb']:,.0f} | {train_cell} |")
    lines += [
        "",
        "Reading (of the run recorded here): the sharded set-up holds counts and tables sized by users and items, "
        "one record batch, the shuffle buffer, and every row of the evaluation sample (`data.source.eval_users` of the users, "
        "so that share of the interactions: 10% with 10,000 of 100,000 users). That sample is what grows between 10M and "
        "100M rows; with 1,000 evaluation users the 100M-row peak is the 10M-row one. The in-memory path holds every "
        "interaction (ids as Python strings) and was run only where it fits comfortably next to other jobs. "
        "Times are from a loaded shared box: compare rows of the same size, not across runs.",
    ]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1e6,1e7,1e8")
    parser.add_argument("--memory-sizes", default="1e6,1e7", help="sizes also run through the in-memory TableSource path")
    parser.add_argument("--train-sizes", default="1e6,1e8", help="sizes also trained for --train-steps steps")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--eval-users", type=int, default=10_000, help="data.source.eval_users of the sharded runs")
    parser.add_argument("--dir", default="/tmp/twotower_shards_scale")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--append", action="store_true", help="add to the results already in --out's .json")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shards_scale.md"))
    parser.add_argument("--child", choices=["shards", "memory", "train", "imports"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.dir), args.train_steps, args.eval_users)))
        return
    sizes = lambda text: [int(float(s)) for s in text.split(",") if s]  # noqa: E731
    out = Path(args.out)
    results = json.loads(out.with_suffix(".json").read_text()) if args.append and out.with_suffix(".json").exists() else []
    for rows in sizes(args.sizes):
        directory = Path(args.dir) / f"rows{rows}"
        if directory.exists():
            shutil.rmtree(directory)
        start = time.perf_counter()
        gb = generate(directory, rows)
        print(f"{rows:,} rows: {gb:.2f} GB written in {time.perf_counter() - start:.0f} s", flush=True)
        result = {"rows": rows, "gb": gb, "eval_users": args.eval_users, "args": " ".join(sys.argv[1:]), "shards": measure("shards", directory, args.train_steps, args.eval_users)}
        print("  shards", result["shards"], flush=True)
        if rows in sizes(args.memory_sizes):
            result["memory"] = measure("memory", directory, args.train_steps, args.eval_users)
            print("  memory", result["memory"], flush=True)
        if rows in sizes(args.train_sizes):
            result["train"] = measure("train", directory, args.train_steps, args.eval_users)
            print("  train", result["train"], flush=True)
        results.append(result)
        report(results, out)
        if not args.keep:
            shutil.rmtree(directory)


if __name__ == "__main__":
    main()
