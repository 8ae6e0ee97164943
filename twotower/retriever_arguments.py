"""The Retriever's arguments, checked before any work; each refusal names the argument and its value.

Ids are normalised the way the vocabularies' keys were built (``twotower.data.vocab._key``): 7, 7.0,
np.int64(7) and "7" are one id. None, NaN and pd.NA are no id at all: an unknown user or item, never
a match for a user named "None" or "nan". Ids have at most ``MAX_ID_CHARS`` characters.

Every check is O(batch): the serving path pays for reading its arguments once, and nothing else.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from twotower.artifact import MAX_ID_CHARS
from twotower.data.vocab import _key
from twotower.rerank import Rerank

ID_TYPES = (str, int, float, np.integer, np.floating)  # np.str_ is a str


def is_sequence(value: Any) -> bool:
    """A list-like of values; strings are not (``"50"`` is one id, not the ids '5' and '0')."""
    return isinstance(value, (list, tuple, np.ndarray, pd.Series, pd.Index))


def is_missing(value: Any) -> bool:
    """None, NaN or pd.NA: how a table (or a caller) says "no value"."""
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value))


def id_key(value: Any, name: str) -> str | None:
    """One id as its key; None for a missing id.

    Raises:
        TypeError: ``value`` is not a string or a number (bools and bytes included: their text is not an id).
        ValueError: the id has more than ``MAX_ID_CHARS`` characters, or is not Unicode text.
    """
    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, ID_TYPES):
        raise TypeError(f"{name} is {type(value).__name__} {short(value)}; an id is a string or a number")
    key = str(_key(value))
    if len(key) > MAX_ID_CHARS:
        raise ValueError(f"{name} is an id of {len(key)} characters; ids have at most {MAX_ID_CHARS} (MAX_ID_CHARS)")
    if not is_text(key):
        raise ValueError(f"{name} is {short(key)}, not valid Unicode text (a lone surrogate or a code point beyond U+10FFFF)")
    return key


def is_text(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8 (Python strings, and numpy's, may hold code points no encoding has)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def id_list(value: Any, name: str) -> list[str | None]:
    """A sequence of ids (list, tuple, 1-d array, Series, Index) as keys, None where an id is missing.

    Raises:
        TypeError: ``value`` is a bare string or not a 1-d sequence, or an element is not an id.
        ValueError: an id is too long.
    """
    require_list(value, name)
    return [id_key(v, f"{name}[{i}]") for i, v in enumerate(value)]


def require_list(value: Any, name: str) -> None:
    """Raises TypeError naming ``name`` unless ``value`` is a sequence (a bare string is not one)."""
    if not is_sequence(value) or (isinstance(value, np.ndarray) and value.ndim == 0):
        hint = "; a bare string would be read as its characters: wrap one id in a list" if isinstance(value, (str, bytes)) else ""
        raise TypeError(f"{name} must be a list of ids, got {type(value).__name__} {short(value)}{hint}")


def top_k(k: Any, available: int, name: str = "k") -> int:
    """``k`` as an int, capped at ``available`` (the catalogue size): asking for more items than exist returns all of them.

    Raises:
        TypeError: ``k`` is not an integer (bools are refused: ``True`` is not a count).
        ValueError: ``k`` < 1.
    """
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {type(k).__name__} {short(k)}")
    if k < 1:
        raise ValueError(f"{name}={k} must be a positive integer")
    return int(min(k, available))


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {short(value)}")
    return bool(value)


def positive_number(value: Any, name: str) -> float:
    """A finite number > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__} {short(value)}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value} must be a finite number > 0")
    return float(value)


def finite_number(value: Any, name: str, at_least: float | None = None) -> float:
    """A finite number (>= ``at_least`` where given)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a finite number, got {type(value).__name__} {short(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} must be a finite number")
    if at_least is not None and value < at_least:
        raise ValueError(f"{name}={value} must be at least {at_least:g}")
    return float(value)


def rerank_of(value: Any, k: int) -> Rerank | None:
    """None or a ``Rerank`` (which checks its own fields) that fetches at least the ``k`` items it picks from."""
    if value is None:
        return None
    if not isinstance(value, Rerank):
        raise TypeError(f"rerank must be a twotower.rerank.Rerank or None, got {type(value).__name__} {short(value)}")
    if value.fetch < k:
        raise ValueError(f"rerank.fetch={value.fetch} must be at least k={k}: the re-ranker picks k items from the fetched ones")
    return value


def data_frame(value: Any, name: str) -> pd.DataFrame:
    if not isinstance(value, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(value).__name__} {short(value)}")
    return value.reset_index(drop=True)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut: an error message must not echo a megabyte argument."""
    if isinstance(value, (pd.DataFrame, pd.Series, np.ndarray)):
        return f"of shape {value.shape}"
    text = repr(value[: limit + 1] if isinstance(value, (str, bytes)) else value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
