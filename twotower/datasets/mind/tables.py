"""MIND's tables: the clicks, users and news of ``Tables``, plus the impressions and behaviors.tsv's click histories."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from twotower.data.tables import Tables

IMPRESSION = "impression"  # interactions and impressions column: the impression's row in ``impression_meta``
IN_TRAIN = "in_train_news"  # items column: listed in train/news.tsv (False: fresh in dev)


@dataclass
class MindTables(Tables):
    """``Tables`` (clicks as interactions, with an ``impression`` column; news as items, with
    ``IN_TRAIN``) plus what MIND adds.

    Attributes:
        impressions: one row per shown news item: ``impression`` (index into ``impression_meta``),
            ``item_id``, ``label`` (1 = clicked).
        impression_meta: one row per impression: ``impression_id``, ``user_id``, ``timestamp``, ``split``.
        histories: each impression's click history as its behaviors.tsv line gives it (news ids, oldest
            first), indexed like ``impression_meta``.
    """

    impressions: pd.DataFrame | None = None
    impression_meta: pd.DataFrame | None = None
    histories: pd.Series | None = None
