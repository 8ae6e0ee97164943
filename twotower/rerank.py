"""Second stage: re-rank the candidates the ANN index fetched, for relevance and diversity.

The retriever fetches ``fetch`` candidates per query, re-scores them exactly with the stored
item vectors (undoing PQ / IVF approximation), and then picks ``k`` of them:

- ``none``: by exact score.
- ``mmr``: maximal marginal relevance (Carbonell & Goldstein, 1998): each step takes the item
  maximising ``trade_off * score - (1 - trade_off) * max similarity to the items already taken``.
- ``dpp``: greedy MAP inference of a determinantal point process (Chen et al., 2018): each step
  takes the item that most increases ``log det L_S`` of the kernel ``L = diag(r) S diag(r)``, with
  ``S`` the items' cosine similarities and ``r = exp(alpha * score)``, ``alpha = trade_off / (2 (1 - trade_off))``,
  so the log-det trades the items' summed relevance against the "volume" they span.

``trade_off = 1`` is pure relevance for both; lower values buy diversity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("none", "mmr", "dpp")


@dataclass(frozen=True)
class Rerank:
    """Args:
        method: one of ``METHODS``.
        fetch: candidates fetched from the index per query before re-ranking.
        trade_off: relevance weight in [0, 1]; 1 = relevance only.
    """

    method: str = "mmr"
    fetch: int = 100
    trade_off: float = 0.7

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ValueError(f"rerank method {self.method!r} is not one of {', '.join(METHODS)}")
        # Types first: a string or bool compares (or fails to) in ways that would surface only mid-query.
        if isinstance(self.fetch, (bool, np.bool_)) or not isinstance(self.fetch, (int, np.integer)) or self.fetch < 1:
            raise ValueError(f"rerank fetch={self.fetch!r} must be a positive integer")
        if isinstance(self.trade_off, (bool, np.bool_)) or not isinstance(self.trade_off, (int, float, np.integer, np.floating)) \
                or not 0.0 <= self.trade_off <= 1.0:  # NaN fails the range too
            raise ValueError(f"rerank trade_off={self.trade_off!r} must be a number in [0, 1]")

    def select(self, scores: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
        """Positions of the ``k`` chosen candidates, in order, from exact ``scores`` (N,) and unit ``vectors`` (N, d)."""
        if self.method == "mmr":
            return mmr(scores, vectors, k, self.trade_off)
        if self.method == "dpp":
            return dpp(scores, vectors, k, self.trade_off)
        return np.argsort(-scores, kind="stable")[:k]


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, trade_off: float) -> np.ndarray:
    """Greedy maximal marginal relevance; ties go to the earlier candidate."""
    n = len(scores)
    k = min(k, n)
    similarity = vectors @ vectors.T  # (N, N)
    chosen: list[int] = []
    max_sim = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(k):
        redundancy = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = np.where(available, trade_off * scores - (1 - trade_off) * redundancy, -np.inf)
        best = int(np.argmax(gain))
        chosen.append(best)
        available[best] = False
        max_sim = np.maximum(max_sim, similarity[best])
    return np.asarray(chosen, dtype=np.int64)


def dpp(scores: np.ndarray, vectors: np.ndarray, k: int, trade_off: float, eps: float = 1e-10) -> np.ndarray:
    """Greedy log-det maximisation with incremental Cholesky updates, O(N k^2) (Chen et al., 2018, Alg. 1).

    ``d2[i]`` is the gain in ``det L_S`` from adding ``i``: the squared residual of ``i`` after
    projecting out the chosen items. Stops early when no candidate adds volume (gain <= eps).
    """
    if trade_off >= 1.0:  # alpha = inf: relevance only
        return np.argsort(-scores, kind="stable")[:k]
    n = len(scores)
    k = min(k, n)
    alpha = trade_off / (2.0 * (1.0 - trade_off))
    # Centre the scores: exp(alpha * score) stays finite and the argmax is unchanged (a common scale of r).
    r = np.exp(alpha * (scores - scores.max()))
    kernel = r[:, None] * (vectors @ vectors.T) * r[None, :]  # (N, N)
    d2 = np.diag(kernel).copy()
    c = np.zeros((k, n))
    chosen: list[int] = []
    for step in range(k):
        best = int(np.argmax(d2))
        if d2[best] <= eps:
            break
        chosen.append(best)
        e = (kernel[best] - c[:step].T @ c[:step, best]) / np.sqrt(d2[best])  # (N,)
        c[step] = e
        d2 = d2 - e**2
        d2[chosen] = -np.inf
    if len(chosen) < k:
        # The remaining candidates add no volume (duplicates of chosen ones): fill by score.
        rest = [i for i in np.argsort(-scores, kind="stable") if i not in set(chosen)]
        chosen += rest[: k - len(chosen)]
    return np.asarray(chosen, dtype=np.int64)
