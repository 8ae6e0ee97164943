"""MIND's click histories as the published protocol reads them: each behaviors line's own, hand-built lines."""
from pathlib import Path

import pytest
import torch

from twotower.data import TwoTowerDataModule
from twotower.data.splits import PredefinedSplit
from twotower.datasets.mind import MindSource

NEWS = "".join(f"N{i}\tcat{i % 2}\tsub\tTitle {i}\tAbstract\thttps://x/N{i}.html\t[]\t[]\n" for i in range(1, 6))  # rows N1..N5 = 0..4
# U1's two training lines carry different histories; U2's is empty in train and in dev.
TRAIN = (
    "1\tU1\t11/11/2019 9:00:00 AM\tN1\tN3-1 N2-0\n"
    "2\tU1\t11/12/2019 9:00:00 AM\tN1 N2\tN4-1 N3-0\n"
    "3\tU2\t11/11/2019 10:00:00 AM\t\tN1-1 N2-0\n"
)
DEV = (
    "1\tU1\t11/15/2019 8:00:00 AM\tN1 N2 N5\tN2-0 N1-1\n"
    "2\tU2\t11/15/2019 9:00:00 AM\t\tN3-1 N4-0\n"
)
FEATURES = {
    "query": [{"name": "history", "kind": "history", "max_len": 3, "through_item_tower": True}],
    "candidate": [{"name": "category", "kind": "categorical"}],
}


def datamodule(root: Path, earlier_clicks: bool = False) -> TwoTowerDataModule:
    for directory, behaviors in (("train", TRAIN), ("dev", DEV)):
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / "behaviors.tsv").write_text(behaviors)
        (root / directory / "news.tsv").write_text(NEWS)
    dm = TwoTowerDataModule(MindSource(str(root), dev_test_fraction=0.0, earlier_clicks_in_history=earlier_clicks), FEATURES,
                            PredefinedSplit(), batch_size=2, seed=0)
    dm.setup("fit")
    return dm


def history_rows(query: dict[str, torch.Tensor], table: torch.Tensor) -> list[list[int]]:
    """Catalogue rows + 1 of a click-history tower's inputs (0 = empty), decoded with the distinct items of ``table``."""
    rows = torch.unique(table)[query["history.index"]]
    return rows.masked_fill(~query["history.present"], 0).tolist()


def test_each_impression_has_its_own_lines_history_most_recent_first(tmp_path):
    dm = datamodule(tmp_path)
    # Impressions 0-2 are the train lines, 3-4 the dev ones; N<i> is catalogue row i - 1, so row + 1 = i.
    assert dm.prepared.impressions.histories.tolist() == [[1, 0, 0], [2, 1, 0], [0, 0, 0], [5, 2, 1], [0, 0, 0]]
    # Per user (full-catalogue ranking, serving): the latest line of the directory; U3 has none.
    assert dm.prepared.histories["train"].tolist() == [[2, 1, 0], [0, 0, 0]]
    assert dm.prepared.histories["val"].tolist() == [[5, 2, 1], [0, 0, 0]]
    assert dm.serving_data().log.histories["history"].tolist() == [[5, 2, 1], [0, 0, 0]]


def test_earlier_training_clicks_come_ahead_of_the_lines_history_when_asked(tmp_path):
    dm = datamodule(tmp_path, earlier_clicks=True)
    # U1 clicked N3 (11/11) then N4 (11/12) in training; U2 N1 (11/11). A line sees only clicks before its time.
    assert dm.prepared.impressions.histories.tolist() == [[1, 0, 0], [3, 2, 1], [0, 0, 0], [4, 3, 5], [1, 0, 0]]


def test_a_training_click_reads_its_own_impressions_history(tmp_path):
    dm = datamodule(tmp_path)
    batch = dm.train_batch(torch.arange(3))  # clicks in order: U1 N3 (line 1), U1 N4 (line 2), U2 N1 (line 3)
    expected = torch.tensor([[1, 0, 0], [2, 1, 0], [0, 0, 0]])
    assert history_rows(batch.query, expected) == expected.tolist()


def test_each_dev_impression_is_scored_with_its_own_history(tmp_path):
    dm = datamodule(tmp_path)
    batch = dm.eval_batch(torch.tensor([0, 1]), "val")
    position, item, impression, label = batch.impressions
    assert impression.tolist() == [3, 3, 4, 4] and position.tolist() == [0, 0, 1, 1]  # rows of impression_query
    expected = torch.tensor([[5, 2, 1], [0, 0, 0]])
    assert history_rows(batch.impression_query, expected) == expected.tolist()


@pytest.mark.parametrize("earlier_clicks", [False, True])
def test_training_on_per_impression_histories_runs_and_scores_every_impression(tmp_path, earlier_clicks):
    from twotower.datasets.mind.evaluation import evaluate_impressions, model_scorer
    from twotower.model import build_two_tower

    dm = datamodule(tmp_path, earlier_clicks)
    model = build_two_tower(dm.prepared.preprocessor, embedding_dim=8, hidden_dims=[], output_dim=8)
    scores = evaluate_impressions(dm, "val", model_scorer(model, dm, "val"))
    assert scores["impressions"] == 2 and 0.0 <= scores["impression_auc"] <= 1.0


def test_the_prepared_impressions_move_to_a_device_with_the_rest(tmp_path):
    dm = datamodule(tmp_path)
    moved = dm.prepared.to(torch.device("meta"))  # what a GPU run does once per process
    assert moved.impressions.histories.device.type == "meta" and moved.impressions.user_of.device.type == "meta"
    assert moved.impressions.entries["val"].device.type == "meta" and moved.split_counts == dm.prepared.split_counts
