"""The monitored metric checked against what a run logs, before the run: a name it never logs would otherwise
train a whole first epoch and then stop with EarlyStopping's error (or checkpoint nothing "best")."""
from __future__ import annotations

import re
from collections.abc import Sequence

from twotower.task.beyond_accuracy import ACTIVITY_GROUPS
from twotower.task.impression_metrics import NAMES as IMPRESSION_NAMES
from twotower.task.metrics import METRICS

BEYOND_ACCURACY = ("coverage", "gini", "diversity", "volume", "novelty", "longtail", "age", "fresh", *(f"recall_{g}" for g in ACTIVITY_GROUPS))
UNCUT = ("popularity_prior", *IMPRESSION_NAMES)  # validation metrics logged without a cut-off


def monitor_problem(monitor: str, ks: Sequence[int], beyond_accuracy_ks: Sequence[int]) -> str | None:
    """Why ``monitor`` is not a metric the run logs (``val/<metric>@<k>`` with k in the right cut-offs, an impression
    metric, ``val/popularity_prior`` or ``train/loss``), else None. Impression metrics and ``age`` / ``fresh`` also
    need data that has them, which only the data set-up knows: those are not checked here."""
    split, _, name = monitor.partition("/")
    if split not in ("train", "val") or not name:
        return f"monitor.metric={monitor!r}: a monitored metric is 'val/<name>' (or 'train/loss'), e.g. val/recall@20"
    if split == "train":
        return None if name == "loss" else f"monitor.metric={monitor!r}: the only training metric is train/loss"
    if name in UNCUT:
        return None
    cut = re.fullmatch(r"(.+)@(\d+)", name)
    metric, k = (cut.group(1), int(cut.group(2))) if cut else (name, None)
    for names, cut_offs, key in ((METRICS, ks, "module.ks"), (BEYOND_ACCURACY, beyond_accuracy_ks, "module.beyond_accuracy_ks")):
        if metric in names:
            if k in cut_offs:
                return None
            return f"monitor.metric={monitor!r}: {metric} is logged at {key}={list(cut_offs)} only"
    known = ", ".join([*METRICS, *BEYOND_ACCURACY])
    return f"monitor.metric={monitor!r}: no metric '{metric}' is logged (ranking and beyond-accuracy metrics: {known}, each @k; also {', '.join(UNCUT)})"
