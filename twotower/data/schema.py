"""The schema: which features feed which tower (each a ``FeatureSpec`` of a registered kind)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twotower.features import FeatureSpec, kind_of

SIDES = ("query", "candidate")


@dataclass(frozen=True)
class Schema:
    """The features of both towers. Identity features (kind ``id``) are dropped when ``use_ids`` is false."""

    query: tuple[FeatureSpec, ...]
    candidate: tuple[FeatureSpec, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def side(self, side: str) -> tuple[FeatureSpec, ...]:
        if side not in SIDES:
            raise ValueError(f"unknown tower side '{side}' (sides: {SIDES})")
        return getattr(self, side)

    def history_name(self) -> str | None:
        """The query side's history feature (built from the interactions), if any."""
        return next((s.name for s in self.query if kind_of(s.kind).from_interactions), None)

    @classmethod
    def from_config(cls, features: Mapping[str, Sequence[Mapping[str, Any]]], use_ids: bool = True) -> Schema:
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
                kind = kind_of(spec.kind)
                if kind.query_only and side != "query":
                    raise ValueError(f"{spec.kind} feature '{spec.name}' must be on the query side")
                if kind.identity and not use_ids:
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
