"""The table a ``-m`` sweep ends with: each job's overrides, monitored metric and run directory.

A Hydra callback, so it serves every sweeper (basic, Optuna) and launcher (local, submitit): it
runs in the launching process once every job has returned, and reads what each job left in its
own directory (``.hydra/overrides.yaml`` and train.py's ``metrics.json``), so jobs that ran on
other machines of a cluster are in it too.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SUMMARY_FILE = "sweep_summary.csv"
# <run dir>/metrics.json: the closing metrics train.py writes for this summary.
METRICS_FILE = "metrics.json"


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sweep_rows(sweep_dir, config.monitor.metric)
        if not rows:
            return
        with open(sweep_dir / SUMMARY_FILE, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(format_table(rows, config.monitor.metric, config.monitor.mode))
        print(f"sweep summary: {sweep_dir / SUMMARY_FILE}")


def sweep_rows(sweep_dir: Path, metric: str) -> list[dict[str, Any]]:
    """One row per job directory (``<sweep dir>/<job number>``) in job order; a job that did not finish has no metric.

    ``overrides`` holds what sets the job apart: the overrides every job shares are left out.
    """
    jobs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
    overrides = [_overrides(job) for job in jobs]
    shared = set.intersection(*map(set, overrides)) if len(jobs) > 1 else set()
    rows = []
    for job, own in zip(jobs, overrides):
        metrics_file = job / METRICS_FILE
        value = json.loads(metrics_file.read_text())["metrics"].get(metric) if metrics_file.exists() else None
        rows.append({"job": int(job.name), "overrides": " ".join(o for o in own if o not in shared), metric: value, "dir": str(job)})
    return rows


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return (yaml.safe_load(path.read_text()) or []) if path.exists() else []


def format_table(rows: list[dict[str, Any]], metric: str, mode: str) -> str:
    """Jobs best first (by ``mode``), unfinished jobs last."""
    finished = [r for r in rows if r[metric] is not None and not math.isnan(r[metric])]
    ordered = sorted(finished, key=lambda r: r[metric], reverse=mode == "max") + [r for r in rows if r not in finished]
    width = max(len("overrides"), *(len(r["overrides"]) for r in rows))
    lines = [f"{'job':>4}  {'overrides':<{width}}  {metric:>14}  dir"]
    for row in ordered:
        value = f"{row[metric]:.4f}" if row in finished else "not finished"
        lines.append(f"{row['job']:>4}  {row['overrides']:<{width}}  {value:>14}  {row['dir']}")
    return "\n".join(lines)
