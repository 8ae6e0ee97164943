"""Feature specifications: which column feeds which tower, and as what kind of feature."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

FEATURE_KINDS = ("id", "categorical", "multi_hot", "numeric", "text", "dense", "history")
SIDES = ("query", "candidate")


@dataclass(frozen=True)
class FeatureSpec:
    """One input feature of a tower.

    Args:
        name: key of the feature in ``batch.query`` / ``batch.candidate``.
        kind: one of ``FEATURE_KINDS``.
        column: source column in the users (query) or items (candidate) table; defaults to ``name``.
            ``history`` features have no column: they are built from the training interactions.
        separator: for ``multi_hot`` string columns such as ``"Action|Comedy"``.
        max_len: tokens kept for ``text``, items kept for ``history``, tags kept for ``multi_hot``.
        missing: what a missing numeric value does: ``"error"`` (default), ``"mean"`` or ``"zero"``.
        min_count: values seen fewer times than this in training go to the out-of-vocabulary index.
        transform: numeric pre-transform before standardisation: ``None`` or ``"log1p"``.
        prefix: for categorical strings, keep only the first ``prefix`` characters (zip-code prefixes).
        hash_buckets: for ``text``, map each token to one of this many hashed ids instead of fitting
            a vocabulary, so words first seen after training (fresh news) still get an embedding.
    """

    name: str
    kind: str
    column: str | None = None
    separator: str | None = None
    max_len: int | None = None
    missing: str = "error"
    min_count: int = 1
    transform: str | None = None
    prefix: int | None = None
    hash_buckets: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"feature '{self.name}' has unknown kind '{self.kind}' (kinds: {', '.join(FEATURE_KINDS)})")
        if self.missing not in ("error", "mean", "zero"):
            raise ValueError(f"feature '{self.name}': missing='{self.missing}' is not one of error, mean, zero")
        if self.hash_buckets is not None and (self.kind != "text" or self.hash_buckets < 1):
            raise ValueError(f"feature '{self.name}': hash_buckets={self.hash_buckets} needs kind text and a positive count")
        if self.transform not in (None, "log1p"):
            raise ValueError(f"feature '{self.name}': transform='{self.transform}' is not one of null, log1p")

    @property
    def source_column(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class Schema:
    """The features of both towers. ``id`` features are dropped when ``use_ids`` is false."""

    query: tuple[FeatureSpec, ...]
    candidate: tuple[FeatureSpec, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def side(self, side: str) -> tuple[FeatureSpec, ...]:
        if side not in SIDES:
            raise ValueError(f"unknown tower side '{side}' (sides: {SIDES})")
        return getattr(self, side)

    @classmethod
    def from_config(cls, features: Mapping[str, Sequence[Mapping[str, Any]]], use_ids: bool = True) -> "Schema":
        """Build from ``{"query": [{name, kind, ...}], "candidate": [...]}`` as written in a data YAML."""
        unknown = set(features) - set(SIDES)
        if unknown:
            raise ValueError(f"features has unknown side(s) {sorted(unknown)} (sides: {SIDES})")
        sides = {}
        for side in SIDES:
            specs = []
            for raw in features.get(side) or []:
                raw = dict(raw)
                if "name" not in raw or "kind" not in raw:
                    raise ValueError(f"feature {raw} on the {side} side needs both 'name' and 'kind'")
                try:
                    spec = FeatureSpec(**raw)
                except TypeError as err:
                    raise ValueError(f"feature '{raw.get('name')}' on the {side} side: {err}") from None
                if spec.kind == "history" and side != "query":
                    raise ValueError(f"history feature '{spec.name}' must be on the query side")
                if spec.kind == "id" and not use_ids:
                    continue
                specs.append(spec)
            names = [s.name for s in specs]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{side} features repeat the name(s) {dupes}")
            if not specs:
                raise ValueError(f"the {side} tower has no features (use_ids={use_ids})")
            sides[side] = tuple(specs)
        return cls(query=sides["query"], candidate=sides["candidate"])
