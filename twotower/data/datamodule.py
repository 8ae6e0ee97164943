"""The LightningDataModule: tables -> split -> fitted features -> stores on device -> batches."""
from __future__ import annotations

import logging
import math
from typing import Annotated, Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from twotower.constraints import AT_LEAST_0, AT_LEAST_1, AT_LEAST_2, FRACTION
from twotower.data.preprocess import Preprocessor
from twotower.data.schema import Schema
from twotower.data.splits import split_by_name
from twotower.data.store import CSR, Batch, EvalBatch, Features, FeatureStore
from twotower.data.tables import ITEM, SPLIT, TIME, USER, Tables

log = logging.getLogger(__name__)


class IndexBatches(IterableDataset):
    """Shuffled chunks of ``range(n)``, one shard per process; a new permutation each epoch.

    The DataLoader only moves these small index tensors; features are gathered on the device.
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
    """Loads a source, splits it, fits features on train, and serves index batches.

    Args:
        source: anything with ``load() -> Tables`` (MovieLens100K, TableSource, SyntheticSource, ...).
        features: ``{"query": [...], "candidate": [...]}`` feature specs as in the data YAML.
        split: a callable giving each interaction a train/val/test label (see ``twotower.data.splits``),
            or the name of one (``temporal``: ``conf/data/split/temporal.yaml``'s split).
        use_ids: keep ``id`` features (false: content-only towers).
        batch_size: training pairs per batch (in-batch negatives = batch_size - 1).
        eval_batch_size: users scored against the full catalogue at once.
        seed: shuffling seed.
        candidates: ``all`` ranks the whole catalogue at evaluation; ``heldout`` ranks only the
            items held out in that split (the cold-start items protocol).
        id_dropout: share of ``id`` features replaced by the out-of-vocabulary index in training,
            so content features learn to stand in for ids (cold start).
        num_negatives: items sampled uniformly from the trained catalogue per batch as extra
            negatives next to the in-batch ones (mixed negative sampling, Yang et al. 2020).
        new_user_rate: share of training rows shown as a first-time user: the query side's ids
            out-of-vocabulary and its history empty, so profile features learn to carry users the
            model has never seen (cold-start users; most test users of a global time cut).
        mask_known_positives: no item the user has in the training split is a negative of that
            user's rows (batches carry ``known_items``), as evaluation ranks only unknown items.
            Their count varies per batch, so on a GPU gathering them waits for the host once per step.
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
        mask_known_positives: bool = False,
        new_user_rate: Annotated[float, FRACTION] = 0.0,
    ):
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"batch_size={batch_size}: in-batch negatives need at least 2")
        self.source, self.seed = source, seed
        self.split = split_by_name(split, seed) if isinstance(split, str) else split
        self.schema = Schema.from_config(features, use_ids=use_ids)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        if candidates not in ("all", "heldout"):
            raise ValueError(f"candidates='{candidates}' is not one of all, heldout")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout={id_dropout} must be in [0, 1)")
        if not 0.0 <= new_user_rate < 1.0:
            raise ValueError(f"new_user_rate={new_user_rate} must be in [0, 1)")
        if num_negatives < 0:
            raise ValueError(f"num_negatives={num_negatives} must be >= 0")
        self.candidates_mode, self.id_dropout, self.num_negatives = candidates, id_dropout, num_negatives
        self.mask_known_positives, self.new_user_rate = mask_known_positives, new_user_rate
        self.tables: Tables | None = None
        self._device: torch.device | None = None

    # ------------------------------------------------------------------ set-up, once per process
    def setup(self, stage: str | None = None) -> None:
        if self.tables is not None:
            return
        tables = self.source.load()
        interactions = tables.interactions
        labels = self.split(interactions)
        if set(labels.unique()) - {"train", "val", "test"}:
            raise ValueError(f"split produced labels {sorted(labels.unique())}; expected train/val/test")
        interactions = interactions.assign(**{SPLIT: labels.to_numpy()})
        counts = interactions[SPLIT].value_counts().reindex(["train", "val", "test"], fill_value=0)
        for part in ("train", "val"):
            if counts[part] == 0:
                raise ValueError(f"the split leaves '{part}' empty ({counts.to_dict()}): check the split fractions or files of {tables.names['interactions']}")
        log.info("interactions: %s", counts.to_dict())
        train = interactions[interactions[SPLIT] == "train"]
        self.preprocessor = Preprocessor.fit(self.schema, train, tables.users, tables.items, tables.names)

        self.users = FeatureStore(self.preprocessor.transform("query", tables.users, tables.names["users"]), len(tables.users))
        self.items = FeatureStore(self.preprocessor.transform("candidate", tables.items, tables.names["items"]), len(tables.items))
        self.user_rows = pd.Index(tables.users[USER])
        self.item_rows = pd.Index(tables.items[ITEM])
        self.item_vocab_index = torch.from_numpy(self.preprocessor.item_ids.lookup(tables.items[ITEM].tolist()))

        candidates_all = self.candidates_mode == "all"
        u = torch.from_numpy(self.user_rows.get_indexer(interactions[USER]))
        i = torch.from_numpy(self.item_rows.get_indexer(interactions[ITEM]))
        part = {p: torch.from_numpy((interactions[SPLIT] == p).to_numpy().copy()) for p in ("train", "val", "test")}
        known_test = part["train"] | part["val"]
        self.train_pairs = torch.stack([u[part["train"]], i[part["train"]]], 1)  # (n_train, 2)
        n_users, n_items = len(self.user_rows), len(self.item_rows)
        self.known = {"val": CSR.from_pairs(u[part["train"]], i[part["train"]], n_users), "test": CSR.from_pairs(u[known_test], i[known_test], n_users)}
        self.heldout = {s: CSR.from_pairs(u[part[s]], i[part[s]], n_users) for s in ("val", "test")}
        self.eval_users = {s: torch.unique(u[part[s]]) for s in ("val", "test")}
        n_items_all = len(self.item_rows)
        self.candidates = {s: None if candidates_all else torch.zeros(n_items_all, dtype=torch.bool).index_fill_(0, torch.unique(i[part[s]]), True) for s in ("val", "test")}

        self.trained_items = torch.unique(self.train_pairs[:, 1])
        counts_per_item = torch.bincount(self.train_pairs[:, 1], minlength=n_items).double()
        # Items never trained on get the smallest probability a train item has; they are never sampled.
        probs = counts_per_item / counts_per_item.sum()
        probs[probs == 0] = probs[probs > 0].min()
        self.item_log_q = probs.log().float()
        self.item_counts = counts_per_item.long()

        history = [s for s in self.schema.query if s.kind == "history"]
        self.history_name = history[0].name if history else None
        if self.history_name:
            max_len = self.preprocessor.query[self.history_name].max_len
            times = interactions[TIME].to_numpy() if TIME in interactions else None
            self.history = {
                "val": self._history_table(u[part["train"]], i[part["train"]], None if times is None else times[part["train"].numpy()], max_len),
                "test": self._history_table(u[known_test], i[known_test], None if times is None else times[known_test.numpy()], max_len),
            }
        self.tables = tables
        self.split_counts = counts.to_dict()

    def _history_table(self, users: torch.Tensor, items: torch.Tensor, times: np.ndarray | None, max_len: int) -> torch.Tensor:
        """(n_users, max_len) item id-vocabulary indices of each user's known items, most recent first, 0-padded."""
        recency = -times if times is not None else np.random.default_rng(self.seed).random(len(users))
        order = np.lexsort((recency, users.numpy()))
        users_sorted, items_sorted = users.numpy()[order], self.item_vocab_index[items].numpy()[order]
        starts = np.searchsorted(users_sorted, users_sorted, side="left")
        position = np.arange(len(users_sorted)) - starts
        keep = position < max_len
        table = np.zeros((len(self.user_rows), max_len), dtype=np.int64)
        table[users_sorted[keep], position[keep]] = items_sorted[keep]
        return torch.from_numpy(table)

    # ------------------------------------------------------------------ loaders of index tensors
    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        rows = IndexBatches(len(self.train_pairs), self.batch_size, shuffle=True, seed=self.seed, drop_last=True, rank=rank, world_size=world)
        if len(rows) == 0:
            raise ValueError(f"batch_size={self.batch_size} is larger than the {len(self.train_pairs)} training interactions per process")
        # A run resumed at epoch e shuffles as epoch e would have, not as epoch 0.
        rows.epoch = self.trainer.current_epoch if getattr(self, "trainer", None) is not None else 0
        return DataLoader(_Tagged(rows, "train"), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world = self._rank()
        users = self.eval_users[split][rank::world]
        return DataLoader(_Tagged(users.split(self.eval_batch_size), split), batch_size=None)

    # ------------------------------------------------------------------ gathering on the device
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> Batch | EvalBatch:
        device = batch["rows"].device
        if self._device != device:
            self._move_to(device)
        if batch["split"] == "train":
            return self.train_batch(batch["rows"])
        return self.eval_batch(batch["rows"], batch["split"])

    def _move_to(self, device: torch.device) -> None:
        """Moves every column, pair list and CSR to ``device``: once per process, not per batch."""
        self.users.to(device)
        self.items.to(device)
        if self.train_pairs is not None:  # None where pairs are streamed (ShardedDataModule)
            self.train_pairs = self.train_pairs.to(device)
        self.item_vocab_index = self.item_vocab_index.to(device)
        self.item_log_q = self.item_log_q.to(device)
        self.known = {k: v.to(device) for k, v in self.known.items()}
        self.candidates = {k: None if v is None else v.to(device) for k, v in self.candidates.items()}
        self.trained_items = self.trained_items.to(device)
        self.heldout = {k: v.to(device) for k, v in self.heldout.items()}
        if self.history_name:
            self.history = {k: v.to(device) for k, v in self.history.items()}
        self._device = device

    def train_batch(self, rows: torch.Tensor) -> Batch:
        return self.pairs_batch(*self.train_pairs[rows].unbind(1))

    def pairs_batch(self, users: torch.Tensor, items: torch.Tensor) -> Batch:
        """The training batch of (user row, item row) pairs."""
        query = self.users.gather(users)
        if self.history_name:
            history = self.history["val"][users]  # (B, L)
            # The target must never be visible in its own history.
            query[self.history_name] = history.masked_fill(history == self.item_vocab_index[items].unsqueeze(1), 0)
        candidate = self.items.gather(items)
        if self.id_dropout:
            self._drop_ids(query, self.schema.query)
            self._drop_ids(candidate, self.schema.candidate)
        if self.new_user_rate:
            self._present_as_new_users(query, torch.rand(len(users), device=users.device) < self.new_user_rate)
        known = torch.stack(self.known["val"].gather(users)) if self.mask_known_positives else None  # (2, nnz): train items of each row's user
        if not self.num_negatives:
            return Batch(query, candidate, users, items, self.item_log_q[items], known_items=known)
        # Uniform draws from the trained items; cold items are never pushed down as negatives.
        picks = torch.randint(len(self.trained_items), (self.num_negatives,), device=users.device)
        negative_ids = self.trained_items[picks]
        negatives = self.items.gather(negative_ids)
        if self.id_dropout:
            self._drop_ids(negatives, self.schema.candidate)
        # Any item can enter a column either way, so every column is corrected by its mixed
        # proposal probability: batch_size * p_unigram + num_negatives / n_trained_items.
        mixed_log_q = torch.logaddexp(self.item_log_q + math.log(len(users)), torch.tensor(math.log(self.num_negatives / len(self.trained_items)), device=users.device))
        return Batch(query, candidate, users, items, mixed_log_q[items], negatives, negative_ids, mixed_log_q[negative_ids], known_items=known)

    def _drop_ids(self, features: Features, specs) -> None:
        for spec in specs:
            if spec.kind == "id":
                ids = features[spec.name]
                features[spec.name] = ids.masked_fill(torch.rand(ids.shape, device=ids.device) < self.id_dropout, 0)

    def _present_as_new_users(self, query: Features, new: torch.Tensor) -> None:
        """Rows where ``new`` (B,) is True lose their user ids and history (0 = out of vocabulary / padding)."""
        for spec in self.schema.query:
            if spec.kind in ("id", "history"):
                values = query[spec.name]
                query[spec.name] = values.masked_fill(new.view(-1, *[1] * (values.dim() - 1)), 0)

    def eval_batch(self, users: torch.Tensor, split: str) -> EvalBatch:
        query = self.users.gather(users)
        if self.history_name:
            query[self.history_name] = self.history[split][users]
        exclude = torch.stack(self.known[split].gather(users))
        targets = torch.stack(self.heldout[split].gather(users))
        return EvalBatch(query, users, exclude, targets, candidates=self.candidates[split])

    def catalogue(self, chunk_size: int = 65536) -> Iterator[Features]:
        """Every item's features, in chunks, on the store's device."""
        for start in range(0, len(self.items), chunk_size):
            rows = torch.arange(start, min(start + chunk_size, len(self.items)), device=self.items.device)
            yield self.items.gather(rows)


class _Tagged(IterableDataset):
    """Tags each index tensor with its split, so the device-side hook knows what to gather."""

    def __init__(self, batches, split: str):
        self.batches, self.split = batches, split

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for rows in self.batches:
            yield {"split": self.split, "rows": rows}
