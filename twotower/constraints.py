"""Value ranges declared where the arguments are: ``output_dim: Annotated[int, AT_LEAST_1] = 64``.

``twotower.config_check`` reads them from a receiver's signature and refuses a config value outside
its range before any work: a model zero units wide, a zero temperature or a dropout of 1 would
otherwise train, collapsed, and exit 0.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ArgumentsOf:
    """Marks a block whose keys are keyword arguments of ``receiver`` (less ``given``, passed in code)."""

    receiver: str
    given: tuple[str, ...] = ()


@dataclass(frozen=True)
class Allowed:
    """The values an argument may take: ``description`` says them, ``test`` decides one (a number)."""

    description: str
    test: Callable[[float], bool]


AT_LEAST_0 = Allowed("at least 0", lambda v: v >= 0)
AT_LEAST_1 = Allowed("at least 1", lambda v: v >= 1)
AT_LEAST_2 = Allowed("at least 2 (in-batch negatives need another row)", lambda v: v >= 2)
ABOVE_0 = Allowed("greater than 0", lambda v: v > 0)
FRACTION = Allowed("in [0, 1)", lambda v: 0 <= v < 1)
SHARE = Allowed("in (0, 1]", lambda v: 0 < v <= 1)
PROBABILITY = Allowed("in [0, 1]", lambda v: 0 <= v <= 1)
SEED = Allowed("in [0, 2**32) (numpy's seeds)", lambda v: 0 <= v < 2**32)
EPOCHS = Allowed("-1 (no limit) or at least 1", lambda v: v == -1 or v >= 1)
