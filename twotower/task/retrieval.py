"""The retrieval task: the loss, the metrics, and the one ``encode_catalogue`` and ``rank`` everything ranks with.

Training, evaluation, the baselines, the sample-recommendations callback, impression scoring,
export and the tests all encode a catalogue with ``encode_catalogue`` and take the top K with ``rank``:
"score every item, drop the known ones and those outside the candidate set, take the best K" is
written once (``top_k`` ranks a score matrix, for recommenders that score without vectors).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

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


# Score-matrix entries computed at once by ``rank``: 2**25 float32 = 128 MiB, e.g. 33 users x 1M items.
# Large enough that the matrix product runs at full speed on CPU and GPU, small enough to fit either.
RANK_CHUNK = 2**25


class Scratch:
    """A flat buffer that ``rank`` reuses from call to call (grown when too small).

    On CPU a fresh large tensor pays a page fault per 4 KiB page on first touch: at 100k items, one
    128 MiB score buffer per evaluation batch cost ``rank`` 18% over a buffer kept for the whole evaluation.
    """

    def __init__(self):
        self.tensor: torch.Tensor | None = None

    def take(self, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``n`` entries of the buffer (contents undefined)."""
        t = self.tensor
        if t is None or t.numel() < n or t.dtype != dtype or t.device != device:
            self.tensor = t = None  # free the old buffer before allocating its successor
            self.tensor = t = torch.empty(n, dtype=dtype, device=device)
        return t[:n]


def rank(query: torch.Tensor, items: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
         candidates: torch.Tensor | None = None, max_scores: int = RANK_CHUNK, scratch: Scratch | None = None) -> torch.return_types.topk:
    """The top-``k`` items of each query by inner product: ``(values, indices)``, each (U, min(k, N)), best first.

    Scores are computed a chunk at a time, so memory stays bounded whatever U and N: queries in chunks
    of ``max_scores // N`` rows, and when one row alone exceeds ``max_scores``, items in chunks too
    (each chunk's top ``k`` kept and merged). The result is ``top_k(query @ items.T, ...)``'s, ties aside.

    Args:
        query: (U, D) query vectors; items: (N, D) item vectors.
        exclude, candidates: as ``top_k``.
        max_scores: score-matrix entries held at once (one (rows, N) buffer, reused from chunk to chunk).
        scratch: where that buffer lives, to reuse it across calls too (None: a fresh one per call).
    """
    n_users, n_items = query.shape[0], items.shape[0]
    if max_scores < 1:
        raise ValueError(f"max_scores={max_scores} must be positive")
    if n_users == 0 or n_items == 0:
        return top_k(query @ items.T, k, exclude, candidates)  # scores (U, N), empty
    k = min(k, n_items)
    rows, cols = max(1, min(n_users, max_scores // max(n_items, 1))), min(n_items, max_scores)
    exclude, bounds = _sorted_by_row(exclude, n_users, rows)
    non_candidates = None if candidates is None else ~candidates
    # One buffer for every chunk (and, given ``scratch``, every call), even when one chunk is all: on CPU
    # a fresh 128 MiB matrix per product made it ~40% slower at 1M items (page faults on first touch).
    # Not under autocast (bf16-mixed), which an ``out=`` product bypasses, nor with autograd, which
    # ``out=`` refuses: there a fresh matrix per chunk (cheap from the CUDA caching allocator).
    tracked = torch.is_grad_enabled() and (query.requires_grad or items.requires_grad)
    reuse = not tracked and not torch.is_autocast_enabled(query.device.type)
    buffer = None
    if reuse:
        dtype = torch.result_type(query, items)
        buffer = (scratch or Scratch()).take(rows * cols, dtype, query.device)
    values, indices = [], []
    for chunk, start in enumerate(range(0, n_users, rows)):
        q = query[start:start + rows]  # (r, D)
        pairs = None if exclude is None else (exclude[0, bounds[chunk]:bounds[chunk + 1]] - start, exclude[1, bounds[chunk]:bounds[chunk + 1]])
        top = _top_k_by_item_chunks(q, items, k, pairs, non_candidates, cols, buffer)
        values.append(top.values)
        indices.append(top.indices)
    return torch.return_types.topk((torch.cat(values), torch.cat(indices)))


def _sorted_by_row(exclude: torch.Tensor | None, n_users: int, rows: int) -> tuple[torch.Tensor | None, list[int]]:
    """``exclude`` (2, nnz) ordered by row, and where each chunk of ``rows`` rows starts in it (one host sync for all chunks)."""
    if exclude is None:
        return None, []
    exclude = exclude[:, torch.argsort(exclude[0], stable=True)]  # CSR gathers come sorted, but callers need not
    starts = torch.arange(0, n_users + rows, rows, device=exclude.device).clamp(max=n_users)
    return exclude, torch.searchsorted(exclude[0], starts).tolist()


def _top_k_by_item_chunks(q: torch.Tensor, items: torch.Tensor, k: int, pairs: tuple[torch.Tensor, torch.Tensor] | None,
                          non_candidates: torch.Tensor | None, cols: int, buffer: torch.Tensor | None) -> torch.return_types.topk:
    """The top ``k`` of the (r, N) scores ``q @ items.T``, ``cols`` items at a time (all at once when ``cols`` = N).

    ``pairs``: (row in ``q``, item) to exclude; ``buffer``: flat, at least r x ``cols``, written by the product (None: allocate).
    With several item chunks, each chunk's top k is kept and the best k of those returned.
    """
    values, indices = [], []
    for start in range(0, items.shape[0], cols):
        block = items[start:start + cols]  # (c, D)
        if buffer is None:
            scores = q @ block.T  # (r, c)
        else:
            scores = torch.mm(q, block.T, out=buffer[:len(q) * len(block)].view(len(q), len(block)))  # (r, c)
        if pairs is not None:
            rows, columns = pairs
            if len(block) < items.shape[0]:
                inside = (columns >= start) & (columns < start + len(block))
                rows, columns = rows[inside], columns[inside] - start
            scores[rows, columns] = float("-inf")
        if non_candidates is not None:
            scores.masked_fill_(non_candidates[start:start + len(block)], float("-inf"))  # broadcast over rows: no index list
        top = scores.topk(min(k, len(block)), dim=1)
        values.append(top.values)
        indices.append(top.indices + start)
    if len(values) == 1:
        return torch.return_types.topk((values[0], indices[0]))
    values, indices = torch.cat(values, 1), torch.cat(indices, 1)  # (r, <= k per chunk)
    best = values.topk(k, dim=1)
    return torch.return_types.topk((best.values, indices.gather(1, best.indices)))


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
