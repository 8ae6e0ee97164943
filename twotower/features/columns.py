"""Reading a feature's table column, shared by the kinds that read one: cells as text, cells as numbers."""
from __future__ import annotations

import numpy as np
import pandas as pd

from twotower.data.tables import require_columns
from twotower.data.vocab import _key
from twotower.features.base import FeatureSpec

MISSING = ("error", "mean", "zero")


def column(frame: pd.DataFrame, spec: FeatureSpec, table: str) -> pd.Series:
    """The feature's source column of ``frame``.

    Raises:
        ValueError: ``table`` has no such column, listing those it has.
    """
    require_columns(frame, [spec.source_column], table)
    return frame[spec.source_column]


def check_missing(spec: FeatureSpec) -> None:
    if spec.missing not in MISSING:
        raise ValueError(f"feature '{spec.name}': missing='{spec.missing}' is not one of {', '.join(MISSING)}")


def text_cells(values: pd.Series, spec: FeatureSpec, table: str) -> pd.Series:
    """A categorical or text column as strings: numbers (all-digit titles a reader parsed as ints, a
    float column given as text) become their text (integral floats without '.0'), missing stays
    missing (None).

    Raises:
        ValueError: a cell holds something other than a string or a number (a list, a dict, bytes),
            naming the table, column, row and value.
    """
    out = np.empty(len(values), dtype=object)
    for row, v in enumerate(values.tolist()):
        if isinstance(v, str):
            out[row] = v
        elif v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and np.isnan(v)):
            out[row] = None
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            out[row] = _key(v)
        else:
            raise ValueError(f"{table}: {spec.kind} column '{spec.source_column}' has the value {v!r} ({type(v).__name__}) "
                             f"at row {row}; {spec.kind} features are strings (use kind multi_hot for lists of tags)")
    return pd.Series(out, index=values.index, name=values.name, dtype=object)


def as_float(values: pd.Series, spec: FeatureSpec, table: str) -> np.ndarray:
    """A numeric column as float64, missing cells NaN.

    Raises:
        ValueError: a cell is not a number, or is infinite, naming the table, column, row and value.
    """
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(x) & values.notna().to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{table}: numeric column '{spec.source_column}' has a non-numeric value {values.iloc[row]!r} at row {row}")
    if np.isinf(x).any():
        row = int(np.argmax(np.isinf(x)))
        raise ValueError(f"{table}: numeric column '{spec.source_column}' has an infinite value {x[row]} at row {row}")
    return x
