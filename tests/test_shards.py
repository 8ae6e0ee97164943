"""Sharded interactions: the same set-up as the in-memory path, disjoint per-rank streams, clear errors."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from twotower.data import TwoTowerDataModule
from twotower.data.sources import TableSource
from twotower.data.splits import HashSplit, PredefinedSplit
from twotower.data.streaming import ShardSource
from twotower.data.streaming.labels import HashCodes
from twotower.data.streaming.scan import RecentItems
from twotower.data.streaming.stream import ShardBatches, ShardStream
from twotower.task.metrics import metrics_at_k, retrieval_hits
from twotower.training import train

FEATURES = {
    "query": [{"name": "user_id", "kind": "id"}, {"name": "age", "kind": "numeric"}, {"name": "history", "kind": "history", "max_len": 5}],
    "candidate": [{"name": "item_id", "kind": "id"}, {"name": "genre", "kind": "categorical"}],
}
N_USERS, N_ITEMS, N_ROWS = 60, 40, 1500
ROOT = Path(__file__).resolve().parents[1]


def write_tables(root, n_files=3, row_group_size=200, split_column=False):
    """users.parquet, items.parquet and shards/part-*.parquet: unique (user, item) pairs, unique times."""
    rng = np.random.default_rng(0)
    pairs = rng.choice(N_USERS * N_ITEMS, N_ROWS, replace=False)
    frame = pd.DataFrame({"uid": pairs // N_ITEMS + 100, "iid": [f"i{v}" for v in pairs % N_ITEMS], "ts": rng.permutation(N_ROWS) * 10})
    if split_column:
        frame["part"] = rng.choice(["train", "val", "test"], N_ROWS, p=[0.7, 0.15, 0.15])
    shards = root / "shards"
    shards.mkdir()
    for number, part in enumerate(np.array_split(np.arange(N_ROWS), n_files)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False), shards / f"part-{number:02d}.parquet", row_group_size=row_group_size)
    pd.DataFrame({"uid": np.arange(N_USERS) + 100, "age": rng.integers(18, 80, N_USERS)}).to_parquet(root / "users.parquet")
    pd.DataFrame({"iid": [f"i{v}" for v in range(N_ITEMS)], "genre": rng.choice(["a", "b", "c"], N_ITEMS)}).to_csv(root / "items.csv", index=False)
    return frame


def sharded(root, eval_users=None, batch_size=64, seed=3, **source):
    source = {"user_id": "uid", "item_id": "iid", "timestamp": "ts", **source}
    source = ShardSource(str(root / "shards"), str(root / "users.parquet"), str(root / "items.csv"), eval_users=eval_users, shuffle_buffer=256, **source)
    dm = TwoTowerDataModule(source, FEATURES, HashSplit(seed=seed), batch_size=batch_size, seed=seed)
    dm.setup()
    return dm


@pytest.fixture
def tables(tmp_path):
    return write_tables(tmp_path), tmp_path


def test_set_up_equals_the_in_memory_datamodule_on_the_same_split(tables):
    """Vocabularies, logQ, known/held-out sets and histories: streamed == all rows in one DataFrame."""
    _, root = tables
    streamed = sharded(root)
    memory = TwoTowerDataModule(TableSource(str(root / "shards"), str(root / "users.parquet"), str(root / "items.csv"), user_id="uid", item_id="iid", timestamp="ts"),
                                FEATURES, HashSplit(seed=3), batch_size=64, seed=3)
    memory.setup()
    assert streamed.prepared.preprocessor.to_json() == memory.prepared.preprocessor.to_json()
    assert streamed.prepared.split_counts == memory.prepared.split_counts
    torch.testing.assert_close(streamed.prepared.item_log_q, memory.prepared.item_log_q)
    assert torch.equal(streamed.prepared.item_counts, memory.prepared.item_counts)
    assert torch.equal(streamed.prepared.trained_items, memory.prepared.trained_items)
    for split in ("val", "test"):
        assert torch.equal(streamed.prepared.eval_users[split], memory.prepared.eval_users[split])
        assert torch.equal(streamed.prepared.histories[split], memory.prepared.histories[split])
        for csr in ("known", "heldout"):
            a, b = getattr(streamed.prepared, csr)[split], getattr(memory.prepared, csr)[split]
            assert torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices), (split, csr)


def test_repeated_pairs_in_shards_are_each_one_relevant_item(tmp_path):
    """A pair repeated across shards was held out twice: evaluation counted two relevant items where one
    can be retrieved, so a perfect ranking scored recall 0.5 for it (nothing raised); the held-out sets
    now hold each pair once, as the in-memory path's merged tables do."""
    frame = write_tables(tmp_path)
    repeats = frame.iloc[::7].assign(ts=lambda f: f["ts"] + 100_000)  # later copies of every 7th pair
    pq.write_table(pa.Table.from_pandas(repeats, preserve_index=False), tmp_path / "shards" / "part-99.parquet")
    streamed = sharded(tmp_path)
    memory = TwoTowerDataModule(TableSource(str(tmp_path / "shards"), str(tmp_path / "users.parquet"), str(tmp_path / "items.csv"), user_id="uid",
                                            item_id="iid", timestamp="ts"), FEATURES, HashSplit(seed=3), batch_size=64, seed=3)
    memory.setup()
    for split in ("val", "test"):
        a, b = streamed.prepared.heldout[split], memory.prepared.heldout[split]
        assert torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices), split
    heldout = streamed.prepared.heldout["test"]
    users = streamed.prepared.eval_users["test"]
    targets = torch.stack(heldout.gather(users))  # (2, nnz) relevant (position, item)
    perfect = torch.full((len(users), N_ITEMS), -1)
    perfect[targets[0], torch.cat([torch.arange(n) for n in heldout.row_lengths(users).tolist()])] = targets[1]
    hits, n_relevant = retrieval_hits(perfect, targets, len(users), N_ITEMS)
    assert metrics_at_k(hits, n_relevant, N_ITEMS)["recall"].min().item() == 1.0


def test_two_ranks_stream_disjoint_rows_whose_union_is_the_train_split(tables):
    _, root = tables
    dm = sharded(root)
    train_pairs = {tuple(p) for p in _train_pairs(root)}
    streams = []
    for rank in (0, 1):
        batches = dm.prepared.stream.batches(rank, 2, 0, 64)
        streams.append({tuple(p) for block in batches.blocks(batches.row_groups) for p in block.tolist()})
        epoch = torch.cat(list(batches))  # (steps * B, 2)
        assert len(epoch) == dm.prepared.stream.steps(2, 64) * 64
        assert len({tuple(p) for p in epoch.tolist()}) == len(epoch), "a row repeats within an epoch"
        assert {tuple(p) for p in epoch.tolist()} <= streams[-1], "a rank yielded a row it does not own"
    assert not streams[0] & streams[1]
    assert streams[0] | streams[1] == train_pairs
    # The plan: each rank owns about half the row groups' rows, and both take the same steps.
    assert dm.prepared.stream.steps(2, 64) == min(len(s) for s in streams) // 64 > 0


def _train_pairs(root):
    memory = TwoTowerDataModule(TableSource(str(root / "shards"), str(root / "users.parquet"), str(root / "items.csv"), user_id="uid", item_id="iid"),
                                FEATURES, HashSplit(seed=3), seed=3)
    memory.setup()
    return memory.prepared.train_pairs.tolist()


def test_each_epoch_is_a_seeded_shuffle(tables):
    _, root = tables
    dm = sharded(root)

    def epoch(seed, number):
        stream = dm.prepared.stream
        return torch.cat(list(ShardStream(stream.shards, stream.train_masks, 256, seed).batches(0, 1, number, 64)))

    assert torch.equal(epoch(0, 0), epoch(0, 0))
    assert not torch.equal(epoch(0, 0), epoch(0, 1))
    assert not torch.equal(epoch(0, 0), epoch(1, 0))
    batches = dm.prepared.stream.batches(0, 1, 0, 64)
    unshuffled = np.concatenate(list(batches.blocks(batches.row_groups)))
    assert not np.array_equal(epoch(0, 0).numpy(), unshuffled[: len(epoch(0, 0))])


def test_an_epoch_of_many_blocks_sends_each_training_row_once(tables, monkeypatch):
    """Blocks (reader -> shuffle) smaller than the stream: every training pair once but the ragged last batch;
    batches are page-locked only where CUDA is available."""
    monkeypatch.setattr(ShardBatches, "BLOCK_ROWS", 100)  # blocks of the 256-row buffer: about 4 per epoch
    _, root = tables
    train = {tuple(p) for p in _train_pairs(root)}
    batches = sharded(root).prepared.stream.batches(0, 1, 0, 64)
    assert batches.pin_memory == torch.cuda.is_available()
    epoch = [tuple(p) for p in torch.cat(list(batches)).tolist()]
    assert len(epoch) == len(set(epoch)) == len(train) // 64 * 64
    assert set(epoch) <= train


def test_streamed_rows_are_int32_and_train_as_their_int64_widening(tables):
    """Both tables fit int32, so batches are int32 (half the bytes to pin and copy); ``train_batch`` widens them and
    builds exactly the batch of the same rows as int64."""
    _, root = tables
    dm = sharded(root)
    rows = next(iter(dm.train_dataloader()))["rows"]
    assert rows.dtype == torch.int32 and rows.shape == (64, 2)
    narrow, wide = dm.train_batch(rows), dm.train_batch(rows.long())
    assert narrow.query_ids.dtype == narrow.candidate_ids.dtype == torch.int64
    assert torch.equal(narrow.query_ids, wide.query_ids) and torch.equal(narrow.candidate_ids, wide.candidate_ids)
    torch.testing.assert_close(narrow.log_q, wide.log_q)
    for name, value in wide.query.items():
        assert torch.equal(narrow.query[name], value), name
    for name, value in wide.candidate.items():
        assert torch.equal(narrow.candidate[name], value), name


@pytest.mark.parametrize("read_rows", [64, 37])  # record batches that split row groups evenly, and raggedly
def test_the_scans_train_masks_are_the_split_of_every_row(tables, read_rows):
    """The stream keeps the rows the set-up scan marked (1 bit a row, per row group), not a split of its own."""
    _, root = tables
    dm = sharded(root)
    stream, tables_ = dm.prepared.stream, dm.prepared.tables
    codes = HashCodes(HashSplit(seed=3), tables_.users, tables_.items)
    assert len(stream.train_masks) == len(stream.shards.row_groups)
    for chunk in stream.shards.chunks(read_rows=read_rows):
        group = stream.shards.row_groups[chunk.row_group]
        marked = np.unpackbits(stream.train_masks[chunk.row_group], count=group.rows).view(bool)
        start = chunk.offset - group.offset
        np.testing.assert_array_equal(marked[start : start + len(chunk.users)], codes.train(chunk))
    assert sum(int(np.unpackbits(m).sum()) for m in stream.train_masks) == dm.prepared.split_counts["train"]


def test_evaluation_sample_is_bounded_and_the_same_users_in_every_process(tables):
    _, root = tables
    dm, again = sharded(root, eval_users=10), sharded(root, eval_users=10)
    sampled = torch.unique(torch.cat([dm.prepared.eval_users["val"], dm.prepared.eval_users["test"]]))
    assert 0 < len(sampled) <= 10
    assert torch.equal(dm.prepared.eval_users["val"], again.prepared.eval_users["val"])
    full = sharded(root)
    for user in dm.prepared.eval_users["val"].tolist():  # a sampled user keeps all their rows
        for csr in ("known", "heldout"):
            a, b = getattr(dm.prepared, csr)["val"], getattr(full.prepared, csr)["val"]
            assert a.indices[a.indptr[user] : a.indptr[user + 1]].tolist() == b.indices[b.indptr[user] : b.indptr[user + 1]].tolist()


def test_predefined_split_column(tmp_path):
    frame = write_tables(tmp_path, split_column=True)
    source = ShardSource(str(tmp_path / "shards"), str(tmp_path / "users.parquet"), str(tmp_path / "items.csv"), user_id="uid", item_id="iid", split="part", eval_users=None)
    dm = TwoTowerDataModule(source, FEATURES, PredefinedSplit(), batch_size=64)
    dm.setup()
    assert dm.prepared.split_counts == frame["part"].value_counts().to_dict()


@pytest.mark.parametrize("as_time", [
    lambda seconds: pd.to_datetime(seconds, unit="s").astype("datetime64[ms]"),
    lambda seconds: pd.to_datetime(seconds, unit="s").astype("datetime64[us]"),
    lambda seconds: pd.to_datetime(seconds, unit="s").dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin"),  # ns, tz-aware
    lambda seconds: pd.to_datetime(seconds, unit="s").dt.date,  # a date column (days since 1970)
], ids=["ms", "us", "ns-tz", "date"])
def test_shard_datetimes_become_unix_seconds(tmp_path, as_time):
    """A datetime column was read as its raw integers (ms, us or ns; a date as days), so trending's and
    freshness' seconds (half_life=7 * 86400) and time features were off by 1e3-1e9: nothing raised."""
    frame = write_tables(tmp_path)
    for path in (tmp_path / "shards").glob("*.parquet"):
        part = pd.read_parquet(path)
        pq.write_table(pa.Table.from_pandas(part.assign(ts=as_time((part["ts"] + 18_000) * 86400)), preserve_index=False), path)
    expected = sorted(((frame["ts"] + 18_000) * 86400.0).tolist())  # whole days from 2019 on, as Unix seconds
    assert sorted(sharded(tmp_path).prepared.serving_log().event_times.tolist()) == expected


def test_shard_timestamps_in_milliseconds_are_refused(tmp_path):
    write_tables(tmp_path)
    bad = tmp_path / "shards" / "part-01.parquet"
    pq.write_table(pa.Table.from_pandas(pd.read_parquet(bad).assign(ts=lambda f: f["ts"] + 1_700_000_000_000), preserve_index=False), bad)
    with pytest.raises(ValueError, match=r"part-01\.parquet: column 'ts' has the value 1700000\d+ at row \d+ of the directory, beyond 1e\+11 .*milliseconds"):
        sharded(tmp_path)


def test_a_split_column_under_the_hash_split_is_refused(tmp_path):
    """data.source.split=part with the hash split read and checked the column, then split by hash: the column was ignored."""
    write_tables(tmp_path, split_column=True)
    source = ShardSource(str(tmp_path / "shards"), str(tmp_path / "users.parquet"), str(tmp_path / "items.csv"), user_id="uid", item_id="iid", split="part")
    with pytest.raises(ValueError, match=r"shards: column 'part' gives a train/val/test split, and the split is HashSplit.*data/split=predefined"):
        TwoTowerDataModule(source, FEATURES, HashSplit()).setup()


def _source(root, **kwargs):
    return ShardSource(str(root / "shards"), str(root / "users.parquet"), str(root / "items.csv"), **{"user_id": "uid", "item_id": "iid", **kwargs})


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: f.drop(columns="iid"), r"part-01\.parquet has no column 'iid'"),
        (lambda f: f.assign(iid=1.5), r"part-01\.parquet: column 'iid' has type double"),
        (lambda f: f.assign(uid=f["uid"].where(f.index != f.index[3], 999)), r"part-01\.parquet: column 'uid' names 1 row\(s\) with id\(s\) not in .*users\.parquet, e\.g\. \[999\]"),
        (lambda f: f.assign(ts=f["ts"].astype(str)), r"part-01\.parquet: column 'ts' has type (string|large_string)"),
    ],
)
def test_a_bad_shard_is_named_with_its_column(tmp_path, damage, message):
    write_tables(tmp_path)
    bad = tmp_path / "shards" / "part-01.parquet"
    pq.write_table(pa.Table.from_pandas(damage(pd.read_parquet(bad)), preserve_index=False), bad)
    with pytest.raises(ValueError, match=message):
        dm = TwoTowerDataModule(_source(tmp_path, timestamp="ts", eval_users=None), FEATURES, HashSplit())
        dm.setup()


def test_empty_or_unreadable_directories_are_named(tmp_path):
    write_tables(tmp_path)
    for path in (tmp_path / "shards").glob("*.parquet"):
        path.unlink()
    with pytest.raises(ValueError, match=r"shards has no \*\.parquet files"):
        _source(tmp_path).load()
    (tmp_path / "shards" / "part-00.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"part-00\.parquet could not be read as parquet"):
        _source(tmp_path).load()


def test_an_items_table_with_both_the_id_column_and_item_id_is_named(tmp_path):
    """items.csv with 'iid' (data.source.item_id) and 'item_id' became two 'item_id' columns: pandas'
    'The truth value of a Series is ambiguous', naming no file or column."""
    write_tables(tmp_path)
    items = pd.read_csv(tmp_path / "items.csv")
    items.assign(item_id=range(len(items))).to_csv(tmp_path / "items.csv", index=False)
    with pytest.raises(ValueError, match=r"items\.csv has both column 'iid', read as item_id, and a column 'item_id'"):
        _source(tmp_path).load()


def test_integer_ids_in_shards_do_not_match_zero_padded_table_ids(tmp_path):
    """Shard id 100 is users-table id "100", not "0100" (ids are compared as the in-memory path's string keys)."""
    write_tables(tmp_path)
    pd.DataFrame({"uid": [f"{v:04d}" for v in range(100, 100 + N_USERS)]}).to_parquet(tmp_path / "users.parquet")
    with pytest.raises(ValueError, match=r"column 'uid' names \d+ row\(s\) with id\(s\) not in"):
        _source(tmp_path).load().interactions.chunks().__next__()


def test_csv_users_and_items_tables_are_read_as_written_as_in_memory(tmp_path):
    """A csv users/items table beside the shards was read with guessed types: ids '0100' became 100 (so
    the shards' '0100' were refused as unknown) and categories '07', '007' and '7' one category 7, where
    the in-memory path and serving keep each as written."""
    write_tables(tmp_path)
    for path in (tmp_path / "shards").glob("*.parquet"):
        part = pd.read_parquet(path)
        pq.write_table(pa.Table.from_pandas(part.assign(uid=part["uid"].map("{:04d}".format)), preserve_index=False), path)
    users = pd.read_parquet(tmp_path / "users.parquet")
    users.assign(uid=users["uid"].map("{:04d}".format)).to_csv(tmp_path / "users.csv", index=False)
    items = pd.read_csv(tmp_path / "items.csv")
    items.assign(genre=np.resize(["07", "007", "7"], len(items))).to_csv(tmp_path / "items.csv", index=False)
    source = {"users": str(tmp_path / "users.csv"), "items": str(tmp_path / "items.csv"), "user_id": "uid", "item_id": "iid", "timestamp": "ts"}
    streamed = TwoTowerDataModule(ShardSource(str(tmp_path / "shards"), eval_users=None, shuffle_buffer=256, **source), FEATURES, HashSplit(seed=3), seed=3)
    streamed.setup()
    memory = TwoTowerDataModule(TableSource(str(tmp_path / "shards"), **source), FEATURES, HashSplit(seed=3), seed=3)
    memory.setup()
    assert sorted(streamed.prepared.preprocessor.candidate["genre"].vocab.values) == ["007", "07", "7"]
    assert streamed.prepared.preprocessor.to_json() == memory.prepared.preprocessor.to_json()
    assert sorted(streamed.prepared.user_rows) == sorted(users["uid"].map("{:04d}".format))


def test_train_on_shards_end_to_end(tables, compose_cfg):
    _, root = tables
    cfg = compose_cfg(
        "data=shards", f"data.source.interactions={root / 'shards'}", f"data.source.users={root / 'users.parquet'}",
        f"data.source.items={root / 'items.csv'}", "data.source.user_id=uid", "data.source.item_id=iid", "data.source.timestamp=ts",
        "data.batch_size=64", "data.source.shuffle_buffer=512", "data.source.eval_users=30", "logger=none", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
    )
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 2 * objects["datamodule"].prepared.stream.steps(1, 64) > 0
    for name in ("val/recall@20", "test/recall@20", "val/ndcg@10"):
        assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 1.0
    assert math.isfinite(metrics["train/loss_epoch"])  # export and serving: tests/test_every_data_config_serves.py


@pytest.mark.slow
def test_two_gloo_processes_train_on_shards_in_step(tables, tmp_path):
    """trainer=ddp_cpu: each process streams its own row groups; both take the same steps, so the
    collectives (gathered negatives, gradient all-reduce, metric sync) never wait on a finished rank."""
    _, root = tables
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "train.py", "data=shards", "trainer=ddp_cpu", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2",
        f"data.source.interactions={root / 'shards'}", f"data.source.users={root / 'users.parquet'}", f"data.source.items={root / 'items.csv'}",
        "data.source.user_id=uid", "data.source.item_id=iid", "data.source.timestamp=ts", "data.batch_size=64", "data.source.shuffle_buffer=512",
        "data.source.eval_users=30", "trainer.enable_progress_bar=false", "logger.csv.version=ddp",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test  @20" in done.stdout
    steps = sharded(root, seed=42).prepared.stream.steps(2, 64)  # train.yaml's seed
    # resume-epoch.ckpt is written at every epoch end; last.ckpt only when the monitored metric improves.
    checkpoint = torch.load(run_dir / "checkpoints" / "resume-epoch.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2 * steps > 0


def test_recent_items_over_a_stream_equal_a_stable_sort_of_all_rows():
    """Merged in several flushes, with ties in time, rows arriving last batch first (as the set-up scan reads them):
    each user's 3 latest items, the lower row number first on ties."""
    rng = np.random.default_rng(1)
    users, items, times = rng.integers(0, 7, 200), rng.integers(0, 50, 200).astype(np.int32), rng.integers(0, 20, 200).astype(float)
    recent = RecentItems(7, 3)
    recent.flush_rows, recent.BLOCK = 25, 12  # several flushes, several blocks per flush
    for start in reversed(range(0, 200, 30)):
        rows = slice(start, start + 30)
        recent.add(users[rows], items[rows], times[rows], start)
    expected = np.full((7, 3), -1)
    for user in range(7):
        rows = sorted(np.flatnonzero(users == user), key=lambda r: (-times[r], r))[:3]
        expected[user, : len(rows)] = items[rows]
    np.testing.assert_array_equal(recent.table(), expected)


def test_options_that_need_every_row_in_memory_are_refused(tables):
    from twotower.data.splits import RandomSplit

    _, root = tables
    with pytest.raises(ValueError, match="HashSplit or PredefinedSplit .* not RandomSplit"):
        TwoTowerDataModule(_source(root), FEATURES, RandomSplit()).setup()
    with pytest.raises(ValueError, match="mask_known_positives needs every user's training items"):
        TwoTowerDataModule(_source(root), FEATURES, HashSplit(), mask_known_positives=True).setup()
    with pytest.raises(ValueError, match="impression_negatives=2: the source records no impressions"):
        TwoTowerDataModule(_source(root), FEATURES, HashSplit(), impression_negatives=2).setup()
    with pytest.raises(ValueError, match="candidates='heldout'"):
        TwoTowerDataModule(_source(root), FEATURES, HashSplit(), candidates="heldout").setup()
    with pytest.raises(ValueError, match="PredefinedSplit needs a split column"):
        TwoTowerDataModule(_source(root), FEATURES, PredefinedSplit()).setup()
