"""Baselines as models of ``train`` (``model=popularity``): the same entry point, the same metric code, any data set."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from tests.conftest import CONF
from twotower import extras
from twotower.baseline_run import impression_scorer
from twotower.baselines import EASE, ContentOverlap, KnownContent, Popularity, evaluate
from twotower.config_check import ConfigError
from twotower.data.tables import SPLIT
from twotower.datasets.mind.evaluation import evaluate_impressions, popularity_scorer
from twotower.datasets.mind.generator import generate_mind
from twotower.datasets.mind.oracle import overlap_metrics
from twotower.extras import MissingExtra, check_choices
from twotower.task.impression_metrics import NAMES as IMPRESSION_NAMES
from twotower.training import train

SMALL_SYNTHETIC = ["data=synthetic", "data.source.n_users=100", "logger=none"]


def of_split(metrics, split, impressions=False):
    """``split``'s metrics without the prefix; those of the full-catalogue ranking only, unless ``impressions``."""
    out = {name.removeprefix(f"{split}/"): value for name, value in metrics.items() if name.startswith(f"{split}/")}
    return out if impressions else {name: value for name, value in out.items() if name not in IMPRESSION_NAMES}


def test_popularity_run_is_the_baseline_evaluation(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg("model=popularity", *SMALL_SYNTHETIC)
    metrics, objects = train(cfg)
    datamodule = objects["datamodule"]
    expected = evaluate(Popularity(), datamodule, "val", cfg.module.ks, (10, 20), seed=cfg.seed)
    assert of_split(metrics, "val") == pytest.approx(expected, abs=1e-6)
    assert {"val/recall@20", "val/ndcg@10", "val/coverage@20", "test/recall@20"} <= set(metrics)
    assert isinstance(objects["baseline"], Popularity) and objects["module"] is objects["trainer"] is objects["best_checkpoint"] is None
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"] == metrics and written["best_checkpoint"] is None
    assert "val   @20" in capsys.readouterr().out  # the trained run's report


def test_ease_run_is_the_baseline_evaluation(compose_cfg):
    cfg = compose_cfg("model=ease", "model.l2=50", "test=false", *SMALL_SYNTHETIC)
    metrics, objects = train(cfg)
    expected = evaluate(EASE(l2=50.0), objects["datamodule"], "val", cfg.module.ks, (10, 20), seed=cfg.seed)
    assert of_split(metrics, "val") == pytest.approx(expected, abs=1e-6)
    assert not of_split(metrics, "test", impressions=True)


@pytest.fixture(scope="module")
def mind_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mind")
    generate_mind(path, users=60, news=120, seed=0)
    return path


def mind_run(compose_cfg, mind_dir, model, *overrides):
    return train(compose_cfg(f"model={model}", "data=mind", f"data.source.path={mind_dir}", "logger=none", *overrides))


def test_popularity_on_mind_logs_the_impression_metrics_of_its_scorer(compose_cfg, mind_dir):
    metrics, objects = mind_run(compose_cfg, mind_dir, "popularity", "test=false")
    datamodule = objects["datamodule"]
    fitted = Popularity()
    assert of_split(metrics, "val") == pytest.approx(evaluate(fitted, datamodule, "val", (10, 20, 50, 100), (10, 20), seed=42), abs=1e-6)
    own = evaluate_impressions(datamodule, "val", impression_scorer(fitted, datamodule.prepared.impressions, chunk_size=7))
    # The impression module's reference popularity: training clicks per item, which is what is known at val.
    reference = evaluate_impressions(datamodule, "val", popularity_scorer(datamodule))
    for name in IMPRESSION_NAMES:
        assert metrics[f"val/{name}"] == pytest.approx(own[name], abs=1e-9) and own[name] == pytest.approx(reference[name], abs=1e-9), name


def test_content_overlap_on_mind_is_the_history_category_share_of_each_line(compose_cfg, mind_dir):
    metrics, objects = mind_run(compose_cfg, mind_dir, "content_overlap")
    datamodule = objects["datamodule"]
    meta = datamodule.source.load().impression_meta
    for split in ("val", "test"):
        fitted = ContentOverlap("category")
        assert of_split(metrics, split) == pytest.approx(evaluate(fitted, datamodule, split, (10, 20, 50, 100), (10, 20), seed=42), abs=1e-6)
        own = evaluate_impressions(datamodule, split, impression_scorer(fitted, datamodule.prepared.impressions, chunk_size=7))
        # Independently, from the behaviors.tsv lines themselves (oracle.py's heuristic on raw category strings).
        lines = overlap_metrics(mind_dir, "dev", set(meta.loc[meta[SPLIT] == split, "impression_id"]))
        for name in IMPRESSION_NAMES:
            assert metrics[f"{split}/{name}"] == pytest.approx(own[name], abs=1e-9), (split, name)
            assert own[name] == pytest.approx(lines[name], abs=1e-9), (split, name)
    assert metrics["val/impression_auc"] > metrics["val/recall@20"] > 0.0


def hand_built_content(line_histories=None):
    # 4 items; category (vocabulary index) 1, 1, 2, and 0 for item 3 (out of vocabulary: matches nothing).
    # User 0's history: items 0, 1, 2, 3; user 1 has none.
    histories = sp.csr_matrix(np.array([[1, 1, 1, 1], [0, 0, 0, 0]], dtype=np.float32))
    return KnownContent(histories, {"category": np.array([1, 1, 2, 0]), "genres": np.zeros((4, 3))}, {"category": "categorical", "genres": "multi_hot"},
                        line_histories)


def test_content_overlap_scores_the_share_of_the_history_in_the_items_category():
    # One line whose history holds item 2 twice and item 0 once: 2 of 3 in category 2, 1 of 3 in category 1.
    lines = sp.csr_matrix(np.array([[1, 0, 2, 0]], dtype=np.float32))
    model = ContentOverlap("category").fit(None, hand_built_content(lines))
    # User 0: 2 of 4 history items in category 1 (items 0, 1), 1 of 4 in category 2; item 3 out of vocabulary.
    np.testing.assert_allclose(model.score(np.array([0, 1])), [[2 / 4, 2 / 4, 1 / 4, 0.0], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(model.score_lines(np.array([0])), [[1 / 3, 1 / 3, 2 / 3, 0.0]])


@pytest.mark.parametrize("feature, named", [
    ("topic", r"content overlap feature 'topic' is not a candidate feature \(candidate features: category, genres\)"),
    ("genres", r"feature 'genres' is multi_hot, not categorical \(categorical candidate features: category\)"),
])
def test_content_overlap_refuses_a_feature_it_cannot_read(feature, named):
    with pytest.raises(ValueError, match=named):
        ContentOverlap(feature).fit(None, hand_built_content())


def test_content_overlap_on_data_without_the_feature_is_refused_by_name(compose_cfg):
    with pytest.raises(ValueError, match=r"feature 'category' is not a candidate feature \(candidate features: genres, item_id, price, title\)"):
        train(compose_cfg("model=content_overlap", *SMALL_SYNTHETIC))


@pytest.mark.parametrize("override, named", [
    ("+model.bogus=1", r"model.bogus: Popularity takes no argument 'bogus'; it takes: none"),
    ("+model.feture=x", r"model.feture: ContentOverlap takes no argument 'feture' \(did you mean 'feature'\?\)"),
    ("model.l2=abc", r"model.l2='abc': expected float"),
])
def test_the_config_check_refuses_what_a_baseline_does_not_take(compose_cfg, override, named):
    model = {"+model.bogus=1": "popularity", "+model.feture=x": "content_overlap", "model.l2=abc": "ease"}[override]
    with pytest.raises(ConfigError, match=named):
        train(compose_cfg(f"model={model}", override))


def test_a_baseline_without_its_package_names_the_extra(monkeypatch):
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "implicit" else find(name, *a))
    with pytest.raises(MissingExtra, match=r"^model=als needs implicit: pip install 'twotower\[bench\]'$"):
        check_choices({"model": "als"})
    check_choices({"model": "popularity"})  # scipy alone
    assert set(extras.NEEDS_EXTRA["model"]) == {p.stem for p in (CONF / "model").glob("*.yaml")} - {"hybrid", "mind"}


def test_train_py_runs_a_baseline(tmp_path):
    done = subprocess.run([sys.executable, "train.py", "model=popularity", *SMALL_SYNTHETIC, "test=false", f"hydra.run.dir={tmp_path}"],
                          cwd=CONF.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val   @20" in done.stdout and not (tmp_path / "checkpoints").exists()
    assert "val/recall@20" in json.loads((tmp_path / "metrics.json").read_text())["metrics"]
