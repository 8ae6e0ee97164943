"""Per-batch training behaviours as composable steps, the same for every source.

A step changes a training ``Batch`` in place, reading the ``Prepared`` data; ``check`` refuses, at
set-up and naming the reason, data a step cannot work with. The data module runs the steps its
arguments switch on, in the order of ``build_steps``: negatives are drawn first, so id dropout reaches
them as it reaches the batch's own candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from twotower.data.prepared import Prepared
from twotower.data.store import Batch


class BatchStep(Protocol):
    def check(self, data: Prepared) -> None:
        """Raises ValueError when ``data`` cannot support the step."""

    def __call__(self, batch: Batch, data: Prepared, rows: torch.Tensor | None) -> None:
        """Changes ``batch``; ``rows`` are the training pairs' positions in ``data.train_pairs`` (None when streamed)."""


@dataclass
class SampledNegatives:
    """``count`` items drawn uniformly from the trained items, extra negatives shared by the batch (mixed negative sampling, Yang et al. 2020)."""

    count: int

    def check(self, data: Prepared) -> None:
        pass

    def __call__(self, batch: Batch, data: Prepared, rows: torch.Tensor | None) -> None:
        device = batch.candidate_ids.device
        picks = torch.randint(len(data.trained_items), (self.count,), device=device)
        ids = data.trained_items[picks]  # cold items are never pushed down as negatives
        # Any item can enter a column either way, so every column is corrected by its mixed
        # proposal probability: batch_size * p_unigram + count / n_trained_items.
        mixed_log_q = torch.logaddexp(data.item_log_q + math.log(len(batch)), torch.tensor(math.log(self.count / len(data.trained_items)), device=device))
        batch.negatives, batch.negative_ids = data.items.gather(ids), ids
        batch.log_q, batch.negative_log_q = mixed_log_q[batch.candidate_ids], mixed_log_q[ids]


@dataclass
class ImpressionNegatives:
    """Up to ``count`` items shown in the impression of each row's click but not clicked, negatives of that row alone."""

    count: int

    def check(self, data: Prepared) -> None:
        if data.impressions is None or data.train_pairs is None:
            raise ValueError(f"impression_negatives={self.count}: the source records no impressions (see twotower.data.impressions); set it to 0")

    def __call__(self, batch: Batch, data: Prepared, rows: torch.Tensor | None) -> None:
        negatives, padding = data.impressions.skipped_items(data.impressions.of_train_pair[rows], self.count)  # (B, M)
        gathered = data.items.gather(negatives.reshape(-1))
        batch.row_negatives = {k: v.view(*negatives.shape, *v.shape[1:]) for k, v in gathered.items()}  # (B, M, ...)
        batch.row_negatives_mask = padding
        batch.row_negatives_log_q = data.item_log_q[negatives]  # (B, M)


@dataclass
class IdDropout:
    """A ``rate`` share of identity features (ids) replaced by out-of-vocabulary, so content learns to stand in for them (cold start)."""

    rate: float

    def check(self, data: Prepared) -> None:
        if not any(fitted.kind.identity for side in ("query", "candidate") for fitted in data.preprocessor.side(side).values()):
            raise ValueError(f"id_dropout={self.rate}: no feature is an id (data.use_ids=false drops them), so none would be dropped; set it to 0")

    def __call__(self, batch: Batch, data: Prepared, rows: torch.Tensor | None) -> None:
        for features, side in ((batch.query, "query"), (batch.candidate, "candidate"), (batch.negatives, "candidate"), (batch.row_negatives, "candidate")):
            if features is None:
                continue
            for name, fitted in data.preprocessor.side(side).items():
                if fitted.kind.identity:
                    ids = features[name]
                    features[name] = ids.masked_fill(torch.rand(ids.shape, device=ids.device) < self.rate, 0)


@dataclass
class NewUsers:
    """A ``rate`` share of rows shown as a first-time user: every query feature a user only has after
    interacting (ids, histories) on its missing path, so profile features learn to carry new users."""

    rate: float

    def check(self, data: Prepared) -> None:
        query = data.preprocessor.query
        if not any(fitted.kind.identity or fitted.kind.from_interactions for fitted in query.values()):
            raise ValueError(f"new_user_rate={self.rate}: the query side reads no id or history (features: {', '.join(query)}), "
                             "so every row already reads as a new user's; set it to 0")

    def __call__(self, batch: Batch, data: Prepared, rows: torch.Tensor | None) -> None:
        new = torch.rand(len(batch), device=batch.candidate_ids.device) < self.rate  # (B,)
        for name, fitted in data.preprocessor.query.items():
            if fitted.kind.identity or fitted.kind.from_interactions:
                fitted.kind.forget(batch.query, name, new)


@dataclass
class KnownPositives:
    """No item the user has in the training split is a negative of that user's rows (batches carry ``known_items``).

    Their count varies per batch, so on a GPU gathering them waits for the host once per step.
    """

    def check(self, data: Prepared) -> None:
        if data.train_pairs is None:
            raise ValueError("mask_known_positives needs every user's training items in memory; streamed interactions keep only the "
                             "evaluation sample's (use loss.mask_accidental_hits, which needs none)")

    def __call__(self, batch: Batch, data: Prepared, rows: torch.Tensor | None) -> None:
        batch.known_items = torch.stack(data.known["val"].gather(batch.query_ids))  # (2, nnz): train items of each row's user


def build_steps(num_negatives: int = 0, impression_negatives: int = 0, id_dropout: float = 0.0, new_user_rate: float = 0.0,
                mask_known_positives: bool = False) -> list[BatchStep]:
    """The steps the data module's arguments switch on, in the order they must run."""
    steps: list[BatchStep] = []
    if num_negatives:
        steps.append(SampledNegatives(num_negatives))
    if impression_negatives:
        steps.append(ImpressionNegatives(impression_negatives))
    if id_dropout:
        steps.append(IdDropout(id_dropout))
    if new_user_rate:
        steps.append(NewUsers(new_user_rate))
    if mask_known_positives:
        steps.append(KnownPositives())
    return steps


