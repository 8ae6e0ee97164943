"""The ceiling and a simple reference of a generated MIND data set: the planted click probabilities
(the oracle) and the share of a line's history in the candidate's category (the overlap heuristic).

The generator (``twotower.datasets.mind.generator``) writes what it planted to ``<dir>/planted.json``:
each user's liking of every category, each news item's category and quality, and the parameters of

    p(click) = (1 - click_noise) * sigmoid(LIKING_WEIGHT * log(liking * n_categories)
                                           + QUALITY_WEIGHT * log(quality) + BIAS)
               + click_noise * base_rate[directory]

No scorer can rank the shown items better than that probability does, so its impression AUC is the
figure every model on the data set sits under. Both scorers are read against the behaviors.tsv lines
through the project's impression metrics, so their numbers compare with a model's.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from twotower.datasets.mind.source import read_behaviors, read_news
from twotower.task.impression_metrics import impression_metrics

PLANTED_FILE = "planted.json"
LIKING_WEIGHT, QUALITY_WEIGHT, BIAS = 1.6, 0.8, -5.5  # about 1.6 clicks in 37 shown, as in MIND-small


def click_logit(liking: np.ndarray, quality: np.ndarray, n_categories: int) -> np.ndarray:
    """The preference part of the click log-odds, for a user's liking of the item's category.

    ``liking * n_categories`` is 0.1 for a category the user does not like and up to about 10 for
    the one they like most, so the liking term spans about 7 nats and outweighs quality's.
    """
    affinity = liking * n_categories
    return LIKING_WEIGHT * np.log(affinity) + QUALITY_WEIGHT * np.log(quality) + BIAS


def click_probability(logit: np.ndarray, click_noise: float, base_rate: float) -> np.ndarray:
    """The planted click probability: a ``click_noise`` share of clicks ignores preferences and
    falls at the split's mean rate, so the click count stays about the same as noise grows."""
    return (1.0 - click_noise) / (1.0 + np.exp(-logit)) + click_noise * base_rate


def load_planted(directory: str | Path) -> dict:
    path = Path(directory) / PLANTED_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: only data written by twotower.datasets.mind.generator has a planted truth")
    return json.loads(path.read_text())


def oracle_scores(planted: dict, behaviors: pd.DataFrame, directory: str = "dev") -> np.ndarray:
    """The planted click probability of every shown entry of ``behaviors`` (line by line, flat)."""
    names = planted["categories"]
    position = {name: k for k, name in enumerate(names)}
    users = [u for u, shown in zip(behaviors["user_id"], behaviors["news"]) for _ in shown]
    news = np.concatenate([np.asarray(shown) for shown in behaviors["news"]])
    category = np.array([position[planted["news"][n]["category"]] for n in news])
    liking = np.array([planted["users"][u][k] for u, k in zip(users, category)])
    quality = np.array([planted["news"][n]["quality"] for n in news])
    rule = planted["click_probability"]
    return click_probability(click_logit(liking, quality, len(names)), rule["click_noise"], rule["base_rate"][directory])


def overlap_scores(behaviors: pd.DataFrame, category: dict[str, str]) -> np.ndarray:
    """The share of each line's history in the shown item's category (0 for an empty history)."""
    out = []
    for history, shown in zip(behaviors["history"], behaviors["news"]):
        counts = Counter(category[n] for n in history)
        out.extend(counts[category[n]] / max(1, len(history)) for n in shown)
    return np.asarray(out, dtype=np.float64)


def line_metrics(behaviors: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    """Mean impression AUC/MRR/nDCG of flat ``scores`` over the lines of ``behaviors``."""
    sizes = behaviors["news"].map(len).to_numpy()
    labels = np.concatenate(behaviors["labels"].to_numpy())
    values = impression_metrics(torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(np.repeat(np.arange(len(sizes)), sizes)))
    out = {name: float(v.mean()) for name, v in values.items()}
    out["impressions"] = len(values["impression_auc"])
    return out


def _behaviors(directory: Path, split: str, impression_ids: set[str] | None) -> pd.DataFrame:
    behaviors = read_behaviors(directory / split / "behaviors.tsv")
    if impression_ids is None:
        return behaviors
    return behaviors[behaviors["impression_id"].isin(impression_ids)].reset_index(drop=True)


def oracle_metrics(directory: str | Path, split: str = "dev", impression_ids: set[str] | None = None) -> dict[str, float]:
    """The oracle's impression metrics on ``<directory>/<split>/behaviors.tsv``.

    Args:
        impression_ids: keep only these lines (their first column), e.g. the validation half of dev.
    """
    behaviors = _behaviors(Path(directory), split, impression_ids)
    return line_metrics(behaviors, oracle_scores(load_planted(directory), behaviors, split))


def overlap_metrics(directory: str | Path, split: str = "dev", impression_ids: set[str] | None = None) -> dict[str, float]:
    """The history-category overlap heuristic's impression metrics (any MIND directory; no planted truth needed)."""
    directory = Path(directory)
    behaviors = _behaviors(directory, split, impression_ids)
    news = pd.concat([read_news(directory / d / "news.tsv") for d in ("train", "dev")])
    return line_metrics(behaviors, overlap_scores(behaviors, dict(zip(news["news_id"], news["category"]))))
