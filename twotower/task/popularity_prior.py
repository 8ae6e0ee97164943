"""A popularity prior blended into the towers' scores, strongest for users the towers know least.

``score(u, i) = q_u · c_i + w(u) · z_i``: ``z_i`` is the item's popularity, the log of its (recency-weighted)
interaction count standardised over the catalogue; ``w(u) = weight / (1 + n_u / signal)`` falls with the
user's known interactions ``n_u`` (``signal=None``: the same weight for everyone). The weight is tuned on
validation (``TwoTowerModule``'s ``popularity_prior_weights``), not switched by hand: on a random split
it comes out 0, on a time cut, where what is watched next is what is popular now, it does not.

An in-batch softmax with the logQ correction learns popularity into the towers, but cosine scores
bounded by the temperature cannot reach the spread of log-popularity, and a recency-weighted count
knows what is popular at the data's end, which the towers saw only as one more slice of the log.

The blend is one more dimension of the vectors: ``[q_u, w(u)] · [c_i, z_i]``. So evaluation ranks with
the same ``rank``, and an exported index holds the augmented item vectors: any inner-product search
(the Retriever, FAISS directly) serves the blend exactly, the query side appending ``w(u)``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

DAY = 86400.0


@dataclass(frozen=True)
class PopularityPrior:
    """Attributes:
        weight: the prior's weight for a user with nothing known (0: no prior).
        signal: known interactions at which a user's weight is halved; None: the same weight for every user.
        half_life_days: an interaction's count halves every this many days before the log's end; None: plain counts.
    """

    weight: float
    signal: float | None = None
    half_life_days: float | None = None

    def __post_init__(self) -> None:
        for name, value, least in (("weight", self.weight, 0.0), ("signal", self.signal, None), ("half_life_days", self.half_life_days, None)):
            if value is None and name != "weight":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (value < 0 if least == 0.0 else value <= 0):
                raise ValueError(f"popularity prior: {name}={value!r} must be a finite number {'>= 0' if least == 0.0 else '> 0'}")

    @property
    def active(self) -> bool:
        return self.weight > 0

    def counts(self, items: np.ndarray, times: np.ndarray | None, n_items: int, now: float | None = None) -> np.ndarray:
        """(n_items,) float64 each catalogue row's interactions in the log of ``items`` (rows) at ``times``,
        each weighted ``0.5 ** (age / half_life)`` with ages counted back from ``now`` (default: the log's last time)."""
        weights = None
        if self.half_life_days is not None:
            if times is None:
                raise ValueError(f"popularity prior: half_life_days={self.half_life_days} weighs interactions by their age, and the "
                                 "interactions have no times (set half_life_days: null for plain counts)")
            end = (times.max() if len(times) else 0.0) if now is None else now
            weights = np.exp2(-np.maximum(end - times, 0.0) / (self.half_life_days * DAY))
        return np.bincount(items, weights=weights, minlength=n_items).astype(np.float64)

    @staticmethod
    def item_scores(counts: np.ndarray) -> tuple[np.ndarray, float]:
        """(n_items,) float32 ``z``: log1p of the counts, standardised over the catalogue (so ``weight`` is on the
        scale of the towers' cosines whatever the log's size), all zeros when every item counts the same; and
        the ``z`` of an item with no interaction (one added to the catalogue later)."""
        logs = np.log1p(counts)
        mean, std = float(logs.mean()) if len(logs) else 0.0, float(logs.std()) if len(logs) else 0.0
        if std == 0:
            return np.zeros(len(logs), dtype=np.float32), 0.0
        return ((logs - mean) / std).astype(np.float32), float(np.float32(-mean / std))

    def user_weights(self, known: torch.Tensor) -> torch.Tensor:
        """(U,) float32 ``w(u)`` of users with ``known`` (U,) interactions."""
        known = known.float()
        if self.signal is None:
            return torch.full_like(known, self.weight)
        return self.weight / (1.0 + known / self.signal)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PopularityPrior:
        if not isinstance(data, dict) or set(data) != {"weight", "signal", "half_life_days"}:
            raise ValueError(f"a popularity prior is {{weight, signal, half_life_days}}, not {data!r}")
        return cls(**data)


def with_column(vectors: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """(N, D) vectors and (N,) values -> (N, D + 1): the blend's extra dimension appended."""
    return torch.cat([vectors, column.to(vectors.dtype).unsqueeze(1)], dim=1)
