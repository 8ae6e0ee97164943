"""What a deployed model would have done on logged impressions: hand-built impressions, brute force, a MIND set."""
import itertools
import math

import numpy as np
import pytest
import torch

from twotower.task.logged_impressions import hit_rates, interleave, mean_interval, replay_clicks, team_draft_credit

# Impression 0: scores 0.9 (click) 0.3 0.1 -> the top item is the click.
# Impression 1: scores 0.2, 0.8 (click) -> the top item is the click.
# Impression 2: scores 0.5 (click) 0.5 0.5 0.1 (click) -> three tied at the top, one of them clicked.
SCORES = torch.tensor([0.9, 0.3, 0.1, 0.2, 0.8, 0.5, 0.5, 0.5, 0.1])
LABELS = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0, 1])
IMPRESSIONS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])


def test_hit_rates_by_hand_with_a_tie_at_the_top():
    rates = hit_rates(SCORES, LABELS, IMPRESSIONS, ks=(1, 2, 3))
    # Impression 2, top 1: one of the three tied items at random, one clicked -> 1/3.
    # Top 2: two of the three; both skips with probability C(2, 2) / C(3, 2) = 1/3 -> 2/3. Top 3: the whole run -> 1.
    assert rates[1].tolist() == pytest.approx([1, 1, 1 / 3])
    assert rates[2].tolist() == pytest.approx([1, 1, 2 / 3])
    assert rates[3].tolist() == pytest.approx([1, 1, 1])  # impression 1 has only 2 items: its whole list


def test_replay_clicks_by_hand():
    out = replay_clicks(SCORES, LABELS, IMPRESSIONS, ks=(1, 2))
    # Model top 1: (1 + 1 + 1/3) / 3 = 7/9. A random shown item: click shares 1/3, 1/2, 2/4 -> 4/9.
    # A random top 2: 1 - C(2,2)/C(3,2) = 2/3, 1, 1 - C(2,2)/C(4,2) = 5/6 -> 5/6.
    assert out["hit_rate@1"].value == pytest.approx(7 / 9)
    assert out["random_hit_rate@1"].value == pytest.approx(4 / 9)
    assert out["random_hit_rate@2"].value == pytest.approx(5 / 6)
    assert out["hit_rate@2"].value == pytest.approx(8 / 9)
    # Lift@1 per impression: 2/3, 1/2, -1/6 -> mean 1/3, sample sd sqrt(7)/6, standard error sqrt(7)/6/sqrt(3) = 0.254588;
    # 1/3 -/+ 1.959964 * 0.254588 = [-0.165649, 0.832316].
    lift = out["lift@1"]
    assert (lift.value, lift.low, lift.high) == pytest.approx((1 / 3, -0.165649, 0.832316), abs=1e-6)
    # Rates are clipped to [0, 1]: hit_rate@2's interval would pass 1.
    assert out["hit_rate@2"].high == 1.0 and out["hit_rate@2"].low < 8 / 9


def test_hit_rates_match_every_tie_breaking_order_averaged():
    rng = np.random.default_rng(0)
    scores, labels, impressions, expected = [], [], [], {1: [], 2: [], 3: []}
    for g in range(25):
        n = int(rng.integers(1, 6))
        s = rng.integers(0, 3, n).astype(float)  # coarse: many ties
        y = (rng.random(n) < 0.4).astype(int)
        for k in expected:
            # A uniformly random order of the entries, then a stable sort by score: ties in random order.
            hits = [y[sorted(perm, key=lambda j: -s[j])[:k]].any() for perm in itertools.permutations(range(n))]
            expected[k].append(np.mean(hits))
        scores.append(s), labels.append(y), impressions.append(np.full(n, g))
    rates = hit_rates(*(torch.from_numpy(np.concatenate(x)) for x in (scores, labels, impressions)), ks=(1, 2, 3))
    for k, values in expected.items():
        assert rates[k].numpy() == pytest.approx(values, abs=1e-12)


def test_identical_rankings_tie_on_every_impression():
    for depth in (None, 1, 2):
        result = interleave(SCORES, SCORES.clone(), LABELS, IMPRESSIONS, depth=depth, seed=3)
        assert (result.wins_a, result.wins_b, result.ties, result.impressions) == (0, 0, 3, 3)
        assert (result.preference.value, result.preference.low, result.preference.high, result.p_value) == (0.0, -1.0, 1.0, 1.0)


def test_clicks_first_beats_clicks_last_on_every_impression_with_a_click():
    # Impressions 0 and 1 have one click each, impression 2 none; A ranks the clicks first, B last.
    labels = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    impressions = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    scores_a = labels + torch.linspace(0, 0.1, 11)
    result = interleave(scores_a, -labels.double(), labels, impressions)
    assert (result.wins_a, result.wins_b, result.ties) == (2, 0, 1)
    assert result.as_dict()["won_by_a"] == pytest.approx(2 / 3) and result.as_dict()["ties"] == pytest.approx(1 / 3)
    # Wilson's interval for 2 wins in 2, z = 1.959964: centre (1 + z^2/4) / (1 + z^2/2) = 0.671188,
    # half-width (z^2/4) / (1 + z^2/2) = 0.328812 -> p in [0.342380, 1] -> preference 2p - 1 in [-0.315240, 1].
    assert (result.preference.value, result.preference.low, result.preference.high) == pytest.approx((1.0, -0.315240, 1.0), abs=1e-6)
    assert result.p_value == pytest.approx(0.5)  # two-sided sign test: 2 * (1/2)^2


def test_an_item_both_teams_pick_in_the_same_round_is_credited_to_neither():
    # One impression: items c (clicked), s1, s2. A ranks c, s1, s2; B ranks c, s2, s1 -> both take c in round 1.
    labels = torch.tensor([1, 0, 0])
    credit = team_draft_credit(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([3.0, 1.0, 2.0]), labels, torch.zeros(3, dtype=torch.long))
    assert [c.tolist() for c in credit] == [[0.0], [0.0]]
    # B ranks s1, c, s2 instead: round 1 A takes c, B takes s1 -> the click is A's.
    credit = team_draft_credit(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([2.0, 3.0, 1.0]), labels, torch.zeros(3, dtype=torch.long))
    assert [c.tolist() for c in credit] == [[1.0], [0.0]]


def test_with_one_place_shown_the_coin_decides_and_the_seed_fixes_it():
    # 400 copies of that impression, one place shown: A wins where its coin comes up first, else s1 is shown, a tie.
    copies = 400
    labels = torch.tensor([1, 0, 0]).repeat(copies)
    impressions = torch.arange(copies).repeat_interleave(3)
    scores_a, scores_b = torch.tensor([3.0, 2.0, 1.0]).repeat(copies), torch.tensor([2.0, 3.0, 1.0]).repeat(copies)
    first = interleave(scores_a, scores_b, labels, impressions, depth=1, seed=7)
    assert first.wins_b == 0 and 0.4 < first.wins_a / copies < 0.6
    assert interleave(scores_a, scores_b, labels, impressions, depth=1, seed=7) == first
    assert interleave(scores_a, scores_b, labels, impressions, depth=None, seed=7).wins_a == copies  # the whole list: always A's


def reference_team_draft(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """One impression, whole list, distinct scores: each round both teams take their best free item."""
    rank_a, rank_b = list(np.argsort(-scores_a)), list(np.argsort(-scores_b))
    owner, free = {}, set(range(len(labels)))
    while free:
        a, b = next(j for j in rank_a if j in free), next(j for j in rank_b if j in free)
        owner.update({a: 0} if a == b else {a: 1, b: 2})
        free -= {a, b}
    return sum(int(labels[j]) for j, t in owner.items() if t == 1), sum(int(labels[j]) for j, t in owner.items() if t == 2)


def test_team_draft_matches_a_per_impression_loop():
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 40, 60)
    scores_a, scores_b = rng.random(sizes.sum()), rng.random(sizes.sum())
    labels = (rng.random(sizes.sum()) < 0.3).astype(int)
    impressions = np.repeat(rng.permutation(1000)[:60], sizes)  # arbitrary ids, entries grouped
    order = np.argsort(impressions[np.cumsum(sizes) - 1])  # torch.unique's order of the ids
    bounds = np.cumsum(sizes) - sizes
    expected = [reference_team_draft(*(x[bounds[i]:bounds[i] + sizes[i]] for x in (scores_a, scores_b, labels))) for i in order]
    clicks_a, clicks_b = team_draft_credit(*(torch.from_numpy(x) for x in (scores_a, scores_b, labels, impressions)))
    assert list(zip(clicks_a.int().tolist(), clicks_b.int().tolist())) == expected


def test_more_impressions_narrow_the_intervals():
    def widths(copies: int) -> tuple[float, float]:
        impressions = torch.arange(3 * copies).repeat_interleave(torch.tensor([3, 2, 4]).repeat(copies))
        scores, labels = SCORES.repeat(copies), LABELS.repeat(copies)
        lift = replay_clicks(scores, labels, impressions, ks=(1,))["lift@1"]
        preference = interleave(scores, torch.linspace(0, 1, len(scores)), labels, impressions).preference
        return lift.high - lift.low, preference.high - preference.low

    small, large = widths(10), widths(1000)
    assert large[0] == pytest.approx(small[0] * math.sqrt(29 / 2999), rel=1e-9)  # standard error ~ sd / sqrt(n)
    assert large[1] < small[1] / 5


def test_errors_name_the_thing_and_the_values():
    with pytest.raises(ValueError, match=r"scores_a 9, scores_b 8, labels 9, impressions 9"):
        team_draft_credit(SCORES, SCORES[:8], LABELS, IMPRESSIONS)
    with pytest.raises(ValueError, match=r"depth=0"):
        interleave(SCORES, SCORES, LABELS, IMPRESSIONS, depth=0)
    with pytest.raises(ValueError, match=r"k=0 in ks=\(0, 1\)"):
        hit_rates(SCORES, LABELS, IMPRESSIONS, ks=(0, 1))
    with pytest.raises(ValueError, match=r"at least 2 impressions, got 1"):
        mean_interval(torch.tensor([0.5]))


@pytest.fixture(scope="module")
def mind(tmp_path_factory):
    from twotower.data import TwoTowerDataModule
    from twotower.data.splits import PredefinedSplit
    from twotower.datasets.mind import MindSource
    from twotower.datasets.mind.generator import generate_mind

    path = tmp_path_factory.mktemp("mind")
    generate_mind(path, users=60, news=120, seed=0)
    features = {"query": [{"name": "history", "kind": "history", "max_len": 5, "through_item_tower": True}],
                "candidate": [{"name": "category", "kind": "categorical"}]}
    dm = TwoTowerDataModule(MindSource(str(path), seed=0), features, PredefinedSplit(), batch_size=32, seed=0)
    dm.setup("fit")
    return dm


def test_popularity_against_itself_and_a_random_scorer_on_a_generated_mind_set(mind):
    from twotower.datasets.mind.evaluation import popularity_scorer

    logged = mind.prepared.impressions
    item, impression, label = logged.entries["val"]
    user = logged.users["val"]
    popularity = popularity_scorer(mind)(user, item, impression)
    generator = torch.Generator().manual_seed(0)

    def random_scorer(users: torch.Tensor, items: torch.Tensor, impressions: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(items), generator=generator, dtype=torch.float64)

    random = random_scorer(user, item, impression)
    n_impressions = len(torch.unique(impression))

    same = interleave(popularity, popularity, label, impression)
    assert (same.ties, same.impressions, same.preference.value) == (n_impressions, n_impressions, 0.0)

    versus = interleave(popularity, random, label, impression)
    swapped = interleave(random, popularity, label, impression)
    assert versus.wins_a + versus.wins_b + versus.ties == n_impressions and versus.wins_a + versus.wins_b > 0
    assert (swapped.wins_a, swapped.wins_b) == (versus.wins_b, versus.wins_a)  # whole lists: the coins never matter
    assert interleave(popularity, random, label, impression, depth=3, seed=1) == interleave(popularity, random, label, impression, depth=3, seed=1)

    # A constant scorer is the random order; its top-1 rate is the log's mean click share.
    constant = replay_clicks(torch.zeros_like(popularity), label, impression)
    shares = [float(label[impression == i].double().mean()) for i in torch.unique(impression)]
    assert constant["hit_rate@1"] == constant["random_hit_rate@1"]
    assert constant["random_hit_rate@1"].value == pytest.approx(np.mean(shares), abs=1e-12)
    for name, estimate in replay_clicks(popularity, label, impression).items():
        assert estimate.low <= estimate.value <= estimate.high, name


def test_the_sign_test_is_the_exact_binomial_tail():
    from twotower.task.logged_impressions import sign_test

    assert sign_test(2, 2) == 0.5  # 2 x P(0 of 2) = 2 / 4
    assert sign_test(3, 10) == pytest.approx(2 * (1 + 10 + 45 + 120) / 1024)  # 2 x P(X <= 3), X ~ Bin(10, 1/2)
    assert sign_test(5, 10) == 1.0 and sign_test(0, 0) == 1.0
    stats = pytest.importorskip("scipy.stats")
    for successes, trials in [(450, 1000), (2400, 5000), (1312, 2230)]:  # thousands of impressions: no underflow
        assert sign_test(successes, trials) == pytest.approx(stats.binomtest(successes, trials).pvalue, rel=1e-9)
