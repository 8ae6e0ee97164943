"""Towers save and load themselves: a directory of ``config.json`` + ``model.safetensors`` + ``vocab.json``.

``vocab.json`` is the preprocessing the tower reads (its side's fitted features and id vocabulary),
so a tower directory turns raw feature rows into vectors on its own. Export writes each tower with
``SavedTower.save``; serving rebuilds it with ``build_tower`` from what ``load`` read, whatever its
type: the config names the type (``TOWER_TYPES``), and a tower that reads through another (the
click-history tower reads through the item tower) is given that one as ``items``.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

TOWER_CONFIG = "config.json"
TOWER_WEIGHTS = "model.safetensors"
TOWER_VOCAB = "vocab.json"

#: Tower type name (``config["type"]``) -> class; each class registers itself with ``tower_type``.
TOWER_TYPES: dict[str, type[SavedTower]] = {}


def tower_type(name: str) -> Callable[[type[SavedTower]], type[SavedTower]]:
    """Class decorator: ``name`` is written as the config's ``type`` and read back by ``build_tower``."""
    def register(cls: type[SavedTower]) -> type[SavedTower]:
        cls.type_name = name
        TOWER_TYPES[name] = cls
        return cls
    return register


class SavedTower(nn.Module):
    """A tower that writes and rebuilds itself. Subclasses set ``self.config`` (JSON, with ``type``) in ``__init__``."""

    type_name = ""
    config: dict[str, Any]
    output_dim: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any], items: nn.Module | None = None) -> SavedTower:
        return cls(**{k: v for k, v in config.items() if k != "type"})

    @classmethod
    def features_read(cls, config: Mapping[str, Any]) -> list[str]:
        """The input features a tower of this config reads, each from its side's preprocessing (``vocab.json``)."""
        return [f.get("name") for f in config.get("features", ()) if isinstance(f, Mapping)]

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors this tower owns (not those of a tower it reads through): what ``model.safetensors`` holds."""
        return self.state_dict()

    def save(self, directory: str | Path, preprocessing: Mapping[str, Any]) -> None:
        """Writes ``config.json``, ``model.safetensors`` and ``vocab.json`` (``preprocessing``) into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOWER_CONFIG).write_text(json.dumps(self.config, indent=2, sort_keys=True))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.weights().items()}, str(directory / TOWER_WEIGHTS))
        (directory / TOWER_VOCAB).write_text(json.dumps(preprocessing, indent=2, sort_keys=True))


def tower_class(config: Mapping[str, Any]) -> type[SavedTower]:
    """The class a config names in ``type``.

    Raises:
        ValueError: the config names no known type.
    """
    name = config.get("type", "profile")  # checkpoints written before towers named their type hold profile towers
    if name not in TOWER_TYPES:
        raise ValueError(f"tower type {name!r} is not one of {sorted(TOWER_TYPES)}")
    return TOWER_TYPES[name]


def build_tower(config: Mapping[str, Any], items: nn.Module | None = None) -> SavedTower:
    """The tower a config describes (weights initialised, not loaded); ``items`` is the item tower, for types that read through it."""
    return tower_class(config).from_config(config, items)


def load_tower(config: Mapping[str, Any], weights: Mapping[str, torch.Tensor], items: nn.Module | None = None) -> SavedTower:
    """``build_tower`` and the saved weights: the mirror of ``SavedTower.save``."""
    tower = build_tower(config, items)
    load_weights(tower, weights)
    return tower


def load_weights(tower: SavedTower, weights: Mapping[str, torch.Tensor], assign: bool = False) -> None:
    """Loads what ``tower.weights()`` saved; the tensors of a tower it reads through stay as loaded with that one.

    Raises:
        RuntimeError: the weights do not fit the tower (missing, unexpected or mis-shaped tensors).
    """
    missing, unexpected = tower.load_state_dict(weights, strict=False, assign=assign)
    shared = set(tower.state_dict()) - set(tower.weights())
    missing = [name for name in missing if name not in shared]
    if missing or unexpected:
        raise RuntimeError(f"weights lack tensor(s) {missing[:5]} and hold unexpected tensor(s) {unexpected[:5]}")
