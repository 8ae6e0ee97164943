"""``SampleRecommendations``: a few validation users' top items, with titles, after training."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch

from twotower.data.tables import ITEM, USER
from twotower.task.popularity_prior import with_column
from twotower.task.retrieval import encode_catalogue, rank
from twotower.tracking import log_table

FILE = "sample_recommendations.csv"


class SampleRecommendations(pl.Callback):
    """After ``fit``, ranks the whole catalogue for the first ``n_users`` validation users.

    Writes ``sample_recommendations.csv`` (user, rank, item id, score, whether the item is one of
    the user's held-out validation items, and the items table's ``columns``) and logs it as a
    table to W&B: a look at what the model recommends, next to the numbers.

    Args:
        dirpath: where the CSV goes (the run directory).
        n_users: validation users shown (the first ones, so runs can be compared).
        k: recommendations per user.
        columns: items-table columns shown next to the ids (e.g. title, genres); missing ones are skipped.
    """

    def __init__(self, dirpath: str | Path, n_users: int = 5, k: int = 10, columns: Sequence[str] = ("title", "genres")):
        self.dirpath, self.n_users, self.k, self.columns = Path(dirpath), n_users, k, list(columns)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        table = self.recommendations(pl_module, trainer.datamodule)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        table.to_csv(self.dirpath / FILE, index=False)
        log_table(trainer.loggers, "sample_recommendations", table)

    @torch.no_grad()
    def recommendations(self, pl_module: pl.LightningModule, datamodule: pl.LightningDataModule) -> pd.DataFrame:
        """One row per (user, rank), best first, ranked as the validation ranks: known (train) items never, and only candidate items."""
        was_training = pl_module.training
        pl_module.eval()
        users = datamodule.prepared.eval_users["val"][: self.n_users].to(datamodule.data.items.device)
        batch = datamodule.eval_batch(users, "val")
        catalogue = encode_catalogue(pl_module.model.encode_candidate, datamodule.catalogue())  # (n_items, D)
        query = pl_module.model.encode_query(batch.query)  # (U, D)
        prior = pl_module.popularity_prior
        if prior.active:  # the blend validation kept, as export serves it: [q, w(u)] . [c, z]
            catalogue = with_column(catalogue, pl_module.item_popularity("val"))
            query = with_column(query, prior.user_weights(datamodule.data.known["val"].row_lengths(users)))
        # The evaluation's ranking: known items excluded, and only the split's candidates (cold-start protocols).
        top = rank(query, catalogue, self.k, batch.exclude, batch.candidates)
        pl_module.train(was_training)

        heldout = set(zip(batch.targets[0].tolist(), batch.targets[1].tolist()))
        items = datamodule.prepared.tables.items
        shown = [c for c in self.columns if c in items.columns and c != ITEM]
        rows = []
        for position, (user, item_rows, item_scores) in enumerate(zip(users.tolist(), top.indices.tolist(), top.values.tolist())):
            ranked = [(row, score) for row, score in zip(item_rows, item_scores) if score > float("-inf")]  # fewer candidates than k
            for place, (row, score) in enumerate(ranked, start=1):
                rows.append({
                    USER: datamodule.prepared.user_rows[user],
                    "rank": place,
                    ITEM: datamodule.prepared.item_rows[row],
                    "score": round(score, 4),
                    "held_out": (position, row) in heldout,
                    **{c: items[c].iat[row] for c in shown},
                })
        return pd.DataFrame(rows)
