"""The LightningDataModule: a source prepared once (``Prepared``), then index batches gathered on the device."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import IterableDataset

from twotower.constraints import AT_LEAST_0, AT_LEAST_1, AT_LEAST_2, FRACTION
from twotower.data.prepared import Prepared, prepare_tables
from twotower.data.schema import Schema
from twotower.data.serving_data import ServingData, serving_data
from twotower.data.splits import split_by_name
from twotower.data.steps import build_steps
from twotower.data.store import Batch, EvalBatch, Features
from twotower.features.history import history_inputs

log = logging.getLogger(__name__)


class IndexBatches(IterableDataset):
    """Shuffled chunks of ``range(n)``, one shard per process; a new permutation each epoch.

    The loaders hand over only these small index tensors; features are gathered on the device.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        per_rank = self.n // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        self.epoch += 1
        # Every rank gets the same number of rows, so collective ops stay in step.
        per_rank = self.n // self.world_size
        shard = order[self.rank * per_rank : (self.rank + 1) * per_rank] if self.world_size > 1 else order
        for start in range(len(self)):
            yield shard[start * self.batch_size : (start + 1) * self.batch_size]


class TwoTowerDataModule(pl.LightningDataModule):
    """Prepares a source once (split, fit on train, stores), then serves training and evaluation batches.

    Every source goes through this one class: in-memory tables (public data sets, own tables, synthetic data)
    through ``prepare_tables``; a source with more to prepare (impressions and recorded click histories,
    parquet shards streamed per process) through its own ``prepare`` returning the same ``Prepared``.
    The per-batch behaviours below are steps (``twotower.data.steps``) that work with every source, or
    are refused at set-up naming why.

    Args:
        source: ``load() -> Tables`` (and optionally ``prepare(schema, split, seed, candidates) -> Prepared``).
        features: ``{"query": [...], "candidate": [...]}`` feature specs as in the data YAML.
        split: a callable giving each interaction a train/val/test label (see ``twotower.data.splits``),
            or the name of one (``temporal``: ``conf/data/split/temporal.yaml``'s split).
        use_ids: keep identity features (false: content-only towers).
        batch_size: training pairs per batch (in-batch negatives = batch_size - 1).
        eval_batch_size: users scored against the full catalogue at once.
        seed: shuffling seed.
        candidates: ``all`` ranks the whole catalogue at evaluation; ``heldout`` ranks only the
            items held out in that split (the cold-start items protocol).
        id_dropout: share of identity features replaced by the out-of-vocabulary index in training,
            so content features learn to stand in for ids (cold start).
        num_negatives: items sampled uniformly from the trained catalogue per batch as extra
            negatives next to the in-batch ones (mixed negative sampling, Yang et al. 2020).
        impression_negatives: items shown in the impression of each training click but not clicked,
            added to that row's softmax (sources that record impressions).
        new_user_rate: share of training rows shown as a first-time user: the query side's ids
            out-of-vocabulary and its history empty, so profile features learn to carry users the
            model has never seen (cold-start users; most test users of a global time cut).
        mask_known_positives: no item the user has in the training split is a negative of that
            user's rows (batches carry ``known_items``), as evaluation ranks only unknown items.
    """

    def __init__(
        self,
        source: Any,
        features: Mapping[str, Sequence[Mapping[str, Any]]],
        split: Callable[[pd.DataFrame], pd.Series] | str,
        use_ids: bool = True,
        batch_size: Annotated[int, AT_LEAST_2] = 1024,
        eval_batch_size: Annotated[int, AT_LEAST_1] = 1024,
        seed: int = 0,
        candidates: Literal["all", "heldout"] = "all",
        id_dropout: Annotated[float, FRACTION] = 0.0,
        num_negatives: Annotated[int, AT_LEAST_0] = 0,
        impression_negatives: Annotated[int, AT_LEAST_0] = 0,
        mask_known_positives: bool = False,
        new_user_rate: Annotated[float, FRACTION] = 0.0,
    ):
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"batch_size={batch_size}: in-batch negatives need at least 2")
        if candidates not in ("all", "heldout"):
            raise ValueError(f"candidates='{candidates}' is not one of all, heldout")
        for name, rate in (("id_dropout", id_dropout), ("new_user_rate", new_user_rate)):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name}={rate} must be in [0, 1)")
        for name, count in (("num_negatives", num_negatives), ("impression_negatives", impression_negatives)):
            if count < 0:
                raise ValueError(f"{name}={count} must be >= 0")
        self.source, self.seed = source, seed
        self.split = split_by_name(split, seed) if isinstance(split, str) else split
        self.schema = Schema.from_config(features, use_ids=use_ids)
        self.batch_size, self.eval_batch_size, self.candidates = batch_size, eval_batch_size, candidates
        self.steps = build_steps(num_negatives, impression_negatives, id_dropout, new_user_rate, mask_known_positives)
        self.prepared: Prepared | None = None  # set by setup
        self._on_device: Prepared | None = None  # ``prepared`` on the device batches are gathered on

    # ------------------------------------------------------------------ set-up, once per process
    def setup(self, stage: str | None = None) -> None:
        if self.prepared is not None:
            return
        prepare = getattr(self.source, "prepare", None)
        if prepare is not None:
            prepared = prepare(self.schema, self.split, self.seed, self.candidates)
        else:
            prepared = prepare_tables(self.source.load(), self.schema, self.split, self.seed, self.candidates)
        for step in self.steps:
            step.check(prepared)
        per_request = [n for n, f in prepared.preprocessor.query.items() if f.kind.per_request]
        if per_request and (prepared.train_times is None or prepared.first_seen is None):
            raise ValueError(f"feature(s) {per_request} read each training interaction's time, which this source "
                             f"({type(self.source).__name__}) does not keep with its training pairs: remove them")
        self.prepared = self._on_device = prepared

    @property
    def data(self) -> Prepared:
        """The prepared data where batches are gathered (the CPU until the first batch reaches a device)."""
        if self._on_device is None:
            raise RuntimeError("the data module is not set up: call setup() first")
        return self._on_device

    def gather_on(self, device: torch.device | str) -> None:
        """Gathers batches on ``device`` from now on (Lightning's batch hook does this itself; scripts that
        drive the towers without a Trainer, or move them back to the CPU after one, call it)."""
        self._on_device = self.prepared.to(torch.device(device))

    # ------------------------------------------------------------------ loaders of index tensors
    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _epoch(self) -> int:
        # A run resumed at epoch e shuffles as epoch e would have, not as epoch 0.
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    # The loaders are the batch iterables themselves, not torch DataLoaders: the batches are index tensors made
    # whole by the source (no per-sample fetching or collation to do), and a DataLoader's own per-batch work
    # (7 us a batch, one epoch of 100M rows: 70,000 batches) was a sixth to a quarter of the sharded stream's epoch
    # (benchmarks/results/shards_scale.md). Lightning takes any iterable; the ranks' shares are the sources' own.
    def train_dataloader(self) -> _Tagged:
        rank, world = self._rank()
        data = self.prepared
        if data.train_pairs is None:
            batches = data.stream.batches(rank, world, self._epoch(), self.batch_size)
            if len(batches) == 0:
                raise ValueError(f"batch_size={self.batch_size} is larger than the training interactions of some process "
                                 f"({data.stream.description}, processes: {world}): write more, smaller row groups")
            return _Tagged(batches, "train")
        rows = IndexBatches(len(data.train_pairs), self.batch_size, shuffle=True, seed=self.seed, drop_last=True, rank=rank, world_size=world)
        if len(rows) == 0:
            raise ValueError(f"batch_size={self.batch_size} is larger than the {len(data.train_pairs)} training interactions per process")
        rows.epoch = self._epoch()
        return _Tagged(rows, "train")

    def val_dataloader(self) -> _Tagged:
        return self._eval_loader("val")

    def test_dataloader(self) -> _Tagged:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> _Tagged:
        rank, world = self._rank()
        users = self.prepared.eval_users[split][rank::world]
        return _Tagged(users.split(self.eval_batch_size), split)

    # ------------------------------------------------------------------ gathering on the device
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> Batch | EvalBatch:
        device = batch["rows"].device
        if self._on_device.items.device != device:
            self._on_device = self.prepared.to(device)  # once per process, not per batch
        if batch["split"] == "train":
            return self.train_batch(batch["rows"])
        return self.eval_batch(batch["rows"], batch["split"])

    def train_batch(self, rows: torch.Tensor) -> Batch:
        """The training batch of ``rows``: positions in ``train_pairs`` (B,), or streamed (B, 2) (user row, item row) pairs
        (int32 or int64: widened here, on the device, where it costs nothing beside the copy it halves)."""
        data = self.data
        streamed = rows.dim() == 2
        users, items = (rows.long() if streamed else data.train_pairs[rows]).unbind(1)
        lines = None  # each click reads its own impression's history where the source records one per impression
        if not streamed and data.impressions is not None and data.impressions.histories is not None:
            lines = data.impressions.of_train_pair[rows]
        times = None if streamed or data.train_times is None else data.train_times[rows]
        query = self.query_features(users, "train", clicked=items, impressions=lines, times=times)
        batch = Batch(query, data.items.gather(items), users, items, data.item_log_q[items])
        for step in self.steps:
            step(batch, data, None if streamed else rows)
        return batch

    def query_features(self, users: torch.Tensor, split: str, clicked: torch.Tensor | None = None, impressions: torch.Tensor | None = None,
                       times: torch.Tensor | None = None) -> Features:
        """The users' query-tower inputs: their features, and their ``split`` history as the history feature reads it
        (``twotower.features.history.history_inputs``); ``clicked`` (B,) item rows are removed from their row's history,
        so a training target is never visible in its own history. ``impressions`` (B,): each row reads that
        impression's own history (``Impressions.histories``) instead of the user's. ``times`` (B,) float64: the time
        each row's query is for, which per-request features read (training: the interaction's; default, for an
        evaluation split: the end of the data known before it, as a recommender asked at the split would be)."""
        data = self.data
        query = data.users.gather(users)
        for name, fitted in data.preprocessor.query.items():
            if fitted.kind.per_request:
                query[name] = times if times is not None else torch.full((len(users),), data.first_seen[split].end, dtype=torch.float64, device=users.device)
        if data.history_name:
            # (B, L) catalogue rows + 1, 0 = empty slot
            rows = data.histories[split][users] if impressions is None else data.impressions.histories[impressions]
            if clicked is not None:
                rows = rows.masked_fill(rows == clicked.unsqueeze(1) + 1, 0)
            fitted = data.preprocessor.query[data.history_name]
            query.update(history_inputs(data.history_name, rows, fitted.spec.through_item_tower, data.item_vocab_index, data.items.gather))
        return query

    def eval_batch(self, users: torch.Tensor, split: str) -> EvalBatch:
        data = self.data
        batch = EvalBatch(self.query_features(users, split), users, torch.stack(data.known[split].gather(users)),
                          torch.stack(data.heldout[split].gather(users)), candidates=data.candidates[split])
        if data.impressions is not None:
            shown = data.impressions.of_users(users, split)  # (4, n) position in batch, item row, impression, label
            if data.impressions.histories is not None:
                # Each impression scored with its own history: one query per distinct impression of the batch.
                lines, shown[0] = torch.unique(shown[2], return_inverse=True)
                batch.impression_users = data.impressions.user_of[lines]
                batch.impression_query = self.query_features(batch.impression_users, split, impressions=lines)
            batch.impressions = shown
        return batch

    def catalogue(self, chunk_size: int = 65536) -> Iterator[Features]:
        """Every item's features, in chunks, on the store's device."""
        items = self.data.items
        for start in range(0, len(items), chunk_size):
            yield items.gather(torch.arange(start, min(start + chunk_size, len(items)), device=items.device))

    def serving_data(self) -> ServingData:
        """The catalogue, users, histories and log an export writes (every split: serving reads every logged interaction)."""
        return serving_data(self.prepared)


class _Tagged:
    """A loader: each index tensor of ``batches`` tagged with its split, so the device-side hook knows what to gather."""

    def __init__(self, batches, split: str):
        self.batches, self.split = batches, split

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for rows in self.batches:
            yield {"split": self.split, "rows": rows}
