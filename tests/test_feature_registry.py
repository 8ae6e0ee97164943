"""Issue 14: a feature kind is one class and a registration. A kind the library has never heard of,
defined here, trains, exports and serves with no other file changed."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tests.export_fixtures import compose_config, export_config
from twotower import Retriever
from twotower.data.tables import ITEM, USER
from twotower.data.vocab import Vocabulary
from twotower.exporting import export, find_checkpoint, load_checkpoint
from twotower.features import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind, unregister_kind
from twotower.features.columns import as_float, column
from twotower.features.id import EmbeddingEncoder
from twotower.task.retrieval import rank
from twotower.training import train

BUCKETS = 4


class BucketizedKind(FeatureKind):
    """A number as the train-split quartile it falls in (1..4; 0 = missing), an embedding per quartile."""

    name = "bucketized"

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        x = as_float(column(frame, spec, table), spec, table)
        edges = np.quantile(x[~np.isnan(x)], np.linspace(0, 1, BUCKETS + 1)[1:-1])  # (BUCKETS - 1,) inner boundaries
        return FittedFeature(spec, state={"edges": edges.tolist()})

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        x = as_float(column(frame, fitted.spec, table), fitted.spec, table)
        buckets = 1 + np.searchsorted(fitted.state["edges"], x, side="right")
        return torch.from_numpy(np.where(np.isnan(x), 0, buckets).astype(np.int64))  # (n,)

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "cardinality": BUCKETS + 1}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return EmbeddingEncoder(spec["cardinality"], spec["dim"])

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long)

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "int64", (None,), f"int64 train quartile 1..{BUCKETS} (edges {fitted.state['edges']}), 0 = missing")


@pytest.fixture
def bucketized():
    kind = register_kind(BucketizedKind())
    yield kind
    unregister_kind(kind.name)


@pytest.fixture
def trained_and_exported(tmp_path, bucketized):
    run_dir, artifact = tmp_path / "run", tmp_path / "artifact"
    _, objects = train(compose_config("train", [
        "data=synthetic", "data.source.n_users=120", "data.source.n_items=80", "logger=csv", "trainer.max_epochs=2", "test=false",
        "callbacks=default", "callbacks.early_stopping.patience=10", f"paths.output_dir={run_dir}", "trainer.enable_progress_bar=false",
        "data.features.query=[{name: user_id, kind: id}, {name: segment, kind: categorical}, {name: age, kind: bucketized}]",
        "data.features.candidate=[{name: item_id, kind: id}, {name: genres, kind: multi_hot, separator: '|'}, {name: price, kind: bucketized}]",
    ]))
    export(export_config(run_dir, artifact))
    return run_dir, artifact, objects["datamodule"].prepared


def brute_force(run_dir, prepared, users: pd.DataFrame, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every catalogue item scored by the checkpoint's towers from the raw tables; the top k scores and ids."""
    model, _, _ = load_checkpoint(find_checkpoint(run_dir))
    tables, pre = prepared.tables, prepared.preprocessor
    with torch.no_grad():
        items = model.encode_candidate(pre.transform("candidate", tables.items, "items"))  # (n_items, D)
        query = model.encode_query(pre.transform("query", users, "users"))  # (U, D)
    item_ids = tables.items[ITEM].astype(str).tolist()
    seen = []
    if exclude_seen:
        for row, user in enumerate(users[USER].astype(str)):
            seen += [(row, item_ids.index(i)) for i in tables.interactions.loc[tables.interactions[USER].astype(str) == user, ITEM].astype(str)]
    top = rank(query, items, k, exclude=torch.tensor(seen, dtype=torch.long).reshape(-1, 2).T)
    return top.values.numpy(), np.asarray(item_ids)[top.indices.numpy()]


def assert_same_top_k(got, expected_scores, expected_ids):
    np.testing.assert_allclose(got.scores, expected_scores, atol=1e-5)
    for row in range(len(expected_ids)):
        sure = expected_scores[row] > expected_scores[row, -1] + 1e-5  # ties at the k-th score may come in any order
        assert set(expected_ids[row][sure]) <= set(got.item_ids[row]), row


def test_a_kind_registered_in_a_test_trains_exports_and_serves(trained_and_exported):
    run_dir, artifact, prepared = trained_and_exported
    ages = prepared.tables.users["age"].to_numpy(dtype=float)
    fitted = prepared.preprocessor.query["age"]
    np.testing.assert_allclose(fitted.state["edges"], np.quantile(ages, [0.25, 0.5, 0.75]))  # every synthetic user is in training

    retriever = Retriever.load(artifact)
    # The artifact's preprocessing carries the learned edges, and the stored user inputs are their quartiles.
    assert retriever.preprocessor.query["age"].state == fitted.state
    quartiles = 1 + np.searchsorted(fitted.state["edges"], ages, side="right")
    assert retriever.user_features["age"].tolist() == quartiles.tolist()
    assert set(retriever.user_features["age"]) == {1, 2, 3, 4}

    users = prepared.tables.users.iloc[[0, 5, 17, 99]].reset_index(drop=True)
    expected_scores, expected_ids = brute_force(run_dir, prepared, users, 10, exclude_seen=True)
    assert_same_top_k(retriever.recommend(users[USER].astype(str).tolist(), k=10), expected_scores, expected_ids)
    # Raw rows go through the kind's transform at serving time and land on the same lists.
    assert_same_top_k(retriever.recommend(users[[USER, "segment", "age"]], k=10), expected_scores, expected_ids)

    # A user the model never saw: the raw age is bucketed with the trained edges (above all of them: quartile 4).
    new = pd.DataFrame({USER: ["newcomer"], "segment": ["S3"], "age": [ages.max() + 30]})
    assert fitted.transform(new, "users").tolist() == [4]
    expected_scores, expected_ids = brute_force(run_dir, prepared, new, 10, exclude_seen=False)
    assert_same_top_k(retriever.recommend(new, k=10), expected_scores, expected_ids)
