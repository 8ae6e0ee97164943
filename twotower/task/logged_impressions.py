"""What a deployed model would have done on logged impressions: its click-through, and two models interleaved.

AUC says how a model orders the shown items; a team deciding whether to ship asks how many more clicks
it brings. Both estimates here replay the log (the usual assumption of offline replay: a user clicks an
item when it is shown to them, wherever it is placed, exactly as the log records), with each impression
an independent unit for the 95% confidence intervals.

- ``replay_clicks``: showing only the model's top k of each impression's shown items, the share of
  impressions with a click among them (``hit_rate@1`` is the click-through of a one-slot deployment),
  next to the same share for a uniformly random order of the shown items (the log's own click share of a
  random shown item, for k = 1), and the lift between the two, paired impression by impression.
- ``interleave``: team-draft interleaving (Radlinski, Kurup and Joachims, CIKM 2008) of two models'
  rankings of each impression's shown items; each click is credited to the team that placed the item,
  the impression is won by the team with more credited clicks.

Every impression counts, clicked or not: one without a click is a miss for every ranker and a tie in
interleaving (the news-click benchmark's impressions all have a click).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch


@dataclass(frozen=True)
class Estimate:
    """A mean over impressions with its confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def mean_interval(values: torch.Tensor, confidence: float = 0.95, support: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """The mean of per-impression ``values`` and its normal-approximation interval, clipped to ``support``.

    The normal approximation, not a bootstrap: it is deterministic, costs one pass, and a mean of bounded
    values over the hundreds of impressions of any evaluation is close to normal. Clipping keeps a rate's
    interval inside [0, 1] where a few impressions make it wide.
    """
    if len(values) < 2:
        raise ValueError(f"a confidence interval needs at least 2 impressions, got {len(values)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    values = values.double()
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    mean, half = float(values.mean()), z * float(values.std()) / math.sqrt(len(values))
    return Estimate(mean, max(support[0], mean - half), min(support[1], mean + half))


def hit_rates(scores: torch.Tensor, labels: torch.Tensor, impressions: torch.Tensor, ks: tuple[int, ...] = (1, 3, 5)) -> dict[int, torch.Tensor]:
    """Per impression, the probability that the top ``k`` by ``scores`` hold a click, ties broken at random.

    Tied scores are common (a popularity ranker ties every item never clicked in training); breaking them
    by the log's order would credit the ranker with whatever order the log happened to have, so each tie
    run straddling the cut-off contributes its expected value. Taking r items at random from a tie run of m
    items, c of them clicked, misses every click with probability C(m - c, r) / C(m, r); the top k miss when
    every run misses (runs wholly above the cut-off have r = m, those below r = 0). A constant score makes
    the whole impression one run: the random ranker, whose ``k = 1`` value is the impression's click share.

    Args:
        scores, labels, impressions: (n,) each shown item's score, 1 where it was clicked, its impression id.
    Returns:
        ``{k: (I,) float64}`` in the order of ``torch.unique(impressions)``.
    """
    for k in ks:
        if k < 1:
            raise ValueError(f"k={k} in ks={ks} must be at least 1")
    scores, labels = scores.double(), labels.double()
    group = torch.unique(impressions, return_inverse=True)[1]  # (n,) 0..I-1
    n_groups = int(group.max()) + 1 if len(group) else 0
    size = torch.bincount(group, minlength=n_groups)
    start = torch.cumsum(size, 0) - size  # (I,) first position of each impression when sorted by group

    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(group[by_score], stable=True)]  # best first within each impression
    g, s = group[order], scores[order]
    new_run = torch.ones(len(g), dtype=torch.bool, device=scores.device)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run = torch.cumsum(new_run, 0) - 1  # (n,) tie run of each sorted entry
    m = torch.bincount(run).double()  # (R,) run lengths
    c = torch.bincount(run, weights=labels[order])  # (R,) clicks in each run
    run_group = g[new_run]
    run_rank = (torch.nonzero(new_run).squeeze(1) - start[run_group]).double()  # (R,) 0-based rank of the run's first item

    out = {}
    for k in ks:
        r = (k - run_rank).clamp(min=0).minimum(m)  # (R,) items taken from each run into the top k
        log_miss = torch.lgamma(m - c + 1) - torch.lgamma(m - c - r + 1) - torch.lgamma(m + 1) + torch.lgamma(m - r + 1)
        log_miss = torch.where(r > m - c, torch.full_like(m, -math.inf), log_miss)  # more taken than skips: a click is sure
        out[k] = 1.0 - torch.exp(torch.bincount(run_group, weights=log_miss, minlength=n_groups))
    return out


def replay_clicks(scores: torch.Tensor, labels: torch.Tensor, impressions: torch.Tensor, ks: tuple[int, ...] = (1, 3, 5),
                  confidence: float = 0.95) -> dict[str, Estimate]:
    """The click-through a model showing its top k of each impression's items would have had on the log.

    Returns:
        per k: ``hit_rate@k`` (the model's; ``hit_rate@1`` is the top-1 click-through), ``random_hit_rate@k``
        (a random order of the shown items; ``random_hit_rate@1`` is the log's mean click share) and
        ``lift@k`` (their difference, with the interval of the paired per-impression differences).
    """
    model = hit_rates(scores, labels, impressions, ks)
    random = hit_rates(torch.zeros_like(scores, dtype=torch.float64), labels, impressions, ks)
    out = {}
    for k in ks:
        out[f"hit_rate@{k}"] = mean_interval(model[k], confidence, (0.0, 1.0))
        out[f"random_hit_rate@{k}"] = mean_interval(random[k], confidence, (0.0, 1.0))
        out[f"lift@{k}"] = mean_interval(model[k] - random[k], confidence, (-1.0, 1.0))
    return out


def team_draft_credit(scores_a: torch.Tensor, scores_b: torch.Tensor, labels: torch.Tensor, impressions: torch.Tensor,
                      depth: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Team-draft interleaving of two rankings of each impression's shown items; the clicks credited to each team.

    Each round, both teams take their best item not yet in the interleaved list, a coin deciding which goes
    first. Where both would take the same item it enters once, credited to neither: the rankings agree there,
    so two identical rankers tie on every impression instead of splitting clicks by coin. Clicks count where
    the item lands within the first ``depth`` places of the interleaved list (None: the whole impression, as
    the log showed it all; then both picks of every round are shown and the coins never matter).

    Ties within a model's scores are broken by one seeded random order of the entries, the same for both
    models, so the log's order favours neither team and identical scorers rank identically.

    Args:
        scores_a, scores_b, labels, impressions: (n,) flat entries, as ``hit_rates``.
        depth: how many places of each interleaved list are shown.
        seed: of the tie-breaking order and the coins; the same seed gives the same credit.
    Returns:
        clicks credited to A and to B, each (I,) in the order of ``torch.unique(impressions)``.
    """
    if len(scores_a) != len(scores_b) or len(scores_a) != len(labels) or len(labels) != len(impressions):
        raise ValueError(f"entries must align: scores_a {len(scores_a)}, scores_b {len(scores_b)}, labels {len(labels)}, impressions {len(impressions)}")
    if depth is not None and depth < 1:
        raise ValueError(f"depth={depth} must be at least 1 (or None for the whole impression)")
    device = scores_a.device
    generator = torch.Generator().manual_seed(seed)
    group = torch.unique(impressions, return_inverse=True)[1]  # (n,) 0..I-1
    n_groups = int(group.max()) + 1 if len(group) else 0
    size = torch.bincount(group, minlength=n_groups)
    start = torch.cumsum(size, 0) - size
    width = int(size.max()) if n_groups else 0
    grouped = torch.argsort(group, stable=True)
    slot = torch.empty_like(group)
    slot[grouped] = torch.arange(len(group), device=device) - start[group[grouped]]  # (n,) place of each entry in its row

    tie_break = torch.randperm(len(group), generator=generator).to(device)

    def ranking(scores: torch.Tensor) -> torch.Tensor:
        """(I, width) slots of each impression's items, best first; padding (slot 0) after the real ones."""
        by_score = tie_break[torch.argsort(scores[tie_break], descending=True, stable=True)]
        order = by_score[torch.argsort(group[by_score], stable=True)]
        table = torch.zeros(n_groups, width, dtype=torch.long, device=device)
        column = torch.arange(len(order), device=device) - start[group[order]]  # (n,) 0-based rank within the impression
        table[group[order], column] = slot[order]
        return table

    rank_a, rank_b = ranking(scores_a), ranking(scores_b)
    limit = size if depth is None else size.clamp(max=depth)  # (I,) places shown
    coins = torch.rand(n_groups, width, generator=generator).to(device) < 0.5  # (I, rounds) True: A picks first
    taken = torch.zeros(n_groups, width, dtype=torch.bool, device=device)
    team = torch.zeros(n_groups, width, dtype=torch.long, device=device)  # 0 neither, 1 A, 2 B
    filled = torch.zeros(n_groups, dtype=torch.long, device=device)
    pointer_a, pointer_b = filled.clone(), filled.clone()

    def next_free(pointer: torch.Tensor, rank: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        """Moves each live row's pointer past the items already taken; returns the slots it points at.
        Pointers only move forward, and a live row still has a free real item, so they stop before padding."""
        pending = live
        while len(pending):
            pending = pending[taken[pending, rank[pending, pointer[pending]]]]
            pointer[pending] += 1
        return rank[live, pointer[live]]

    def place(live: torch.Tensor, item: torch.Tensor, owner: torch.Tensor) -> None:
        taken[live, item] = True
        team[live, item] = owner
        filled[live] += 1

    # A loop over rounds, each on the impressions still filling only: one long impression costs its own rounds, not everyone's.
    for round_ in range(width):
        live = torch.nonzero(filled < limit).squeeze(1)  # (L,) rows still filling
        if len(live) == 0:
            break
        a, b = next_free(pointer_a, rank_a, live), next_free(pointer_b, rank_b, live)  # (L,) each team's pick, as slots
        shared = a == b
        a_first = coins[live, round_]
        first, second = torch.where(a_first, a, b), torch.where(a_first, b, a)
        place(live, first, torch.where(shared, 0, torch.where(a_first, 1, 2)))
        second_shown = ~shared & (filled[live] < limit[live])  # a shared pick, or the depth reached, ends the round
        place(live[second_shown], second[second_shown], torch.where(a_first, 2, 1)[second_shown])

    credited = team[group, slot]  # (n,) the team of each entry
    labels = labels.double()
    clicks_a = torch.bincount(group, weights=labels * (credited == 1), minlength=n_groups)
    clicks_b = torch.bincount(group, weights=labels * (credited == 2), minlength=n_groups)
    return clicks_a, clicks_b


@dataclass(frozen=True)
class Interleaving:
    """Impressions won by each model, and the preference for A: (wins_a - wins_b) / (wins_a + wins_b).

    The preference's interval is Wilson's score interval for the share of A's wins among the impressions
    someone won, mapped to 2p - 1; ``p_value`` is the two-sided sign test of no preference. With no
    impression won the preference is 0 on [-1, 1]: no evidence either way.
    """

    impressions: int
    wins_a: int
    wins_b: int
    ties: int
    preference: Estimate
    p_value: float

    def as_dict(self) -> dict[str, float | int | dict[str, float]]:
        n = max(1, self.impressions)
        return {"impressions": self.impressions, "won_by_a": self.wins_a / n, "won_by_b": self.wins_b / n, "ties": self.ties / n,
                "preference_for_a": self.preference.as_dict(), "p_value": self.p_value}


def sign_test(successes: int, trials: int) -> float:
    """Exact two-sided sign test: P(a split at least as uneven as ``successes`` of ``trials`` under p = 1/2).

    By symmetry it is twice the lower tail, summed in log space (thousands of impressions underflow a
    plain 2**-n); written here rather than taken from scipy, which only the bench extra brings.
    """
    low = min(successes, trials - successes)
    if 2 * low >= trials:
        return 1.0
    logs = [math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1) - trials * math.log(2.0) for i in range(low + 1)]
    top = max(logs)
    return min(1.0, 2.0 * math.exp(top) * sum(math.exp(x - top) for x in logs))


def interleave(scores_a: torch.Tensor, scores_b: torch.Tensor, labels: torch.Tensor, impressions: torch.Tensor,
               depth: int | None = None, seed: int = 0, confidence: float = 0.95) -> Interleaving:
    """Team-draft interleaving of models A and B on every impression (see ``team_draft_credit``), summarised."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    clicks_a, clicks_b = team_draft_credit(scores_a, scores_b, labels, impressions, depth, seed)
    wins_a, wins_b = int((clicks_a > clicks_b).sum()), int((clicks_b > clicks_a).sum())
    decided = wins_a + wins_b
    if decided == 0:
        return Interleaving(len(clicks_a), 0, 0, len(clicks_a), Estimate(0.0, -1.0, 1.0), 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = wins_a / decided
    centre = (p + z * z / (2 * decided)) / (1 + z * z / decided)
    half = z * math.sqrt(p * (1 - p) / decided + z * z / (4 * decided * decided)) / (1 + z * z / decided)
    preference = Estimate((wins_a - wins_b) / decided, max(-1.0, 2 * (centre - half) - 1), min(1.0, 2 * (centre + half) - 1))
    return Interleaving(len(clicks_a), wins_a, wins_b, len(clicks_a) - decided, preference, sign_test(wins_a, decided))
