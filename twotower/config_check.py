"""Refuse a composed config whose keys or values would not reach what they configure.

Hydra composes any key that ``+`` adds and any value an override parses to, so a typo
(``+modle.output_dim=8``) runs and is silently ignored, and a wrong type (``loss.temperature=abc``)
fails deep inside a run, if at all. This checks every node before any work, against what receives
it: a ``_target_`` node against its callable's signature, the root against the schema dataclasses
below, and ``loss`` / ``module`` against ``TwoTowerModule``'s arguments. The signatures are the
schema (rather than dataclasses registered with Hydra's ConfigStore, which would repeat every
argument of every class a config can point at, and drift from them).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import enum
import inspect
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from twotower.constraints import ABOVE_0, AT_LEAST_0, AT_LEAST_1, EPOCHS, SEED, Allowed, ArgumentsOf
from twotower.index import IndexSpec

# Ranges of arguments of classes that are not ours (so not annotated with them), by qualified-name prefix.
THIRD_PARTY_RANGES = {
    "pytorch_lightning.trainer.trainer.Trainer": {"max_epochs": EPOCHS},
    "torch.optim.": {"lr": ABOVE_0, "weight_decay": AT_LEAST_0},
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping": {"patience": AT_LEAST_0},
}
# Keys Hydra's instantiate reads itself.
HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
MISSING = "???"


class ConfigError(ValueError):
    """A composed config with settings that would not apply; the message lists each one."""


@dataclass
class Monitor:
    metric: str
    mode: Literal["min", "max"]


@dataclass
class Paths:
    output_dir: str


# train.py passes the towers, both optimizers and the monitored metric (from monitor:) to the module itself.
ModuleArguments = Annotated[dict, ArgumentsOf("twotower.module.TwoTowerModule", ("model", "optimizer", "table_optimizer", "monitor", "monitor_mode"))]


@dataclass
class TrainConfig:
    """conf/train.yaml's keys: groups are ``_target_`` nodes (or maps of them), checked against their targets."""

    seed: Annotated[int, SEED]
    test: bool
    verbose: bool
    ckpt_path: str | None
    monitor: Monitor
    paths: Paths
    optimizer: Callable
    table_optimizer: Callable | None
    loss: ModuleArguments
    module: ModuleArguments
    data: Callable
    model: Callable
    trainer: Callable
    logger: dict[str, Callable] | None
    callbacks: dict[str, Callable] | None


@dataclass
class ExportConfig:
    """conf/export.yaml's keys."""

    checkpoint: str
    output_dir: str
    device: str
    chunk_size: Annotated[int, AT_LEAST_1]
    eval_queries: Annotated[int, AT_LEAST_1]
    torchscript: bool
    torch_export: bool
    onnx: bool
    verbose: bool
    index: IndexSpec


def check_config(cfg: DictConfig | dict, schema: type) -> None:
    """Raises ``ConfigError`` naming every key that is unknown where it is set, of the wrong type, or missing.

    Args:
        cfg: the composed config (the ``hydra`` node, if present, is Hydra's own and skipped).
        schema: ``TrainConfig`` or ``ExportConfig``.
    """
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    tree.pop("hydra", None)
    problems = _check(tree, schema, "")
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"the config has {len(problems)} problem(s); nothing was run:\n{lines}")


def _check(value: Any, hint: Any, key: str) -> list[str]:
    if value == MISSING:
        return [f"{key} is required: set {key}=..."]
    if isinstance(value, dict) and "_target_" in value:
        return _check_call(value, value["_target_"], key)
    receiver = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, ArgumentsOf)), None)
    if receiver and value is not None:  # None: an optional block left out (index.large), checked against its type below
        return _check_arguments(value, get_object(receiver.receiver), key, receiver.given)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _check_fields(value, hint, key)
    if conforms(value, hint) is False:
        return [f"{_show(key, value)}: expected {_type_name(hint)}"]
    allowed = out_of_range(value, hint)
    if allowed:
        return [f"{_show(key, value)}: must be {allowed}"]
    return _check_children(value, hint, key)


def _check_children(value: Any, hint: Any, key: str) -> list[str]:
    """Nested ``_target_`` nodes inside lists and maps are checked against their own targets."""
    if isinstance(value, dict):
        inner = _element_hint(hint, 1)
        return [p for k, v in value.items() for p in _check(v, inner, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        inner = _element_hint(hint, 0)
        return [p for i, v in enumerate(value) for p in _check(v, inner, f"{key}[{i}]")]
    return []


def _check_fields(value: dict, schema: type, key: str) -> list[str]:
    hints = typing.get_type_hints(schema, include_extras=True)
    problems = [_unknown(key, name, list(hints), None) for name in value if name not in hints]
    for name, hint in hints.items():
        if name in value:
            problems += _check(value[name], hint, f"{key}.{name}" if key else name)
    return problems


def _check_call(value: dict, target: Any, key: str) -> list[str]:
    where = f"{key}._target_" if key else "_target_"
    try:
        receiver = get_object(target) if isinstance(target, str) else target
    except Exception as error:  # noqa: BLE001 - any import failure is reported with the key
        return [f"{where}={target!r} cannot be imported: {error}"]
    return _check_arguments({k: v for k, v in value.items() if k not in HYDRA_KEYS}, receiver, key, ())


def _check_arguments(value: Any, receiver: Callable, key: str, given: tuple[str, ...]) -> list[str]:
    if not isinstance(value, dict):
        return [f"{_show(key, value)}: expected a map of {_name(receiver)}'s arguments"]
    try:
        parameters = inspect.signature(receiver).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return []
    hints = _hints(receiver)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [n for n, p in parameters.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) and n not in given]
    problems = []
    for name, item in value.items():
        if name in accepted:
            problems += _check(item, hints.get(name, Any), f"{key}.{name}" if key else name)
        elif name in given or not open_ended:
            problems.append(_unknown(key, name, accepted, _name(receiver)))
    return problems


def _hints(receiver: Callable) -> dict[str, Any]:
    """Resolved annotations of ``receiver``'s arguments (with their ``Allowed`` ranges, and those of
    ``THIRD_PARTY_RANGES``); none where they cannot be resolved (then only names are checked)."""
    function = receiver.__init__ if inspect.isclass(receiver) else receiver
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception:  # noqa: BLE001 - e.g. a name imported only for type checkers
        hints = {}
    # A subclass of a third-party class (twotower.callbacks.EarlyStopping) takes its base's ranges.
    owners = {f"{getattr(c, '__module__', '')}.{getattr(c, '__qualname__', '')}" for c in getattr(receiver, "__mro__", (receiver,))}
    for prefix, ranges in THIRD_PARTY_RANGES.items():
        if any(owner.startswith(prefix) for owner in owners):
            hints.update({name: Annotated[hints.get(name, Any), allowed] for name, allowed in ranges.items()})
    return hints


def out_of_range(value: Any, hint: Any) -> str | None:
    """The description of the ``Allowed`` range ``value`` falls outside of (in ``hint`` or, for a list, its elements), else None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        for allowed in (m for m in hint.__metadata__ if isinstance(m, Allowed)):
            if number and not allowed.test(value):
                return allowed.description
        return out_of_range(value, args[0])
    if origin in (Union, types.UnionType):
        return next((found for arg in args if (found := out_of_range(value, arg))), None)
    if isinstance(value, (list, tuple)) and args:
        return next((found for item in value if (found := out_of_range(item, _element_hint(hint, 0)))), None)
    return None


def conforms(value: Any, hint: Any) -> bool | None:
    """Whether a config value can be passed where ``hint`` is annotated: True, False, or None (cannot tell).

    Only False refuses a value, so an annotation this does not understand never blocks a run.
    """
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return conforms(value, args[0])
    if origin in (Union, types.UnionType):
        results = [conforms(value, arg) for arg in args]
        return True if True in results else (None if None in results else False)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if inspect.isclass(hint) and issubclass(hint, enum.Enum):
        return value in [m.name for m in hint] or value in [m.value for m in hint]
    container = origin or hint
    if container in (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection):
        if not isinstance(value, (list, tuple)):
            return False
        return _all(conforms(v, _element_hint(hint, 0)) for v in value)
    if container in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        if not isinstance(value, dict):
            return False
        return _all(conforms(v, _element_hint(hint, 1)) for v in value.values())
    if container is collections.abc.Callable:
        # A config can only name a callable through a _target_ node.
        return isinstance(value, dict) and "_target_" in value
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    if isinstance(value, dict) and "_target_" in value:
        return True
    if inspect.isclass(hint):
        # Hydra passes paths as strings, and every path argument takes one.
        return isinstance(value, hint) or (isinstance(value, str) and issubclass(hint, (os.PathLike, PurePath)))
    return None


def _all(results: Any) -> bool | None:
    results = list(results)
    return False if False in results else (None if None in results else True)


def _element_hint(hint: Any, position: int) -> Any:
    """The element type of ``list[X]`` / ``Sequence[X]`` (position 0) or the value type of ``dict[K, V]`` (1)."""
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [_element_hint(a, position) for a in args if a is not type(None)]
        return inner[0] if len(inner) == 1 else Any
    if not args:
        return Any
    return args[min(position, len(args) - 1)]


def _unknown(key: str, name: str, accepted: list[str], receiver: str | None) -> str:
    """A key nothing reads: where it was set, the closest accepted names, and every accepted name."""
    full = f"{key}.{name}" if key else name
    close = " or ".join(f"'{c}'" for c in difflib.get_close_matches(name, accepted, n=2))
    suggestion = f" (did you mean {close}?)" if close else ""
    what = f"{receiver} takes no argument '{name}'" if receiver else "unknown key"
    return f"{full}: {what}{suggestion}; {'it takes' if receiver else 'known keys'}: {', '.join(sorted(accepted)) or 'none'}"


def _show(key: str, value: Any) -> str:
    return f"{key}={value!r}"


def _name(receiver: Any) -> str:
    return getattr(receiver, "__qualname__", None) or str(receiver)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Annotated:
        return _type_name(typing.get_args(hint)[0])
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
