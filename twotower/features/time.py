"""``time`` and ``request_time``: when something happened, as the age it has at the data's end, log-bucketed.

``time`` reads a table column of timestamps (an item's release date, a user's sign-up); ``request_time``
is the time a recommendation is asked for, which no table holds: in training each pair's interaction
time, at evaluation the end of the data known before the split, at serving the request's ``now``
(default: the artifact's data end). With both, the dot product can learn what a request at a given
time prefers among items of a given age (YouTube's "example age", Covington et al. 2016): a request
after the training data reads as the latest bucket, as serving at the data end does.

The tower holds the bucketing: its input is the raw time in Unix seconds (float64, NaN = missing), the
encoder turns it into the age ``reference - t`` in days, where ``reference`` is the latest time seen in
training, and embeds ``1 + floor(log2(1 + age))``: the last day, then 1-3, 3-7, 7-15 ... days before,
clipped to the oldest bucket training saw; a time after ``reference`` is age 0. Days are the unit
because freshness is a matter of days, and log2 buckets give the recent past, where most of a
catalogue's turnover is, the finest resolution. ``calendar: true`` adds the hour of the day and the day
of the week (UTC) of the time, for traffic that follows the clock.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from twotower.data.tables import TIME, timestamp_seconds
from twotower.data.vocab import Vocabulary
from twotower.features.base import FeatureKind, FeatureSpec, FittedFeature, Preprocessor, ServingInput, register_kind
from twotower.features.columns import column

DAY = 86400.0
HOURS, WEEKDAYS = 24, 7
#: 1970-01-01 was a Thursday: Unix day d is weekday (d + 3) % 7 with Monday = 0, as ``datetime.weekday``.
EPOCH_WEEKDAY = 3


def age_bucket_count(oldest_age_seconds: float) -> int:
    """Buckets of ages up to ``oldest_age_seconds`` (bucket 1 = the last day)."""
    return 1 + int(math.floor(math.log2(1.0 + max(oldest_age_seconds, 0.0) / DAY)))


class TimeEncoder(nn.Module):
    """(B,) float64 Unix seconds, NaN = missing -> (B, dim): the embedding of the log2-day age bucket at
    ``reference`` (row 0: missing), plus with ``calendar`` the hour-of-day and day-of-week embeddings.

    Args:
        reference: the latest time seen in training; ages count back from it.
        buckets: age buckets (``age_bucket_count`` of the oldest training age); older times take the last.
    """

    def __init__(self, reference: float, buckets: int, dim: int, calendar: bool = False):
        super().__init__()
        # Plain floats and ints: constants of any exported graph.
        self.reference, self.buckets, self.calendar, self.out_dim = float(reference), int(buckets), bool(calendar), dim
        self.age = nn.Embedding(self.buckets + 1, dim)
        nn.init.normal_(self.age.weight, std=0.05)
        if self.calendar:  # row 0 of each: missing
            self.hour, self.weekday = nn.Embedding(HOURS + 1, dim), nn.Embedding(WEEKDAYS + 1, dim)
            nn.init.normal_(self.hour.weight, std=0.05)
            nn.init.normal_(self.weekday.weight, std=0.05)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.double()  # float32 seconds since 1970 are 64-128 s apart: enough for days, not for the hour at a boundary
        missing = torch.isnan(t)
        days = ((self.reference - t) / DAY).clamp(min=0.0).nan_to_num(0.0)
        bucket = (1 + torch.floor(torch.log2(1.0 + days))).clamp(max=self.buckets).long().masked_fill(missing, 0)
        out = self.age(bucket)
        if self.calendar:
            seconds = t.nan_to_num(0.0)
            hour = (torch.remainder(seconds, DAY) // 3600).long() + 1
            weekday = torch.remainder(torch.floor(seconds / DAY) + EPOCH_WEEKDAY, WEEKDAYS).long() + 1
            out = out + self.hour(hour.masked_fill(missing, 0)) + self.weekday(weekday.masked_fill(missing, 0))
        return out


def times_of(values: pd.Series, spec: FeatureSpec, table: str) -> np.ndarray:
    """A column of times as float64 Unix seconds, missing cells NaN: numbers are seconds already, datetimes and
    date strings (``"1998-04-22"``) are converted; errors name the table, column, row and value."""
    is_time = pd.api.types.is_datetime64_any_dtype(values) or isinstance(values.dtype, pd.DatetimeTZDtype)
    if not is_time and not pd.api.types.is_numeric_dtype(values) and pd.to_numeric(values.dropna(), errors="coerce").isna().any():
        parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")  # vectorised
        bad = parsed.isna().to_numpy() & values.notna().to_numpy()
        if bad.any():  # other layouts ("22 Apr 1998"), one cell at a time
            parsed[bad] = pd.to_datetime(values[bad], utc=True, errors="coerce", format="mixed")
            bad = parsed.isna().to_numpy() & values.notna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"{table}: time column '{spec.source_column}' has the value {values.iloc[row]!r} at row {row}, "
                             "which is neither Unix seconds nor a date")
        values = parsed
    return timestamp_seconds(values, table, spec.source_column, allow_missing=True).to_numpy(dtype=np.float64, copy=True)


class TimeKind(FeatureKind):
    """``time``: a table column of timestamps."""

    name = "time"
    fields = ("calendar",)

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        t = times_of(column(frame, spec, table), spec, table)
        t = t[np.isfinite(t)]
        if t.size == 0:
            raise ValueError(f"{table}: time column '{spec.source_column}' has no values in the train split")
        reference = float(t.max())
        return FittedFeature(spec, state={"reference": reference, "buckets": age_bucket_count(reference - float(t.min()))})

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        return torch.from_numpy(times_of(column(frame, fitted.spec, table), fitted.spec, table))  # (n,) raw: the encoder buckets

    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        return {"name": fitted.spec.name, "kind": self.name, "dim": dim, "reference": fitted.state["reference"],
                "buckets": fitted.state["buckets"], "calendar": fitted.spec.calendar}

    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        return TimeEncoder(spec["reference"], spec["buckets"], spec["dim"], spec.get("calendar", False))

    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        return torch.full((n,), math.nan, dtype=torch.float64)

    def forget(self, features: dict[str, torch.Tensor], name: str, rows: torch.Tensor) -> None:
        features[name] = features[name].masked_fill(rows, math.nan)

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "float64", (None,), "float64 Unix seconds (UTC), NaN = missing (the tower buckets the age "
                            "at the reference, the latest training time, by log2 days)", self._in_tower(fitted))

    @staticmethod
    def _in_tower(fitted: FittedFeature) -> dict[str, Any]:
        return {"reference": fitted.state["reference"], "age_buckets": fitted.state["buckets"], "calendar": fitted.spec.calendar}


class RequestTimeKind(TimeKind):
    """``request_time``: the time the recommendation is for; fitted on the training interactions' times."""

    name = "request_time"
    query_only = True
    per_request = True

    def check(self, spec: FeatureSpec) -> None:
        if spec.column is not None:
            raise ValueError(f"feature '{spec.name}' of kind request_time reads no column (column='{spec.column}'): it is each "
                             f"interaction's '{TIME}' in training and the request's time at serving; use kind time for a table column")

    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        if TIME not in frame.columns:
            raise ValueError(f"feature '{spec.name}' of kind request_time needs the interactions' '{TIME}' column; {table} has none")
        return replace(super().fit(FeatureSpec(spec.name, "time", TIME, calendar=spec.calendar), frame, table, ids), spec=spec)

    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        raise ValueError(f"feature '{fitted.spec.name}' of kind request_time is not read from a table column: it is the time of each request")

    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        return ServingInput(fitted.spec.name, "float64", (None,), "float64 Unix seconds (UTC) of the request, the same for every row "
                            "of a batch asked for now (the tower buckets its age at the reference, the latest training time)",
                            self._in_tower(fitted))


register_kind(TimeKind())
register_kind(RequestTimeKind())
