"""What every feature kind provides, the registry of kinds, and the fitted preprocessing of both towers.

A kind (``id``, ``text``, ``history``, ...) is one module of ``twotower.features`` holding everything
about it: which spec fields it reads, fitting on the train split, turning a table column into a
tensor, its encoder, its out-of-vocabulary / missing input and how serving feeds it. Everything
else asks the registry (``kind_of(spec.kind)``), so adding a kind is one file and one
``register_kind`` call, with no if-chain to extend elsewhere.

The fitted state is plain JSON, so an exported artifact can turn raw feature rows (a new user's
profile, a new item's content) into exactly the tensors the towers were trained on.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch
from torch import nn

from twotower.data.tables import ITEM, USER
from twotower.data.vocab import Vocabulary

if TYPE_CHECKING:  # the schema module builds FeatureSpecs, so it imports this one
    from twotower.data.schema import Schema

#: A batch's feature tensors by name, as towers read them.
Features = dict[str, torch.Tensor]

#: Spec fields every kind reads; any other field is read only by the kinds that list it in ``FeatureKind.fields``.
COMMON_FIELDS = ("name", "kind", "column")


@dataclass(frozen=True)
class ServingInput:
    """One input a serving client feeds the query or candidate tower for a feature.

    Attributes:
        name: the key of the input in the tower's feature dict.
        dtype: numpy / torch dtype name (``int64``, ``float32``).
        shape: ``None`` for the batch dimension, then the fixed sizes (``(None, 16)``).
        encoding: one line on what the values mean, e.g. "int64 vocabulary index, 0 = out of vocabulary".
        in_tower: what the tower itself does to the input (JSON), for a client to know it need not,
            e.g. a number's standardisation; empty if nothing.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    encoding: str
    in_tower: Mapping[str, Any] = field(default_factory=dict)


class FeatureKind(abc.ABC):
    """Everything about one kind of feature. Subclass, set ``name`` (the ``kind:`` of a data YAML), and
    ``register_kind`` an instance.

    Conventions every kind keeps: integer inputs are rows of an embedding table (0 = out of
    vocabulary / missing / padding) of the tower config's ``cardinality`` rows, which serving checks
    stored inputs against; float inputs are finite where stored (a ``numeric`` input may be NaN in a
    batch or a request: missing).

    Traits, read by code that treats some kinds specially:
        identity: the feature is the entity's id, so content-only towers (``use_ids: false``) drop
            it, id dropout and new-user rows put it on its out-of-vocabulary path.
        from_interactions: built from the user's interactions (catalogue rows of past items, see
            ``twotower.features.history.history_inputs``), not read from a table column.
        query_only: only the query (user) tower may have it.
        per_request: its value comes with each query, not from a table (``request_time``: each
            interaction's time in training, the split's start at evaluation, ``now`` at serving); it
            is fitted on the training interactions (``Preprocessor.fit_with_ids``'s ``events``).
        shares_item_ids: its encoder reads the candidate tower's item-id embedding table when the
            towers share it (``share_item_embedding``), so it is as wide as that table.
    """

    name: ClassVar[str]
    #: Spec fields beyond ``COMMON_FIELDS`` this kind reads; another kind's spec may not set them.
    fields: ClassVar[tuple[str, ...]] = ()
    identity: ClassVar[bool] = False
    from_interactions: ClassVar[bool] = False
    query_only: ClassVar[bool] = False
    per_request: ClassVar[bool] = False
    shares_item_ids: ClassVar[bool] = False

    @property
    def in_tables(self) -> bool:
        """Whether the feature's values are read from the users or items table (stored per row, exported per user)."""
        return not (self.from_interactions or self.per_request)

    def check(self, spec: FeatureSpec) -> None:  # noqa: B027 - a hook; kinds with nothing to check keep it
        """Raises ValueError naming the feature when a field's value is not one this kind can use."""

    @abc.abstractmethod
    def fit(self, spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None) -> FittedFeature:
        """What the feature learns from ``frame`` (the ``table`` rows of the entities in the train split);
        ``ids`` is the train-split id vocabulary of that table's entities."""

    @abc.abstractmethod
    def transform(self, fitted: FittedFeature, frame: pd.DataFrame, table: str) -> torch.Tensor:
        """The feature of every row of ``frame`` as the encoder reads it; errors name ``table``, the column, the row and the value."""

    @abc.abstractmethod
    def encoder_spec(self, fitted: FittedFeature, preprocessor: Preprocessor, dim: int, options: Mapping[str, Any]) -> dict[str, Any]:
        """The tower config's entry for the feature (plain JSON, ``name`` and ``kind`` included): what
        ``build_encoder`` rebuilds the encoder from. ``dim`` is the embedding width, ``options`` the
        model's encoder options for this kind (``model.text``, ``model.history``; empty if none)."""

    @abc.abstractmethod
    def build_encoder(self, spec: Mapping[str, Any]) -> nn.Module:
        """The encoder of a tower config's entry (``encoder_spec``'s dict): batch tensor -> (B, out_dim), with an ``out_dim`` attribute."""

    @abc.abstractmethod
    def empty(self, fitted: FittedFeature, n: int) -> torch.Tensor:
        """The input of ``n`` rows with nothing known: every value out of vocabulary / missing."""

    @abc.abstractmethod
    def serving_input(self, fitted: FittedFeature) -> ServingInput:
        """What a serving client feeds the tower for this feature."""

    def forget(self, features: dict[str, torch.Tensor], name: str, rows: torch.Tensor) -> None:
        """Puts the feature of the ``rows`` (B,) bool of a batch on its out-of-vocabulary / missing path (a new user's rows)."""
        values = features[name]
        features[name] = values.masked_fill(rows.view(-1, *[1] * (values.dim() - 1)), 0)


_KINDS: dict[str, FeatureKind] = {}


def register_kind(kind: FeatureKind) -> FeatureKind:
    """Makes ``kind`` usable as ``kind: <kind.name>`` in feature specs; returns it.

    Raises:
        ValueError: a kind of that name is registered already.
    """
    if kind.name in _KINDS:
        raise ValueError(f"feature kind '{kind.name}' is registered already (by {type(_KINDS[kind.name]).__name__})")
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Forgets the kind ``name`` (a test's own kind, once the test is done)."""
    kind_of(name)
    del _KINDS[name]


def kind_of(name: str) -> FeatureKind:
    """The registered kind ``name``.

    Raises:
        ValueError: no kind of that name is registered, listing those that are.
    """
    if name not in _KINDS:
        raise ValueError(f"unknown feature kind '{name}' (kinds: {', '.join(registered_kinds())})")
    return _KINDS[name]


def registered_kinds() -> tuple[str, ...]:
    """The names of the registered kinds, in registration order."""
    return tuple(_KINDS)


def build_encoder(spec: Mapping[str, Any]) -> nn.Module:
    """The encoder of one feature entry of a tower config (``name``, ``kind`` and the kind's arguments).

    Raises:
        ValueError: the entry's kind is not registered.
    """
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"no encoder for feature kind '{kind}' (kinds: {', '.join(registered_kinds())})")
    return _KINDS[kind].build_encoder(spec)


@dataclass(frozen=True)
class FeatureSpec:
    """One input feature of a tower.

    Args:
        name: key of the feature in ``batch.query`` / ``batch.candidate``.
        kind: a registered kind (``registered_kinds()``).
        column: source column in the users (query) or items (candidate) table; defaults to ``name``.
            ``history`` features have no column: they are built from the training interactions.
        separator: for ``multi_hot`` string columns such as ``"Action|Comedy"``.
        max_len: tokens kept for ``text``, items kept for ``history``, tags kept for ``multi_hot``.
        missing: what a missing ``numeric`` value does: ``"error"`` (default), ``"mean"`` or ``"zero"``;
            a missing ``dense`` vector: ``"error"`` or anything else for zeros.
        min_count: values seen fewer times than this in training go to the out-of-vocabulary index.
        transform: ``numeric`` pre-transform before standardisation: ``None`` or ``"log1p"``.
        prefix: for ``categorical`` strings, keep only the first ``prefix`` characters (zip-code prefixes).
        hash_buckets: for ``text``, map each token to one of this many hashed ids instead of fitting
            a vocabulary, so words first seen after training (fresh news) still get an embedding.
        through_item_tower: for ``history``, the user tower reads the history items through the item
            tower itself (``ClickHistoryTower``), not through an item-id embedding.
        calendar: for ``time`` and ``request_time``, also embed the hour of the day and the day of the week.

    Each field but ``name``, ``kind`` and ``column`` belongs to the kinds that read it (``FeatureKind.fields``):
    set on another kind's feature it would be silently ignored, so it is refused.
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
    through_item_tower: bool = False
    calendar: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"feature '{self.name}' has unknown kind '{self.kind}' (kinds: {', '.join(registered_kinds())})")
        kind = _KINDS[self.kind]
        for setting in fields(self):
            value = getattr(self, setting.name)
            if setting.name in COMMON_FIELDS or setting.name in kind.fields or value == setting.default:
                continue
            readers = [k.name for k in _KINDS.values() if setting.name in k.fields]
            raise ValueError(f"feature '{self.name}': {setting.name}={value!r} needs kind {' or '.join(readers) or '(none registered)'}, "
                             f"not {self.kind}")
        kind.check(self)

    @property
    def source_column(self) -> str:
        return self.column or self.name


@dataclass
class FittedFeature:
    """A feature spec plus what was learned from the train split (each kind uses the fields it needs).

    ``state`` is plain JSON for what a kind learns beyond a vocabulary, mean, std, dim and max_len
    (say a registered kind's bucket boundaries); written only when set, so the built-in kinds' JSON
    is what it always was.
    """

    spec: FeatureSpec
    vocab: Vocabulary | None = None
    mean: float = 0.0
    std: float = 1.0
    dim: int = 1
    max_len: int = 1
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> FeatureKind:
        return kind_of(self.spec.kind)

    @property
    def cardinality(self) -> int:
        """Rows of the embedding table (OOV row included): the vocabulary's, or 1 + the hash buckets; 0 if neither."""
        if self.spec.hash_buckets:
            return self.spec.hash_buckets + 1
        return len(self.vocab) if self.vocab is not None else 0

    def transform(self, frame: pd.DataFrame, table: str) -> torch.Tensor:
        """The feature of every row of ``frame`` (rows of ``table``) as the encoder reads it."""
        return self.kind.transform(self, frame, table)

    def to_json(self) -> dict[str, Any]:
        data = {
            "spec": dict(vars(self.spec)),
            "vocab": self.vocab.to_json() if self.vocab is not None else None,
            "mean": self.mean, "std": self.std, "dim": self.dim, "max_len": self.max_len,
        }
        return {**data, "state": self.state} if self.state else data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FittedFeature:
        vocab = Vocabulary.from_json(data["vocab"]) if data["vocab"] is not None else None
        return cls(FeatureSpec(**data["spec"]), vocab, data["mean"], data["std"], data["dim"], data["max_len"], dict(data.get("state") or {}))


def fit_feature(spec: FeatureSpec, frame: pd.DataFrame, table: str, ids: Vocabulary | None = None) -> FittedFeature:
    """Fit one feature on ``frame`` (the ``table`` rows of entities seen in training); ``ids`` is their id vocabulary."""
    return kind_of(spec.kind).fit(spec, frame, table, ids)


@dataclass
class Preprocessor:
    """Every fitted feature of both towers, plus the train-split user and item id vocabularies."""

    query: dict[str, FittedFeature]
    candidate: dict[str, FittedFeature]
    user_ids: Vocabulary
    item_ids: Vocabulary

    @classmethod
    def fit(cls, schema: Schema, train: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, names: dict[str, str]) -> Preprocessor:
        """Fits on the users and items of the ``train`` interactions (and per-request features on those interactions)."""
        user_ids = Vocabulary.fit(train[USER].tolist())
        item_ids = Vocabulary.fit(train[ITEM].tolist())
        return cls.fit_with_ids(schema, user_ids, item_ids, users, items, names, events=train)

    @classmethod
    def fit_with_ids(cls, schema: Schema, user_ids: Vocabulary, item_ids: Vocabulary, users: pd.DataFrame, items: pd.DataFrame,
                     names: dict[str, str], events: pd.DataFrame | None = None) -> Preprocessor:
        """Fits the features on the users and items in the train-split id vocabularies (which hold exactly those).

        Args:
            events: the training interactions, which per-request features (``FeatureKind.per_request``) are fitted on.

        Raises:
            ValueError: a per-request feature and no ``events`` (a source that does not give them).
        """
        seen_users = users[users[USER].isin(user_ids.values)]
        seen_items = items[items[ITEM].isin(item_ids.values)]
        query = {}
        for s in schema.query:
            if kind_of(s.kind).per_request:
                if events is None:
                    raise ValueError(f"feature '{s.name}' of kind {s.kind} is fitted on the training interactions' times, and this source "
                                     f"(interactions: {names.get('interactions')}) does not give them to its features: remove the feature")
                query[s.name] = fit_feature(s, events, names["interactions"], user_ids)
            else:
                query[s.name] = fit_feature(s, seen_users, names["users"], user_ids)
        candidate = {s.name: fit_feature(s, seen_items, names["items"], item_ids) for s in schema.candidate}
        return cls(query, candidate, user_ids, item_ids)

    def side(self, side: str) -> dict[str, FittedFeature]:
        return self.query if side == "query" else self.candidate

    def transform(self, side: str, frame: pd.DataFrame, table: str) -> dict[str, torch.Tensor]:
        """Tensors for every table-backed feature of a side (features built from interactions or given per request are not in tables)."""
        return {name: f.transform(frame, table) for name, f in self.side(side).items() if f.kind.in_tables}

    def to_json(self) -> dict[str, Any]:
        return {
            "query": {n: f.to_json() for n, f in self.query.items()},
            "candidate": {n: f.to_json() for n, f in self.candidate.items()},
            "user_ids": self.user_ids.to_json(),
            "item_ids": self.item_ids.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(
            {n: FittedFeature.from_json(f) for n, f in data["query"].items()},
            {n: FittedFeature.from_json(f) for n, f in data["candidate"].items()},
            Vocabulary.from_json(data["user_ids"]),
            Vocabulary.from_json(data["item_ids"]),
        )
