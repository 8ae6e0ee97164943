"""The retrieval loss: a sampled softmax over in-batch candidates, built from small named tweaks.

``RetrievalLoss`` is configured once (which tweaks apply); each training step it builds the logits of
every query against the softmax's columns — the batch's own positives first, then any extra
negatives shared by the batch (other ranks' candidates, sampled items) — and runs the tweaks in order.
A tweak is one function of the ``Softmax`` being built; adding one is a function and a switch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Columns:
    """The softmax's candidate columns: row i of the batch's positives is column i.

    Attributes:
        vectors: (C, D) candidate vectors.
        ids: (C,) item ids (accidental hits, known items).
        log_q: (C,) log-probability that each column's item is sampled as a negative (logQ correction).
        query_ids: (C,) the user whose positive each column is; -1 for a column that is nobody's (a sampled item).
    """

    vectors: torch.Tensor
    ids: torch.Tensor
    log_q: torch.Tensor
    query_ids: torch.Tensor

    def __add__(self, other: Columns) -> Columns:
        return Columns(*(torch.cat([getattr(self, f), getattr(other, f)]) for f in ("vectors", "ids", "log_q", "query_ids")))


@dataclass
class RowNegatives:
    """M extra negatives of each row alone (e.g. shown in the row's impression but not clicked).

    Attributes:
        vectors: (B, M, D); padding: (B, M) True where a slot holds no negative; log_q: (B, M) their items' log_q.
    """

    vectors: torch.Tensor
    padding: torch.Tensor
    log_q: torch.Tensor


@dataclass
class Softmax:
    """What a step's tweaks work on: the queries, their columns, the logits and the excluded logits.

    ``batch`` rows; logits (B, C) until ``row_negatives`` appends (B, M) more; the diagonal holds the positives.
    """

    query: torch.Tensor  # (B, D)
    columns: Columns
    temperature: torch.Tensor | float
    logits: torch.Tensor  # (B, C [+ M])
    excluded: torch.Tensor  # (B, C [+ M]) bool
    known_items: torch.Tensor | None = None  # (2, nnz) (row, item id) pairs
    row_negatives: RowNegatives | None = None

    @property
    def batch(self) -> int:
        return self.query.shape[0]


Tweak = Callable[[Softmax], None]


def softmax_logits(query: torch.Tensor, columns: Columns, temperature: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) logits of every query against every column, and a (B, C) all-False exclusion mask."""
    # Scaling the (B, D) queries, not the (B, C) logits: one pass over B x D instead of B x C, both ways.
    logits = (query / temperature) @ columns.vectors.T  # (B, C); diagonal = positives
    return logits, torch.zeros_like(logits, dtype=torch.bool)


def add_row_negatives(s: Softmax) -> None:
    """Each row's own negatives join its softmax after the shared columns; padding slots are excluded."""
    if s.row_negatives is None:
        return
    row_logits = torch.einsum("bd,bmd->bm", s.query, s.row_negatives.vectors) / s.temperature  # (B, M)
    s.logits = torch.cat([s.logits, row_logits], dim=1)  # (B, C + M)
    s.excluded = torch.cat([s.excluded, s.row_negatives.padding], dim=1)


def logq_correction(weight: float) -> Tweak:
    """Each logit minus ``weight`` x its item's log sampling probability (Yi et al., 2019): popular items are
    negatives more often than their share of the corpus, and would be pushed down for it. Row negatives
    are corrected too, so all logits share one scale: uncorrected, they would sit ~|log_q| below the
    corrected in-batch logits and barely count."""
    def correct(s: Softmax) -> None:
        shared = len(s.columns.ids)
        corrected = s.logits[:, :shared] - weight * s.columns.log_q.unsqueeze(0)
        if s.row_negatives is not None:
            corrected = torch.cat([corrected, s.logits[:, shared:] - weight * s.row_negatives.log_q], dim=1)
        s.logits = corrected
    return correct


def exclude_accidental_hits(s: Softmax) -> None:
    """A column holding row i's own positive item (a repeat in the batch) is not a negative of row i."""
    ids = s.columns.ids
    s.excluded[:, : len(ids)] |= ids[: s.batch].unsqueeze(1) == ids.unsqueeze(0)


def exclude_same_user(s: Softmax) -> None:
    """Another positive of row i's user (a column of the same user) is not a negative of row i."""
    users = s.columns.query_ids
    s.excluded[:, : len(users)] |= users[: s.batch].unsqueeze(1) == users.unsqueeze(0)


def exclude_known_items(s: Softmax) -> None:
    """No item the row's user is known to like (``known_items``, e.g. their training items) is a negative of the row."""
    if s.known_items is not None:
        ids = s.columns.ids
        s.excluded[:, : len(ids)] |= known_item_mask(s.known_items, ids, s.batch)


def cross_entropy(s: Softmax) -> torch.Tensor:
    """Mean cross-entropy of each row's positive (its diagonal column, never excluded) against its negatives."""
    diagonal = torch.arange(s.batch, device=s.logits.device)
    s.excluded[diagonal, diagonal] = False
    return F.cross_entropy(s.logits.masked_fill(s.excluded, float("-inf")), diagonal)


class RetrievalLoss:
    """The in-batch sampled softmax with the tweaks the config switches on, chosen once.

    Args:
        logq_weight: weight of the logQ correction (0: none).
        mask_accidental_hits: a column equal to the row's positive item is not its negative.
        mask_same_user: another positive of the same user is not its negative.
    """

    def __init__(self, logq_weight: float = 1.0, mask_accidental_hits: bool = True, mask_same_user: bool = True):
        # Row negatives first (data-driven: when the batch brings them), so the tweaks below see every logit.
        self.tweaks: list[Tweak] = [add_row_negatives]
        if logq_weight:
            self.tweaks.append(logq_correction(logq_weight))
        if mask_accidental_hits:
            self.tweaks.append(exclude_accidental_hits)
        if mask_same_user:
            self.tweaks.append(exclude_same_user)
        self.tweaks.append(exclude_known_items)  # data-driven: when the batch brings known items

    def __call__(self, query: torch.Tensor, columns: Columns, temperature: torch.Tensor | float,
                 known_items: torch.Tensor | None = None, row_negatives: RowNegatives | None = None) -> torch.Tensor:
        """Args:
            query: (B, D) query vectors; ``columns``' first B rows are their positives.
            known_items: (2, nnz) (row, item id) pairs excluded from each row's softmax.
            row_negatives: each row's own extra negatives.
        """
        logits, excluded = softmax_logits(query, columns, temperature)
        s = Softmax(query, columns, temperature, logits, excluded, known_items, row_negatives)
        for tweak in self.tweaks:
            tweak(s)
        return cross_entropy(s)


def known_item_mask(known_items: torch.Tensor, column_ids: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, C) True where column j's item is one of row i's known items.

    Args:
        known_items: (2, nnz) pairs (row, item id).
        column_ids: (C,) the item id of each softmax column (duplicates allowed).

    Fixed shapes throughout (no ``unique``, no boolean indexing), so no host sync on a GPU;
    memory is (rows, C), not (rows, catalogue).
    """
    row, item = known_items
    sorted_ids = column_ids.sort().values  # (C,)
    canonical = torch.searchsorted(sorted_ids, column_ids)  # (C,) first slot holding each column's id
    slot = torch.searchsorted(sorted_ids, item).clamp(max=len(sorted_ids) - 1)  # (nnz,)
    hit = (sorted_ids[slot] == item).int()
    present = torch.zeros(rows, len(sorted_ids), dtype=torch.int, device=column_ids.device)
    present.index_put_((row, slot), hit, accumulate=True)  # (rows, C) by sorted slot
    return present[:, canonical] > 0
