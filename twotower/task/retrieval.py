"""The retrieval task: the loss, the metrics, and the one ``encode_catalogue`` and ``rank`` everything ranks with.

Training, evaluation, the baselines, the sample-recommendations callback, impression scoring,
export and the tests all encode a catalogue with ``encode_catalogue`` and take the top K with ``rank``:
"score every item, drop the known ones and those outside the candidate set, take the best K" is
written once (``top_k`` ranks a score matrix, for recommenders that score without vectors).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from twotower.features.base import Features
from twotower.task.impression_metrics import ImpressionMetrics
from twotower.task.losses import RetrievalLoss
from twotower.task.metrics import RetrievalMetrics


@torch.no_grad()
def encode_catalogue(encode: Callable[[Features], torch.Tensor], chunks: Iterable[Features]) -> torch.Tensor:
    """(n_items, D) vectors of every item, encoded a chunk of features at a time (memory bounded by the chunk)."""
    return torch.cat([encode(features) for features in chunks])


def rank(query: torch.Tensor, items: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
         candidates: torch.Tensor | None = None) -> torch.return_types.topk:
    """The top-``k`` items of each query by inner product: ``(values, indices)``, each (U, min(k, N)), best first.

    Args:
        query: (U, D) query vectors; items: (N, D) item vectors.
        exclude, candidates: as ``top_k``.
    """
    return top_k(query @ items.T, k, exclude, candidates)  # scores (U, N)


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None, candidates: torch.Tensor | None = None) -> torch.return_types.topk:
    """The top-``k`` columns of each row of a (U, N) score matrix (changed in place), as ``rank`` takes them from vectors.

    Args:
        exclude: (2, nnz) (row, item) pairs never ranked (e.g. each user's known items).
        candidates: (N,) bool, the only items ranked (e.g. the held-out items of a cold-start protocol).

    Excluded and non-candidate items score -inf, so they come after every ranked item (and only
    appear when fewer than ``k`` items are left).
    """
    if exclude is not None:
        scores[exclude[0], exclude[1]] = float("-inf")
    if candidates is not None:
        scores[:, ~candidates] = float("-inf")
    return scores.topk(min(k, scores.shape[1]), dim=1)


class RetrievalTask(nn.Module):
    """The loss and the evaluation metrics of retrieval (a module, so the metrics follow the device and sync under DDP).

    Args:
        loss: the configured ``RetrievalLoss``.
        ks: cut-offs of the ranking metrics (``val/recall@20``, ...).
    """

    def __init__(self, loss: RetrievalLoss, ks: Sequence[int]):
        super().__init__()
        self.loss = loss
        self.ks = list(ks)
        self.metrics = nn.ModuleDict({split: RetrievalMetrics(ks) for split in ("val", "test")})
        # Only updated (and logged) when evaluation batches carry impressions.
        self.impression_metrics = nn.ModuleDict({split: ImpressionMetrics() for split in ("val", "test")})
