"""A classic baseline as the run's model (``train.py model=popularity``): fitted and scored, nothing trained.

The metrics are the ones a trained run logs, under the same names, from the same code: the
full-catalogue ``split/recall@k`` ... and beyond-accuracy metrics through ``twotower.baselines.evaluate``
(the datamodule's own evaluation batches and ``RetrievalMetrics``), and, where the source records
impressions, ``split/impression_auc`` ... through ``evaluate_impressions``. So a comparison in the
README re-runs on anyone's data by changing ``model=``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from twotower.datasets.mind.evaluation import Scorer, evaluate_impressions
from twotower.task.impression_metrics import NAMES as IMPRESSION_NAMES


def is_baseline(model: Any) -> bool:
    """Whether an instantiated ``model`` config is a baseline (``fit`` + ``score``) rather than a tower builder.

    Duck-typed rather than an ``isinstance`` against ``twotower.baselines``: that module needs scipy
    (the ``bench`` extra), and a plain install must train towers without importing it.
    """
    return callable(getattr(model, "fit", None)) and callable(getattr(model, "score", None))


def evaluate_baseline(baseline: Any, datamodule: Any, splits: Sequence[str], ks: Sequence[int], beyond_ks: Sequence[int],
                      seed: int) -> dict[str, float]:
    """``{"val/recall@20": ..., "val/impression_auc": ...}`` of ``baseline`` on each of ``splits``, fitted anew
    on what each split knows; afterwards ``baseline`` is fitted for the last split.

    Args:
        datamodule: set up (``setup("fit")``).
        ks / beyond_ks: the cut-offs of the accuracy and beyond-accuracy metrics, as the module's.
        seed: orders exact ties (``twotower.baselines.TIE_BREAK``).
    """
    from twotower.baselines import evaluate  # needs scipy: imported only when a baseline runs

    metrics = {}
    for split in splits:
        values = evaluate(baseline, datamodule, split, ks, beyond_ks, seed)  # fits on the split's known interactions
        if datamodule.prepared.impressions is not None:
            shown = evaluate_impressions(datamodule, split, impression_scorer(baseline, datamodule.prepared.impressions, datamodule.eval_batch_size))
            values.update({name: shown[name] for name in IMPRESSION_NAMES})
        metrics.update({f"{split}/{name}": value for name, value in values.items()})
    return metrics


def impression_scorer(baseline: Any, impressions: Any, chunk_size: int = 1024) -> Scorer:
    """Each shown item's score from a fitted ``baseline``: its row of the impression's own history line where
    the baseline scores lines (``score_lines``) and the source records one per impression (as the towers
    score it), else its row of the user.

    Rows are scored ``chunk_size`` users (or lines) at a time, so a users x items matrix is never whole.
    """
    by_line = callable(getattr(baseline, "score_lines", None)) and impressions.histories is not None
    score_rows = baseline.score_lines if by_line else baseline.score

    def scorer(users: torch.Tensor, items: torch.Tensor, shown_in: torch.Tensor) -> torch.Tensor:
        keys = (shown_in if by_line else users).cpu().numpy()
        rows, entry_row = np.unique(keys, return_inverse=True)  # the distinct users (or lines); each entry's among them
        order = np.argsort(entry_row, kind="stable")  # entries grouped by row, so each chunk's entries are one slice
        bounds = np.searchsorted(entry_row[order], np.arange(0, len(rows) + chunk_size, chunk_size))
        item = items.cpu().numpy()
        out = np.zeros(len(keys), dtype=np.float64)
        for c, start in enumerate(range(0, len(rows), chunk_size)):
            entries = order[bounds[c]:bounds[c + 1]]
            scores = np.asarray(score_rows(rows[start:start + chunk_size]))  # (chunk, n_items)
            out[entries] = scores[entry_row[entries] - start, item[entries]]
        return torch.from_numpy(out)

    return scorer
