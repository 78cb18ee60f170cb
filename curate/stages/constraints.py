"""Declared option constraints (scikit-learn's `_parameter_constraints`, kept small).

Each stage states its options' types and ranges once, as `option_constraints` on the class (a
list per option: valid when any constraint accepts) plus `option_rules` for options that must
fit together. `check_options` is the one place that checks them and the one message form users
see; `invalid_values()` gives tests values every constraint must refuse, so the property tests
need no hand-written table of bad options.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Protocol

from curate.errors import UsageError

# A stage class (curate.stages.base.Stage, not imported: the base imports this module). It has
# `kind`, `option_constraints`, `option_rules` and `option_defaults()`.
StageClass = Any


class Constraint(Protocol):
    """What one entry of an option's constraint list can do."""

    def accepts(self, value: Any) -> bool: ...

    def describe(self) -> str: ...

    def invalid_values(self) -> list[Any]: ...


def _is_number(value: Any, kind: type) -> bool:
    """An int (for kind int) or any real number (for kind float), never a bool: TOML's `true`
    must not pass for 1."""
    if isinstance(value, bool):
        return False
    return isinstance(value, Integral) if kind is int else isinstance(value, Real)


class Interval:
    """A number of `kind` (int, or float, which also takes ints) between `low` and `high`;
    None leaves a side open. `closed` says which ends belong: "both", "left", "right", "neither"."""

    def __init__(self, kind: type, low: float | None, high: float | None, *, closed: str = "both"):
        if kind not in (int, float):
            raise TypeError(f"Interval kind must be int or float, got {kind!r}")
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be both, left, right or neither, got {closed!r}")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    @property
    def _left_closed(self) -> bool:
        return self.closed in ("both", "left")

    @property
    def _right_closed(self) -> bool:
        return self.closed in ("both", "right")

    def accepts(self, value: Any) -> bool:
        if not _is_number(value, self.kind) or (self.kind is float and math.isnan(value)):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self._left_closed)):
            return False
        if self.high is not None and (value > self.high or (value == self.high and not self._right_closed)):
            return False
        return True

    def describe(self) -> str:
        noun = "an int" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} in {'[' if self._left_closed else '('}{self.low}, {self.high}{']' if self._right_closed else ')'}"
        if self.low is not None:
            return f"{noun} {'>=' if self._left_closed else '>'} {self.low}"
        if self.high is not None:
            return f"{noun} {'<=' if self._right_closed else '<'} {self.high}"
        return noun

    def invalid_values(self) -> list[Any]:
        """Just outside each closed end, the open ends themselves, then values of the wrong type."""
        values: list[Any] = []
        if self.low is not None:
            values.append(
                self.low
                if not self._left_closed
                else self.low - 1
                if self.kind is int
                else math.nextafter(self.low, -math.inf)
            )
        if self.high is not None:
            values.append(
                self.high
                if not self._right_closed
                else self.high + 1
                if self.kind is int
                else math.nextafter(self.high, math.inf)
            )
        if self.kind is int:
            values.append((self.low if self.low is not None else 0) + 0.5)  # in range but not an int
        else:
            values.append(math.nan)
        return values + ["1", True, None]


class Options:
    """One of a fixed set of strings."""

    def __init__(self, choices: Iterable[str]):
        self.choices = tuple(choices)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices

    def describe(self) -> str:
        if len(self.choices) == 1:
            return repr(self.choices[0])
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def invalid_values(self) -> list[Any]:
        return [
            "not-" + "-".join(self.choices),
            self.choices[0].upper() if self.choices[0].upper() not in self.choices else "?",
            1,
            None,
        ]


class Boolean:
    """true or false, and nothing that merely converts to one (1, "yes")."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "a bool (true or false)"

    def invalid_values(self) -> list[Any]:
        return ["yes", 1, None]


class Text:
    """A string; `nonempty` refuses "" (for an option that must name something)."""

    def __init__(self, *, nonempty: bool = False):
        self.nonempty = nonempty

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (bool(value) or not self.nonempty)

    def describe(self) -> str:
        return "a non-empty string" if self.nonempty else "a string"

    def invalid_values(self) -> list[Any]:
        return ([""] if self.nonempty else []) + [1, ["text"], None]


class Rule:
    """A value of type `of` that an existing check accepts: `check(value)` raises ValueError
    for a bad one (model names, devices), so the rule lives where the option is used and the
    table only points at it. `invalid` lists values of the right type that it refuses."""

    def __init__(
        self, check: Callable[[Any], object], description: str, *, of: type = str, invalid: Sequence[Any] = ()
    ):
        self.check, self.description, self.of, self.invalid = check, description, of, list(invalid)

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, self.of) or (isinstance(value, bool) and self.of is not bool):
            return False
        try:
            self.check(value)
        except ValueError:
            return False
        return True

    def describe(self) -> str:
        return self.description

    def invalid_values(self) -> list[Any]:
        return self.invalid + [1, None]


class ListOf:
    """A list whose every item `item` accepts; `nonempty` refuses []."""

    def __init__(self, item: Constraint, *, nonempty: bool = True):
        self.item, self.nonempty = item, nonempty

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, list) and (bool(value) or not self.nonempty) and all(self.item.accepts(v) for v in value)
        )

    def describe(self) -> str:
        return f"a {'non-empty ' if self.nonempty else ''}list, each item {self.item.describe()}"

    def invalid_values(self) -> list[Any]:
        bad_items = [v for v in self.item.invalid_values() if v is not None][:2]
        return ([[]] if self.nonempty else []) + [[v] for v in bad_items] + ["1", None]


class IsNone:
    """None: a library caller's "not set" (TOML has no null, so a pipeline file never gives it)."""

    def accepts(self, value: Any) -> bool:
        return value is None

    def describe(self) -> str:
        return "None"

    def invalid_values(self) -> list[Any]:
        return []


@dataclass(frozen=True)
class Together:
    """A rule across options: `check(options)` is False when `option` does not fit the others
    (bands x rows <= num_perm). The message blames `option`, described by `description`, which
    may name other options' values as `{name}`; `fix` replaces the default fix where setting
    `option` back to its default would not help."""

    option: str
    check: Callable[[dict[str, Any]], bool]
    description: str
    fix: str | None = None


def describe_all(constraints: Sequence[Constraint]) -> str:
    """ "a, b or c" from the constraints' own descriptions."""
    parts = [c.describe() for c in constraints]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def invalid_option_values(stage_cls: StageClass, name: str) -> list[Any]:
    """Values of option `name` that none of its constraints accepts (one constraint's invalid
    value may be another's valid one, e.g. None for pools' higher_is_better)."""
    constraints = stage_cls.option_constraints[name]
    found = [v for c in constraints for v in c.invalid_values()]
    return [v for v in found if not any(c.accepts(v) for c in constraints)]


def option_error(
    kind: str, name: str, description: str, value: Any, default: Any, where: object | None, fix: str | None = None
) -> UsageError:
    """The one message a refused option gets, wherever it is checked."""
    if fix is None:
        fix = (
            f"leave {name} out, or set a value that fits"
            if default is None
            else f"set {name} = {toml_value(default)}, or another value that fits"
        )
    return UsageError(f"stage '{kind}': option '{name}' must be {description}, got {value!r}", path=where, fix=fix)


def toml_value(value: Any) -> str:
    """A default as a pipeline file spells it (true, "word"), for the fix of an error."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def check_options(stage_cls: StageClass, options: dict[str, Any], where: object | None = "pipeline") -> None:
    """Raise a UsageError for the first option its constraints refuse, then for the first
    `option_rules` entry the options (defaults filled in) break. Options without a declared
    constraint pass here; tests/test_stage_options.py makes sure there are none."""
    defaults = stage_cls.option_defaults()
    for name, value in options.items():
        constraints = stage_cls.option_constraints.get(name)
        if constraints and not any(c.accepts(value) for c in constraints):
            raise option_error(stage_cls.kind, name, describe_all(constraints), value, defaults.get(name), where)
    merged = {**defaults, **options}
    for rule in stage_cls.option_rules:
        if not rule.check(merged):
            description = rule.description.format(**merged)
            raise option_error(
                stage_cls.kind,
                rule.option,
                description,
                merged.get(rule.option),
                defaults.get(rule.option),
                where,
                rule.fix,
            )
