"""The popularity prior: counts, scores and weights by hand, the validation's choice, and an export that serves the blend it was validated with."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests import readme_data
from tests.export_fixtures import export_config
from tests.tamper import edit_npz, resign
from twotower import Retriever
from twotower.artifact import ITEM_EVENTS, MANIFEST
from twotower.artifact_checks import ArtifactError
from twotower.exporting import export, find_checkpoint, load_checkpoint
from twotower.module import TwoTowerModule, _Evaluation
from twotower.task.popularity_prior import DAY, PopularityPrior
from twotower.training import train


def test_counts_halve_with_age_and_scores_are_standardised_log_counts():
    prior = PopularityPrior(1.0, half_life_days=10.0)
    items, times = np.array([0, 0, 1]), np.array([0.0, 10 * DAY, 10 * DAY])
    # Ages 10, 0 and 0 days at the log's end: item 0 counts 0.5 + 1, item 1 counts 1, item 2 nothing.
    np.testing.assert_allclose(prior.counts(items, times, 3), [1.5, 1.0, 0.0])
    np.testing.assert_allclose(prior.counts(items, times, 3, now=20 * DAY), [0.25 + 0.5, 0.5, 0.0])
    np.testing.assert_allclose(PopularityPrior(1.0).counts(items, None, 3), [2.0, 1.0, 0.0])
    z, new = PopularityPrior.item_scores(np.array([1.5, 1.0, 0.0]))
    logs = np.log1p([1.5, 1.0, 0.0])
    np.testing.assert_allclose(z, (logs - logs.mean()) / logs.std(), rtol=1e-6)
    assert new == pytest.approx(-logs.mean() / logs.std(), rel=1e-6)  # an item no one interacted with: log1p(0) = 0
    assert PopularityPrior.item_scores(np.ones(4))[0].tolist() == [0.0] * 4  # nothing to tell the items apart
    with pytest.raises(ValueError, match=r"half_life_days=10.0 weighs interactions by their age, and the interactions have no times"):
        prior.counts(items, None, 3)


def test_weights_fall_with_what_is_known_of_the_user():
    known = torch.tensor([0, 4, 12])
    assert PopularityPrior(2.0, signal=4.0).user_weights(known).tolist() == [2.0, 1.0, 0.5]
    assert PopularityPrior(2.0).user_weights(known).tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize(("data", "match"), [
    ({"weight": -1.0, "signal": None, "half_life_days": None}, r"weight=-1.0 must be a finite number >= 0"),
    ({"weight": 1.0, "signal": 0, "half_life_days": None}, r"signal=0 must be a finite number > 0"),
    ({"weight": 1.0, "signal": None, "half_life_days": math.inf}, r"half_life_days=inf must be a finite number > 0"),
    ({"weight": True, "signal": None, "half_life_days": None}, r"weight=True must be a finite number"),
    ({"weight": 1.0}, r"a popularity prior is \{weight, signal, half_life_days\}"),
])
def test_bad_priors_are_refused_naming_the_field(data, match):
    with pytest.raises(ValueError, match=match):
        PopularityPrior.from_json(data)


@pytest.mark.parametrize("setting", [{"popularity_prior_signal": 3.0}, {"popularity_prior_half_life_days": 30.0}])
def test_prior_settings_without_a_prior_weight_are_refused(setting):
    """module.popularity_prior_half_life_days=30 (or _signal) with the default weights [0.0] shaped a prior that no
    validation blends in: accepted, and nothing changed."""
    name, value = next(iter(setting.items()))
    with pytest.raises(ValueError, match=rf"{name}={value} shapes the popularity prior, but popularity_prior_weights=\[0.0\] "
                                         r"has no weight above 0: add one \(module.popularity_prior_weights=\[0.0,0.5\]\)"):
        TwoTowerModule(torch.nn.Linear(1, 1), torch.optim.Adam, **setting)
    TwoTowerModule(torch.nn.Linear(1, 1), torch.optim.Adam, popularity_prior_weights=[0.0, 0.5], **setting)


class _Ranking(_Evaluation):
    """An evaluation whose metrics are given."""

    def __init__(self, prior: PopularityPrior, values: dict[str, float]):
        self.prior, self.values = prior, values

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: torch.tensor(value) for name, value in self.values.items()}


@pytest.mark.parametrize(("mode", "recalls", "kept"), [
    ("max", [0.10, 0.30, 0.20], 1.0),
    ("min", [0.10, 0.30, 0.20], 0.0),
    ("max", [0.30, 0.30, 0.20], 0.0),  # a tie keeps the earlier candidate
])
def test_validation_keeps_the_weight_with_the_best_monitored_metric(mode, recalls, kept):
    module = TwoTowerModule(torch.nn.Linear(1, 1), torch.optim.SGD, popularity_prior_weights=[0.0, 1.0, 2.0], monitor="val/recall@20", monitor_mode=mode)
    module._evaluations = [_Ranking(p, {"recall@20": r, "ndcg@10": 0.5}) for p, r in zip(module.prior_candidates, recalls)]
    logged = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, float(value))
    module._log_metrics("val")
    assert module.popularity_prior.weight == kept
    assert logged["val/popularity_prior"] == kept and logged["val/recall@20"] == pytest.approx(recalls[[0.0, 1.0, 2.0].index(kept)])
    module._evaluations = [_Ranking(p, {"ndcg@10": 0.5}) for p in module.prior_candidates]
    with pytest.raises(ValueError, match=r"monitor 'val/recall@20' is not a val metric \(ndcg@10\)"):
        module._log_metrics("val")


def test_an_exported_prior_serves_the_blend_it_was_validated_with(tmp_path, compose_cfg):
    paths = readme_data.write_own_tables(tmp_path)
    cfg = compose_cfg("data=tables", f"data.source.interactions={paths['clicks']}", f"data.source.users={paths['users']}",
                      f"data.source.items={paths['items']}", "data.batch_size=128", "logger=none", "trainer.max_epochs=1", "test=false",
                      "trainer.enable_progress_bar=false", "callbacks=none", "module.popularity_prior_weights=[0.7]",
                      "module.popularity_prior_signal=3", "module.popularity_prior_half_life_days=2")
    metrics, objects = train(cfg)
    assert metrics["val/popularity_prior"] == pytest.approx(0.7)
    artifact = export(export_config(tmp_path, tmp_path / "artifact", "flat"))
    assert json.loads((artifact / MANIFEST).read_text())["popularity_prior"] == {"weight": 0.7, "signal": 3.0, "half_life_days": 2.0}
    retriever = Retriever.load(artifact)
    model, _, _ = load_checkpoint(find_checkpoint(tmp_path))
    data = objects["datamodule"].serving_data()
    prior = retriever.prior
    z, new = PopularityPrior.item_scores(prior.counts(data.log.event_items, data.log.event_times, len(data.item_ids)))
    with torch.no_grad():
        items = model.encode_candidate(data.item_features).numpy()
    assert retriever.dim == items.shape[1] + 1
    np.testing.assert_allclose(retriever.item_vectors[:, -1], z, atol=1e-6)

    # Known users: the towers' score plus their weight (fewer items known: more weight) times each item's popularity.
    users = data.user_ids[:5].tolist()
    served = retriever.recommend(users, k=len(data.item_ids))
    queries = retriever.encode_queries(retriever._query_inputs({k: torch.from_numpy(v[:5]) for k, v in retriever.user_features.items()},
                                                               {k: torch.from_numpy(v[:5]) for k, v in retriever.histories.items()}))
    for row in range(5):
        seen = retriever._seen_of(row)
        weight = 0.7 / (1 + len(seen) / 3.0)
        scores = items @ queries[row] + weight * z
        scores[seen] = -np.inf
        order = np.argsort(-scores, kind="stable")[: len(data.item_ids) - len(seen)]
        np.testing.assert_allclose(served.scores[row][: len(order)], scores[order], atol=1e-5)

    # Similar items by the towers alone; an added item has the popularity of one no one interacted with.
    similar = retriever.similar_items(data.item_ids[0], k=3)
    cosines = items @ items[0]
    cosines[0] = -np.inf
    np.testing.assert_allclose(similar.scores[0], np.sort(cosines)[::-1][:3], atol=1e-5)
    retriever.add_items(retriever.items.iloc[[0]].assign(item_id="brand-new"))
    assert retriever.item_vectors[-1, -1] == pytest.approx(new)

    # A log that does not give the stored popularity is refused.
    events = dict(np.load(artifact / ITEM_EVENTS))
    edit_npz(artifact / ITEM_EVENTS, items=np.roll(events["items"], 7), times=events["times"])
    resign(artifact)
    with pytest.raises(ArtifactError, match=r"popularity column is .* the popularity prior of manifest.json gives .* from item_events"):
        Retriever.load(artifact)


def test_a_recency_weighted_prior_on_data_without_times_is_refused_before_training(tmp_path, compose_cfg):
    paths = readme_data.write_own_tables(tmp_path)
    cfg = compose_cfg("data=tables", f"data.source.interactions={paths['clicks']}", f"data.source.users={paths['users']}",
                      f"data.source.items={paths['items']}", "data.source.timestamp=null", "protocol=random", "logger=none",
                      "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "callbacks=none",
                      "module.popularity_prior_weights=[0.0,1.0]", "module.popularity_prior_half_life_days=30")
    with pytest.raises(ValueError, match=r"popularity_prior_half_life_days=30 weighs interactions by their age, and this source keeps no "
                                         r"interaction times: set it to null"):
        train(cfg)
    assert not list(tmp_path.glob("**/*.ckpt"))  # refused before the first epoch


def test_sample_recommendations_rank_with_the_prior_validation_kept(tmp_path, compose_cfg):
    """sample_recommendations.csv said it ranked as the validation does, but ranked by the towers alone: with a prior
    kept (as export serves it) its top 10 were neither the validated nor the served ones."""
    import pandas as pd

    from twotower.task.retrieval import encode_catalogue

    cfg = compose_cfg("data=synthetic", "data.source.n_users=100", "logger=none", "trainer.max_epochs=1", "test=false",
                      "trainer.enable_progress_bar=false", "module.popularity_prior_weights=[3.0]")
    metrics, objects = train(cfg)
    assert metrics["val/popularity_prior"] == pytest.approx(3.0)
    module, dm = objects["module"], objects["datamodule"]
    table = pd.read_csv(tmp_path / "sample_recommendations.csv", dtype={"user_id": str, "item_id": str})
    users = dm.prepared.eval_users["val"][:5]
    batch = dm.eval_batch(users, "val")
    with torch.no_grad():
        items = encode_catalogue(module.model.encode_candidate, dm.catalogue()).numpy()  # (n_items, D)
        queries = module.model.encode_query(batch.query).numpy()  # (5, D)
    z, _ = PopularityPrior.item_scores(PopularityPrior(3.0).counts(*dm.data.known_events["val"], len(items)))
    scores = queries @ items.T + 3.0 * z  # (5, n_items): every validation user weighs the prior alike (no signal)
    scores[batch.exclude[0].numpy(), batch.exclude[1].numpy()] = -np.inf  # known (training) items, as validation
    for row, user in enumerate(users.tolist()):
        shown = table[table["user_id"] == dm.prepared.user_rows[user]].sort_values("rank")
        np.testing.assert_allclose(shown["score"].to_numpy(), np.sort(scores[row])[::-1][:10], atol=1e-4)
