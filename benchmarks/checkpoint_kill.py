"""SIGKILL during a checkpoint write, with ``$TMPDIR`` on another filesystem than the checkpoint
(as on clusters: node-local /tmp, shared checkpoint storage): how often is the checkpoint torn?

Lightning's ``TorchCheckpointIO`` (the baseline) and ``twotower.checkpoint_io.AtomicCheckpointIO``,
side by side. Each try writes a small checkpoint, then a 400 MB one over it, and is killed as soon
as the checkpoint file changes on disk; a try counts as torn when the file no longer loads.

    python benchmarks/checkpoint_kill.py [--tmpdir /dev/shm] [--tries 5]
    # writes benchmarks/results/checkpoint_kill.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLUGINS = {
    "TorchCheckpointIO (Lightning default)": "from pytorch_lightning.plugins.io import TorchCheckpointIO as IO",
    "AtomicCheckpointIO (twotower)": "from twotower.checkpoint_io import AtomicCheckpointIO as IO",
}
WRITER = """
import sys, torch
{import_line}
IO().save_checkpoint({{"version": 1, "w": torch.zeros(10)}}, sys.argv[1])
print("first", flush=True)
IO().save_checkpoint({{"version": 2, "w": torch.ones(100_000_000)}}, sys.argv[1])
"""


def one_try(import_line: str, path: Path, tmpdir: str) -> bool:
    """True when the checkpoint is torn after the kill."""
    env = {**os.environ, "TMPDIR": tmpdir, "PYTHONPATH": str(ROOT)}
    before = set(Path(tmpdir).iterdir())
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(import_line=import_line), str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert writer.stdout.readline().strip() == "first"
        small = path.stat().st_size
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and writer.poll() is None:
            if path.exists() and path.stat().st_size not in (0, small):
                break
    finally:
        writer.kill()
        writer.wait()
    for leftover in set(Path(tmpdir).iterdir()) - before:  # the baseline's orphaned temporary file
        leftover.unlink()
    try:
        torch.load(path, weights_only=True)
        return False
    except Exception:
        return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmpdir", default="/dev/shm")
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT) as out:
        for name, import_line in PLUGINS.items():
            path = Path(out) / "checkpoints" / "last.ckpt"
            path.parent.mkdir(exist_ok=True)
            torn = sum(one_try(import_line, path, args.tmpdir) for _ in range(args.tries))
            rows.append({"checkpoint_io": name, "tries": args.tries, "torn": torn})
            print(rows[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {"tmpdir": args.tmpdir, "checkpoint_dir": "under the repository (another filesystem than tmpdir)", "checkpoint_mb": 400}
    (RESULTS / "checkpoint_kill.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"SIGKILL during a 400 MB checkpoint write, $TMPDIR={args.tmpdir} (another filesystem than the checkpoint)", "",
             "| checkpoint IO | tries | torn checkpoints |", "|---|---:|---:|"]
    lines += [f"| {r['checkpoint_io']} | {r['tries']} | {r['torn']} |" for r in rows]
    (RESULTS / "checkpoint_kill.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
