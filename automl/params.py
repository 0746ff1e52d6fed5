"""Parameter constraints and the one error template for a value outside them. Imports nothing of
the project but ``errors``.

Every component (head, augmenter, extractor option, pretraining setting) words a bad value the same
way, in scikit-learn's words: "The 'C' parameter of head 'svc-rbf' must be a float in the range
(0, inf]. Got -1 instead." A component declares its constraints (parameter -> accepted
``Interval``/``Options``/None) and ``check_params`` checks them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, Mapping

from automl.errors import ConfigError

_INF = float("inf")

# Compute precisions, in the one vocabulary that Keras and torch dtypes share; "auto" lets the
# component pick for the hardware.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


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
        # As scikit-learn shows them: brackets follow ``closed`` (an int may be "[1, inf]"), bounds
        # as declared (0 or 0.0).
        left = "[" if self.closed in ("both", "left") else "("
        right = "]" if self.closed in ("both", "right") else ")"

        def show(bound):
            return ("inf" if bound > 0 else "-inf") if abs(bound) == _INF else str(bound)

        kind = "an int" if self.kind is int else "a float"
        return f"{kind} in the range {left}{show(self.low)}, {show(self.high)}{right}"


@dataclass(frozen=True)
class Options:
    """One of a few values, in the order shown. ``aliases`` maps older spellings to a value
    (``{"fp16": "float16"}``): accepted, and replaced by ``check_params``."""

    values: tuple
    aliases: Mapping = field(default_factory=dict)

    def accepts(self, value: Any) -> bool:
        return self.normalise(value) in self.values

    def normalise(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return None  # unhashable or of no kind an option has: never an option
        return self.aliases.get(value, value)

    def describe(self) -> str:
        kinds = {type(v) for v in self.values}
        shown = "{" + ", ".join(repr(v) for v in self.values) + "}"
        if len(kinds) == 1:
            kind = next(iter(kinds)).__name__
            return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} among {shown}"
        return f"one of {shown}"


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


def check_params(owner: str, values: Mapping[str, Any], constraints: Mapping[str, Any]) -> dict[str, Any]:
    """Check every constrained parameter of ``values`` (``check_param``, in the order of
    ``constraints``); returns the values with ``Options`` aliases replaced by what they stand for."""
    checked = dict(values)
    for param, accepted in constraints.items():
        value = check_param(owner, param, values[param], *accepted)
        for constraint in accepted:
            if isinstance(constraint, Options) and constraint.accepts(value):
                value = constraint.normalise(value)
                break
        checked[param] = value
    return checked
