"""The datamodule for interactions too big for one process: parquet shards streamed per rank.

Set-up streams every shard once (in each process, so no process group is needed yet) for what
training needs globally: split counts, id vocabularies and item counts (logQ), each row group's
train rows (the step plan), the history table, and the rows of a sample of users (evaluation).
Training then streams only the rank's own row groups through a bounded shuffle buffer.
"""
from __future__ import annotations

import itertools
import logging
from typing import Annotated, Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, IterableDataset

from twotower.constraints import AT_LEAST_0, AT_LEAST_1, AT_LEAST_2, FRACTION
from twotower.data.datamodule import TwoTowerDataModule, _Tagged
from twotower.data.preprocess import DEFAULT_MAX_LEN, Preprocessor
from twotower.data.shard_scan import TEST, TRAIN, VAL, scan
from twotower.data.shards import Chunk, InteractionShards
from twotower.data.splits import HashSplit, PredefinedSplit, mix64
from twotower.data.store import CSR, Batch, FeatureStore
from twotower.data.tables import ITEM, SPLITS, USER
from twotower.data.vocab import Vocabulary

log = logging.getLogger(__name__)


class ShardedDataModule(TwoTowerDataModule):
    """``TwoTowerDataModule`` over a ``ShardSource``: no process ever holds all interactions.

    Args:
        source: a ``ShardSource`` (a shard directory plus users and items tables).
        split: ``HashSplit`` (a seeded hash of each row's user and item ids) or ``PredefinedSplit``
            (the shards' split column); both label a row from the row alone.
        eval_users: validation and test rank the catalogue for the held-out items of at most this
            many users (those with the smallest seeded hash of their id among all users, so every
            rank picks the same ones); null evaluates every user, holding all their rows in memory.
        shuffle_buffer: training pairs each rank shuffles among (rows are drawn at random from the
            buffer and replaced by the next rows read); row groups are read in a new random order
            each epoch.
        Other arguments as in ``TwoTowerDataModule`` (``candidates`` is always ``all``;
        ``mask_known_positives`` is refused).
    """

    def __init__(
        self,
        source: Any,
        features: Mapping[str, Sequence[Mapping[str, Any]]],
        split: HashSplit | PredefinedSplit | str,
        use_ids: bool = True,
        batch_size: Annotated[int, AT_LEAST_2] = 1024,
        eval_batch_size: Annotated[int, AT_LEAST_1] = 1024,
        seed: int = 0,
        eval_users: Annotated[int, AT_LEAST_1] | None = 10_000,
        shuffle_buffer: Annotated[int, AT_LEAST_1] = 262_144,
        id_dropout: Annotated[float, FRACTION] = 0.0,
        num_negatives: Annotated[int, AT_LEAST_0] = 0,
        mask_known_positives: bool = False,
        new_user_rate: float = 0.0,
    ):
        super().__init__(source, features, split, use_ids, batch_size, eval_batch_size, seed, "all", id_dropout, num_negatives, new_user_rate=new_user_rate)
        if mask_known_positives:
            raise ValueError("mask_known_positives needs every user's training items in memory; sharded interactions keep "
                             "only the evaluation sample's (use loss.mask_accidental_hits, which needs none)")
        if not isinstance(self.split, (HashSplit, PredefinedSplit)):
            raise ValueError(f"sharded interactions are split by HashSplit or PredefinedSplit (a split column), not {type(self.split).__name__}: "
                             "other splits need every interaction in memory")
        if eval_users is not None and eval_users < 1:
            raise ValueError(f"eval_users={eval_users} must be >= 1 (or null: every user)")
        if shuffle_buffer < batch_size:
            raise ValueError(f"shuffle_buffer={shuffle_buffer} must hold at least one batch (batch_size={batch_size})")
        self.eval_sample, self.shuffle_buffer = eval_users, shuffle_buffer
        self.train_pairs = None  # streamed, never held

    def setup(self, stage: str | None = None) -> None:
        if self.tables is not None:
            return
        tables = self.source.load()
        shards: InteractionShards = tables.interactions
        if isinstance(self.split, PredefinedSplit) and not shards.has_split:
            raise ValueError(f"PredefinedSplit needs a split column: set data.source.split to its name in {shards.directory}")
        users, items = tables.users, tables.items
        self.user_rows, self.item_rows = pd.Index(users[USER]), pd.Index(items[ITEM])
        n_users, n_items = len(users), len(items)
        if isinstance(self.split, HashSplit):
            self._user_hashes, self._item_hashes = self.split.key_hashes(users[USER]), self.split.key_hashes(items[ITEM])
        history = [s for s in self.schema.query if s.kind == "history"]
        self.history_name = history[0].name if history else None
        history_len = (history[0].max_len or DEFAULT_MAX_LEN["history"]) if history else None

        stats = scan(shards, self._labels, n_users, n_items, self._sample(users[USER]), history_len, self.seed)
        counts = dict(zip(SPLITS, stats.split_counts.tolist()))
        for part in ("train", "val"):
            if counts[part] == 0:
                raise ValueError(f"the split leaves '{part}' empty ({counts}): check the split fractions or the split column of {shards.directory}")
        log.info("interactions: %s in %d row groups of %d shards", counts, len(shards.row_groups), len(shards.files))
        self.shards, self.train_rows_per_group = shards, stats.train_rows

        user_ids = Vocabulary.from_counts(users[USER].to_numpy(dtype=object), stats.user_counts)
        item_ids = Vocabulary.from_counts(items[ITEM].to_numpy(dtype=object), stats.item_counts)
        self.preprocessor = Preprocessor.fit_with_ids(self.schema, user_ids, item_ids, users, items, tables.names)
        self.users = FeatureStore(self.preprocessor.transform("query", users, tables.names["users"]), n_users)
        self.items = FeatureStore(self.preprocessor.transform("candidate", items, tables.names["items"]), n_items)
        self.item_vocab_index = torch.from_numpy(item_ids.lookup(items[ITEM].tolist()))

        self.item_counts = torch.from_numpy(stats.item_counts)
        self.trained_items = torch.from_numpy(np.flatnonzero(stats.item_counts))
        probs = self.item_counts.double() / self.item_counts.sum()
        # Items never trained on get the smallest probability a train item has; they are never sampled.
        probs[probs == 0] = probs[probs > 0].min()
        self.item_log_q = probs.log().float()

        u, i = (torch.from_numpy(stats.sample[k]).long() for k in ("users", "items"))
        part = torch.from_numpy(stats.sample["splits"])
        train, known_test = part == TRAIN, part != TEST
        self.known = {"val": CSR.from_pairs(u[train], i[train], n_users), "test": CSR.from_pairs(u[known_test], i[known_test], n_users)}
        self.heldout = {s: CSR.from_pairs(u[part == code], i[part == code], n_users) for s, code in (("val", VAL), ("test", TEST))}
        self.eval_users = {s: torch.unique(u[part == code]) for s, code in (("val", VAL), ("test", TEST))}
        self.candidates = {"val": None, "test": None}
        if self.history_name:
            # Item rows -> item id-vocabulary indices; empty slots (-1) -> 0 (padding).
            vocab_of_row = torch.cat([torch.zeros(1, dtype=torch.long), self.item_vocab_index])
            self.history = {s: vocab_of_row[torch.from_numpy(rows.astype(np.int64) + 1)] for s, rows in stats.history.items()}
        self.split_counts = counts
        self.tables = tables

    def _labels(self, chunk: Chunk) -> np.ndarray:
        if isinstance(self.split, PredefinedSplit):
            return chunk.splits
        return self.split.codes(self._user_hashes[chunk.users], self._item_hashes[chunk.items])

    def _sample(self, user_keys: pd.Series) -> np.ndarray:
        """(n_users,) bool: the evaluation users, chosen by a seeded hash of their id."""
        if self.eval_sample is None or self.eval_sample >= len(user_keys):
            return np.ones(len(user_keys), dtype=bool)
        hashes = mix64(pd.util.hash_array(user_keys.to_numpy(dtype=object), hash_key=f"{self.seed % 10**16:016d}") ^ np.uint64(0x5EED))
        chosen = np.zeros(len(user_keys), dtype=bool)
        chosen[np.argsort(hashes, kind="stable")[: self.eval_sample]] = True
        return chosen

    # ------------------------------------------------------------------ the training stream
    def steps_per_epoch(self, world_size: int) -> int:
        """Full batches every rank can fill: the fewest train rows any rank owns, over batch_size."""
        per_rank = [int(self.train_rows_per_group[self.shards.assign(r, world_size)].sum()) for r in range(world_size)]
        return min(per_rank) // self.batch_size

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        steps = self.steps_per_epoch(world)
        if steps == 0:
            raise ValueError(f"batch_size={self.batch_size} is larger than the training interactions of some process "
                             f"(row groups: {len(self.shards.row_groups)}, processes: {world}): write more, smaller row groups")
        batches = ShardBatches(self.shards, self.shards.assign(rank, world), self._labels, steps, self.batch_size, self.shuffle_buffer, self.seed, rank)
        # A run resumed at epoch e shuffles as epoch e would have, not as epoch 0.
        batches.epoch = self.trainer.current_epoch if getattr(self, "trainer", None) is not None else 0
        return DataLoader(_Tagged(batches, "train"), batch_size=None)

    def train_batch(self, pairs: torch.Tensor) -> Batch:
        """``pairs``: (B, 2) user and item rows, as streamed."""
        return self.pairs_batch(*pairs.unbind(1))


class ShardBatches(IterableDataset):
    """One rank's training pairs: its row groups in a seeded random order, through a shuffle buffer.

    Yields exactly ``steps`` (B, 2) tensors of (user row, item row) per epoch, so every rank
    takes the same number of steps; the rows left over are the ragged end of the rank's share.
    """

    def __init__(self, shards: InteractionShards, row_groups: list[int], labels, steps: int, batch_size: int, buffer: int, seed: int, rank: int):
        self.shards, self.row_groups, self.labels = shards, row_groups, labels
        self.steps, self.batch_size, self.buffer, self.seed, self.rank = steps, batch_size, buffer, seed, rank
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        self.epoch += 1
        buffer = ShuffleBuffer(self.buffer, self.batch_size, rng)
        streamed = itertools.chain.from_iterable(buffer.push(pairs) for pairs in self.pairs(rng.permutation(self.row_groups).tolist()))
        # drain() runs only once the stream is spent: what the buffer still holds, then stop at ``steps``.
        for batch in itertools.islice(itertools.chain(streamed, buffer.drain()), self.steps):
            yield torch.from_numpy(batch)

    def pairs(self, row_groups: list[int] | None = None) -> Iterator[np.ndarray]:
        """(n, 2) train (user row, item row) pairs of the rank's row groups (in this order), unshuffled."""
        for chunk in self.shards.chunks(self.row_groups if row_groups is None else row_groups):
            train = self.labels(chunk) == TRAIN
            yield np.stack([chunk.users[train], chunk.items[train]], 1)


class ShuffleBuffer:
    """A fixed-size buffer of rows: each incoming batch of rows replaces a random batch of the buffer,
    which goes out (tf.data's shuffle buffer, a batch at a time)."""

    def __init__(self, capacity: int, batch_size: int, rng: np.random.Generator):
        self.rows = np.empty((capacity, 2), dtype=np.int64)
        self.size, self.batch_size, self.rng = 0, batch_size, rng
        self.pending = self.rows[:0]

    def push(self, pairs: np.ndarray) -> Iterator[np.ndarray]:
        capacity = len(self.rows)
        fill = min(capacity - self.size, len(pairs))
        self.rows[self.size : self.size + fill] = pairs[:fill]
        self.size += fill
        self.pending = np.concatenate([self.pending, pairs[fill:]])
        while len(self.pending) >= self.batch_size:
            slots = self.rng.choice(capacity, self.batch_size, replace=False)
            out = self.rows[slots]  # a copy (fancy indexing)
            self.rows[slots] = self.pending[: self.batch_size]
            self.pending = self.pending[self.batch_size :]
            yield out

    def drain(self) -> Iterator[np.ndarray]:
        """The rows still held, shuffled, in full batches."""
        rest = np.concatenate([self.rows[: self.size], self.pending])
        self.rng.shuffle(rest)
        for start in range(0, len(rest) - self.batch_size + 1, self.batch_size):
            yield rest[start : start + self.batch_size]
