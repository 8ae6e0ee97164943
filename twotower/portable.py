"""The query tower for serving without twotower: ONNX and ``torch.export`` programs, and the signature that documents their inputs.

A tower takes a dict of feature tensors; the portable programs take the same tensors as named
positional inputs (ONNX input names are the dict keys), with the batch and the history length
free. The manifest's ``serving_signature`` says, for each input, its dtype, its shape (symbolic
dimensions by name) and how a client turns raw values into it (vocabulary file and offset, history
order; numbers go in raw, the tower standardises them), so a client needs only the artifact and onnxruntime.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from twotower.features.base import Features, FittedFeature

BATCH, HISTORY_LEN, DISTINCT_ITEMS = "batch", "history_len", "distinct_items"
OUTPUT = "query_vector"
# ONNX's current default opset in torch's exporter; written into the manifest so a runtime can be checked against it.
ONNX_OPSET = 18


class PositionalTower(nn.Module):
    """A tower whose inputs are positional tensors in ``names`` order (what ONNX and ``torch.export`` programs take)."""

    def __init__(self, tower: nn.Module, names: list[str]):
        super().__init__()
        self.tower = tower
        self.names = list(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.tower(dict(zip(self.names, tensors)))


def input_dims(example: Features, query: Mapping[str, FittedFeature]) -> dict[str, list[str | int]]:
    """Each input's shape with its free dimensions named: ``batch`` first; a history's slots ``history_len``;
    a click-history tower's distinct items (``<history>.<item feature>``, first dimension) ``distinct_items``."""
    histories = {name for name, fitted in query.items() if fitted.kind.from_interactions}
    dims: dict[str, list[str | int]] = {}
    for name, tensor in example.items():
        base, dot, part = name.partition(".")
        shape: list[str | int] = list(tensor.shape)
        if base in histories and dot and part not in ("index", "present"):
            shape[0] = DISTINCT_ITEMS  # item features of the distinct items in the batch's histories
        else:
            shape[0] = BATCH
            if base in histories and len(shape) > 1:
                shape[1] = HISTORY_LEN
        dims[name] = shape
    return dims


def serving_signature(example: Features, query: Mapping[str, FittedFeature], vocab_file: str, item_vocab_file: str) -> dict[str, Any]:
    """The manifest's ``serving_signature``: inputs (name, dtype, shape, how raw values become them) and the output.

    Args:
        example: the query tower's inputs for a few users (their names, dtypes and fixed sizes).
        query: the query side's fitted features.
        vocab_file: the artifact-relative path of the query tower's ``vocab.json``.
        item_vocab_file: the candidate tower's, whose ``ids`` index the items of a history.
    """
    inputs = []
    for name, shape in input_dims(example, query).items():
        entry: dict[str, Any] = {"name": name, "dtype": str(example[name].dtype).removeprefix("torch."), "shape": shape}
        fitted = query.get(name)
        if fitted is not None:
            served = fitted.kind.serving_input(fitted)
            entry["encoding"] = served.encoding
            if served.in_tower:
                entry["in_tower"] = dict(served.in_tower)
            if fitted.vocab is not None and not fitted.spec.hash_buckets:
                entry["vocabulary"] = {"file": vocab_file, "key": f"features.{name}.vocab", "index": "1 + position in the list; 0 = unknown or missing"}
            if fitted.kind.from_interactions:
                entry["order"] = "most recent first, 0-padded on the right"
                entry["vocabulary"] = {"file": item_vocab_file, "key": "ids", "index": "1 + position in the list; 0 = unknown item or empty slot"}
        else:
            base, _, part = name.partition(".")
            entry["encoding"] = {
                "index": f"int64 position of each of '{base}''s slots among the distinct items of the batch's histories",
                "present": f"bool whether each of '{base}''s slots holds an item",
            }.get(part, f"the candidate tower's '{part}' input of each distinct history item (see the candidate tower's vocab.json)")
        inputs.append(entry)
    return {"inputs": inputs, "output": {"name": OUTPUT, "dtype": "float32", "shape": [BATCH, "dim"]}, "onnx_opset": ONNX_OPSET}


def _dynamic_shapes(example: Features, query: Mapping[str, FittedFeature]) -> tuple[dict[int, Any], ...]:
    named = {label: torch.export.Dim(label, min=1) for label in (BATCH, HISTORY_LEN, DISTINCT_ITEMS)}
    return tuple({axis: named[size] for axis, size in enumerate(shape) if isinstance(size, str)} for shape in input_dims(example, query).values())


def export_program(tower: nn.Module, example: Features, query: Mapping[str, FittedFeature]) -> torch.export.ExportedProgram:
    """The tower as a ``torch.export`` program with the batch (and history length) free; save it with ``torch.export.save``."""
    positional = PositionalTower(tower.eval(), list(example))
    with _size_oblivious():
        return torch.export.export(positional, tuple(example.values()), dynamic_shapes=(_dynamic_shapes(example, query),), strict=False)


def write_onnx(tower: nn.Module, example: Features, query: Mapping[str, FittedFeature], path: Path) -> None:
    """The tower as an ONNX model (inputs named as the tower's features, output ``query_vector``), dynamic axes as ``input_dims``."""
    positional = PositionalTower(tower.eval(), list(example))
    # The exporter prints its progress to stdout, logs a line per graph optimisation it skips and per
    # torchvision op it does not register, and warns that two axes share the name "batch" (the point):
    # none of it is for the user.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript", "onnx_ir"), _size_oblivious():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(positional, tuple(example.values()), dynamo=True, dynamic_shapes=(_dynamic_shapes(example, query),),
                                    input_names=list(example), output_names=[OUTPUT], opset_version=ONNX_OPSET, verbose=False)
        program.save(str(path))


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _size_oblivious() -> contextlib.AbstractContextManager:
    """Traces free dimensions without assuming from the example that they are not 1: otherwise the
    history pooling's reshape leaves a guard ``batch >= 2`` in the program, and one user's request fails."""
    import torch.fx.experimental._config as symbolic_shapes_config

    return symbolic_shapes_config.patch(backed_size_oblivious=True)
