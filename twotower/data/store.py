"""Column tensors indexed by entity row, and the batches gathered from them on the device."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch

from twotower.features.base import Features


class FeatureStore:
    """One tensor per feature column, first dimension = entity row; moved to a device once."""

    def __init__(self, columns: Mapping[str, torch.Tensor], num_rows: int):
        wrong = {name: t.shape[0] for name, t in columns.items() if t.shape[0] != num_rows}
        if wrong:
            raise ValueError(f"feature columns {wrong} do not have {num_rows} rows")
        self.columns = dict(columns)
        self.num_rows = num_rows
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> FeatureStore:
        self.columns = {k: v.to(device, non_blocking=True) for k, v in self.columns.items()}
        self.device = torch.device(device)
        return self

    def gather(self, rows: torch.Tensor) -> Features:
        return {name: column[rows] for name, column in self.columns.items()}

    def cpu_columns(self) -> Features:
        """Every column on the CPU (copies only where the store sits on another device)."""
        return {name: column.cpu() for name, column in self.columns.items()}

    def __len__(self) -> int:
        return self.num_rows


@dataclass
class CSR:
    """A sparse 0/1 matrix by rows (e.g. each user's known items): row r holds indices[indptr[r]:indptr[r+1]]."""

    indptr: torch.Tensor
    indices: torch.Tensor

    @classmethod
    def from_pairs(cls, rows: torch.Tensor, cols: torch.Tensor, num_rows: int, distinct: bool = False) -> CSR:
        """The (row, col) pairs by row, columns sorted within a row.

        Args:
            distinct: a repeated pair is one entry (held-out items: a pair repeated in the interactions is one
                relevant item, not two, as recall's denominator counts entries); else every pair is kept
                (seen and known items count interactions, as the artifact's user_seen does).
        """
        keys = rows.long() * (int(cols.max()) + 1 if len(cols) else 1) + cols.long()
        order = torch.argsort(keys)
        if distinct:
            first = torch.ones(len(order), dtype=torch.bool)
            first[1:] = keys[order][1:] != keys[order][:-1]
            order = order[first]
        rows, cols = rows[order], cols[order]
        counts = torch.bincount(rows, minlength=num_rows)
        indptr = torch.zeros(num_rows + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return cls(indptr, cols.long())

    def to(self, device: torch.device | str) -> CSR:
        return CSR(self.indptr.to(device), self.indices.to(device))

    def row_lengths(self, rows: torch.Tensor) -> torch.Tensor:
        return self.indptr[rows + 1] - self.indptr[rows]

    def gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nonzeros of ``rows`` as (position of the row in ``rows``, column) pairs, without a Python loop."""
        lengths = self.row_lengths(rows)
        batch_pos = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
        starts = torch.repeat_interleave(self.indptr[rows], lengths)
        offsets = torch.arange(int(lengths.sum()), device=rows.device) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
        return batch_pos, self.indices[starts + offsets]


@dataclass
class _Movable:
    def to(self, device: torch.device | str):
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=True)
            elif isinstance(value, dict):
                value = {k: v.to(device, non_blocking=True) for k, v in value.items()}
            moved[f.name] = value
        return type(self)(**moved)


@dataclass
class Batch(_Movable):
    """A training batch of (user, positive item) pairs.

    ``candidate_ids`` and ``query_ids`` are item and user rows (accidental-hit and same-user
    masking); ``log_q`` is the log sampling probability of each candidate (logQ correction).
    ``negatives`` are optional extra negative items shared by the batch (features, item rows
    ``negative_ids`` and their ``negative_log_q``).
    ``row_negatives`` are features of shape (B, M, ...): M extra negatives of each row (e.g. the
    items shown but not clicked in the impression of the row's click), with ``row_negatives_mask``
    (B, M) True where a slot is padding, and ``row_negatives_log_q`` (B, M) their items' ``log_q``.
    ``known_items`` (2, nnz) lists (row in batch, item row) pairs of items known to be positives
    of each row's user; none of them is a negative of that row (``twotower.task.losses.exclude_known_items``).
    """

    query: Features
    candidate: Features
    query_ids: torch.Tensor
    candidate_ids: torch.Tensor
    log_q: torch.Tensor
    negatives: Features | None = None
    negative_ids: torch.Tensor | None = None
    negative_log_q: torch.Tensor | None = None
    row_negatives: Features | None = None
    row_negatives_mask: torch.Tensor | None = None
    row_negatives_log_q: torch.Tensor | None = None
    known_items: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.candidate_ids)


@dataclass
class EvalBatch(_Movable):
    """Users to rank the whole catalogue for: their features, the items to exclude and the held-out targets.

    ``exclude`` and ``targets`` are (position in batch, item row) pairs as two stacked rows, shape (2, nnz).
    ``candidates`` (n_items,) bool, when given, restricts the ranking to those items.
    ``impressions`` (optional) lists the items shown to these users as four stacked rows, shape
    (4, n): query position, item row, impression id, label (1 = clicked). The query position is a row
    of ``impression_query`` where that is given (each impression's own query inputs: its history
    line, of the user ``impression_users`` names), else the position in the batch (the user's query).
    """

    query: Features
    users: torch.Tensor
    exclude: torch.Tensor
    targets: torch.Tensor
    candidates: torch.Tensor | None = None
    impressions: torch.Tensor | None = None
    impression_query: Features | None = None
    impression_users: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.users)
