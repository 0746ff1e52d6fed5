"""Parameter constraints and the one error template for a value outside them. Imports nothing of
the project but ``errors``.

Every component (head, augmenter, extractor option, pretraining setting) words a bad value the same
way, in scikit-learn's words: "The 'C' parameter of head 'svc-rbf' must be a float in the range
(0, inf]. Got -1 instead."
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from automl.errors import ConfigError

_INF = float("inf")


@dataclass(frozen=True)
class Interval:
    """Numbers of one kind (``int`` or ``float``; ``float`` accepts ints too) between two bounds;
    ``closed`` says which bounds count."""

    kind: type
    low: float = -_INF
    high: float = _INF
    closed: str = "both"  # "both", "left", "right" or "neither"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.kind is int else Real):
            return False
        if math.isnan(value):
            return False
        above = value >= self.low if self.closed in ("both", "left") else value > self.low
        below = value <= self.high if self.closed in ("both", "right") else value < self.high
        return bool(above and below)

    def describe(self) -> str:
        left = "[" if self.closed in ("both", "left") and self.low != -_INF else "("
        right = "]" if self.closed in ("both", "right") and self.high != _INF else ")"

        def show(bound):
            if abs(bound) == _INF:
                return "inf" if bound > 0 else "-inf"
            return str(int(bound)) if self.kind is int else f"{bound:g}"

        kind = "an int" if self.kind is int else "a float"
        return f"{kind} in the range {left}{show(self.low)}, {show(self.high)}{right}"


@dataclass(frozen=True)
class Options:
    """One of a few values."""

    values: tuple

    def accepts(self, value: Any) -> bool:
        return not isinstance(value, bool) and value in self.values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


def param_error(owner: str, param: str, expected: str, value: Any, fix: str = "") -> ConfigError:
    """The house error for a parameter: owner (e.g. "head 'svc-rbf'"), parameter, constraint, value."""
    return ConfigError(f"The {param!r} parameter of {owner} must be {expected}. Got {value!r} instead."
                       + (f" {fix}" if fix else ""))


def check_param(owner: str, param: str, value: Any, *constraints, fix: str = "") -> Any:
    """Return ``value`` if any constraint (an ``Interval``, ``Options``, anything with ``accepts`` and
    ``describe``, or None for "None is accepted") accepts it; else raise ``param_error``."""
    if any(value is None if c is None else c.accepts(value) for c in constraints):
        return value
    expected = " or ".join("None" if c is None else c.describe() for c in constraints)
    raise param_error(owner, param, expected, value, fix)
