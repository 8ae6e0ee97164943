"""Everything that trains also exports and serves: every data configuration, through one ``Retriever.load``.

For each: a tiny training run, ``export``, ``Retriever.load``, and for the same users the served top-K
(an exact index) equals a brute-force ranking of the checkpoint's towers over the data module's own
tensors (ties tolerated); a visitor known only by clicks is served through the same history path.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import readme_data
from tests.export_fixtures import export_config
from twotower import Retriever
from twotower.artifact import QUERY_ONNX, QUERY_PROGRAM
from twotower.datasets.mind.generator import generate_mind
from twotower.exporting import export, find_checkpoint, load_checkpoint
from twotower.query_inputs import query_inputs
from twotower.task.popularity_prior import PopularityPrior, with_column
from twotower.task.retrieval import encode_catalogue, rank
from twotower.training import train

K = 10
TINY = ["logger=none", "trainer.max_epochs=1", "test=false", "trainer.enable_progress_bar=false", "callbacks=none"]


def _movielens(root):
    return ["data=movielens", f"data.source.path={readme_data.write_movielens(root / 'ml-100k')}", "data.batch_size=2048"]


def _tables(root):
    paths = readme_data.write_own_tables(root)
    return ["data=tables", f"data.source.interactions={paths['clicks']}", f"data.source.users={paths['users']}",
            f"data.source.items={paths['items']}", "data.batch_size=128"]


def _synthetic(root):
    return ["data=synthetic", "data.source.n_users=200", "data.source.n_items=120", "data.batch_size=128"]


def _mind(root):
    generate_mind(root / "mind", users=200, news=300, train_impressions=1200, seed=0)
    return ["data=mind", f"data.source.path={root / 'mind'}", "data.batch_size=128", "data.eval_batch_size=100"]


def _mind_text(root):
    return ["experiment=mind_text", *_mind(root)[1:], "trainer.max_epochs=1"]


def _shards(root):
    paths = readme_data.write_shards(root)
    return ["data=shards", f"data.source.interactions={paths['clicks']}", f"data.source.users={paths['users']}",
            f"data.source.items={paths['items']}", "data.source.user_id=uid", "data.source.item_id=iid", "data.source.timestamp=ts",
            "data.batch_size=128", "data.source.shuffle_buffer=512", "data.source.eval_users=50"]


def _mind_with_user_ids(root):
    """LSTUR-style: a user-id embedding next to the click history read through the item tower."""
    return [*_mind(root), "data.features.query=[{name: user_id, kind: id}, {name: history, kind: history, max_len: 50, through_item_tower: true}]"]


def _tables_through_the_item_tower(root):
    """Any source's history can be read through the item tower (not only MIND's)."""
    return [*_tables(root), "+data.features.query.3.through_item_tower=true", "+model.click_history={pooling: mean}"]


def _movielens_with_time(root):
    """The time kinds: the request's time (each rating's in training, the data end at serving) with the calendar, and the film's release
    date; and ml100k_temporal's popularity prior (its weight forced above 0, served as the index's extra dimension)."""
    return ["experiment=ml100k_temporal", *_movielens(root), "+data.features.query.6.calendar=true", "module.popularity_prior_weights=[0.5]",
            "data.features.candidate=[{name: item_id, kind: id}, {name: genres, kind: multi_hot, separator: '|'}, {name: released, kind: time}]"]


def _movielens_cold_items(root):
    """ml100k_cold_items: uniform corpus negatives next to the in-batch ones, attention over the title's words."""
    return ["experiment=ml100k_cold_items", *_movielens(root)]


CONFIGS = {"movielens": _movielens, "movielens_with_time": _movielens_with_time, "movielens_cold_items": _movielens_cold_items, "tables": _tables, "synthetic": _synthetic, "mind": _mind, "mind_text": _mind_text, "shards": _shards,
           "mind_with_user_ids": _mind_with_user_ids, "tables_through_the_item_tower": _tables_through_the_item_tower}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_trained_model_exports_and_serves_its_own_ranking(name, tmp_path, compose_cfg):
    cfg = compose_cfg(*CONFIGS[name](tmp_path), *TINY)
    _, objects = train(cfg)
    artifact = export(export_config(tmp_path, tmp_path / "artifact", "flat", ("torchscript=true",)))
    retriever = Retriever.load(artifact)
    model, _, _ = load_checkpoint(find_checkpoint(tmp_path))
    datamodule = objects["datamodule"]
    data = datamodule.serving_data()
    item_vocab_index = datamodule.prepared.item_vocab_index.cpu()
    gather_items = lambda rows: {k: v[rows] for k, v in data.item_features.items()}  # noqa: E731
    now = retriever.data_end  # what a request without its own ``now`` is served at

    with torch.no_grad():
        items = encode_catalogue(model.encode_candidate, [data.item_features])  # (n_items, D), the data module's tensors, not the artifact's
        rows = torch.arange(0, len(data.user_ids), max(1, len(data.user_ids) // 7))
        inputs = query_inputs(datamodule.prepared.preprocessor.query, {k: v[rows] for k, v in data.user_features.items()},
                              {k: v[rows] for k, v in data.log.histories.items()}, item_vocab_index, gather_items, now)
        seen = torch.stack(data.log.seen.gather(rows))
        queries = model.encode_query(inputs)
        if retriever.prior is not None:  # the blend the run validated: [q, w(user)] . [c, popularity over the whole log]
            popularity, _ = PopularityPrior.item_scores(retriever.prior.counts(data.log.event_items, data.log.event_times, len(data.item_ids)))
            items = with_column(items, torch.from_numpy(popularity))
            queries = with_column(queries, retriever.prior.user_weights(data.log.seen.row_lengths(rows)))
        expected_scores, expected_rows = rank(queries, items, K, exclude=seen)
    served = retriever.recommend(data.user_ids[rows].tolist(), k=K)
    _assert_same_top_k(served, expected_scores.numpy(), data.item_ids[expected_rows.numpy()])
    _assert_portable_towers_match(artifact, model, inputs)

    # The same users given as raw rows of the users table: the same features, stored histories and seen items.
    frame = datamodule.prepared.tables.users.iloc[rows.numpy()].reset_index(drop=True)
    as_rows = retriever.recommend(frame, k=K)
    np.testing.assert_allclose(as_rows.scores, served.scores, atol=1e-5)

    history = next(iter(data.log.histories), None)
    if history is not None:  # a visitor who clicked what a known user did is served through the same history path
        clicks = data.log.histories[history][rows[:3]]
        visits = [[str(data.item_ids[r - 1]) for r in row.tolist() if r > 0] for row in clicks]
        with torch.no_grad():
            visitor = query_inputs(datamodule.prepared.preprocessor.query, retriever._visitor_features(len(visits)), {history: clicks},
                                   item_vocab_index, gather_items, now)
            viewed = torch.nonzero(clicks > 0).T
            viewed[1] = clicks[clicks > 0] - 1
            queries = model.encode_query(visitor)
            if retriever.prior is not None:
                queries = with_column(queries, retriever.prior.user_weights((clicks > 0).sum(1)))
            expected_scores, expected_rows = rank(queries, items, K, exclude=viewed)
        served = retriever.recommend_from_history(visits, k=K)
        has_history = np.asarray([len(v) > 0 for v in visits])
        _assert_same_top_k(served, expected_scores.numpy(), data.item_ids[expected_rows.numpy()], rows=np.flatnonzero(has_history))
        for row, visit in enumerate(visits):
            assert not set(visit) & set(served.item_ids[row]), "a viewed item was recommended back"


def _assert_same_top_k(served, expected_scores: np.ndarray, expected_ids: np.ndarray, rows=None) -> None:
    for row in range(len(expected_scores)) if rows is None else rows:
        np.testing.assert_allclose(served.scores[row], expected_scores[row], atol=1e-4)
        # Ties tolerated: only items scoring strictly above the K-th must agree.
        sure = expected_scores[row] > expected_scores[row, -1] + 1e-4
        assert set(expected_ids[row][sure]) <= set(served.item_ids[row])


def _assert_portable_towers_match(artifact, model, inputs) -> None:
    """The ONNX and torch.export query towers, fed the same inputs by name, give the eager tower's vectors."""
    import onnxruntime

    with torch.no_grad():
        expected = model.query_tower.eval()(inputs).numpy()
    session = onnxruntime.InferenceSession(str(artifact / QUERY_ONNX))
    (vectors,) = session.run(None, {i.name: inputs[i.name].numpy() for i in session.get_inputs()})
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    program = torch.export.load(str(artifact / QUERY_PROGRAM)).module()
    np.testing.assert_allclose(program(*inputs.values()).detach().numpy(), expected, atol=1e-5)
