"""Typed settings declared once: default, unit, allowed values and meaning beside each field.

A settings class is a dataclass whose fields are made with `setting(...)`. The declaration is the
single source of each fact: `check_settings` validates against it (type, finiteness, range,
choices), error messages quote it, and `describe_settings` prints it as documentation. Parts that
own settings (SAC, the learners, the node) declare them where they are used; `odmar_mpi.config`
composes them into the run's configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable


class SettingError(ValueError):
    """A setting's value is not allowed; the message names the key, the value, what is allowed and the fix."""


@dataclass(frozen=True)
class Range:
    """Closed or open bounds; None is unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts) or "any finite number"


@dataclass(frozen=True)
class Spec:
    """What a field promises: its meaning, unit, allowed values, and an optional extra rule."""

    doc: str
    unit: str = ""
    range: Range | None = None
    choices: tuple[str, ...] | Callable[[], Iterable[str]] | None = None
    zero_disables: bool = False
    """0 is allowed besides `range` (it switches the feature off)."""
    aliases: tuple[str, ...] = ()
    """Names people try for this field (e.g. learning_rate for lr): an unknown key that matches one is
    answered with this field's name."""

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.options())
        text = self.range.describe() if self.range else "any"
        return f"0 (off) or {text}" if self.zero_disables else text

    def options(self) -> tuple[str, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices or ())


def setting(default: Any, doc: str, *, unit: str = "", low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, choices: Any = None,
            zero_disables: bool = False, aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field with its spec. Mutable defaults (lists) are copied per instance."""
    bounds = Range(low, high, low_open, high_open) if low is not None or high is not None else None
    spec = Spec(doc, unit, bounds, choices, zero_disables, aliases)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


def spec_of(cls: type, name: str) -> Spec:
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}[name]


def unknown_field_hint(name: str, cls: type) -> str:
    """' Did you mean 'lr'?' for an unknown key of settings class `cls`: aliases first, then spelling."""
    for f in dataclasses.fields(cls):
        if name in f.metadata["spec"].aliases:
            return f" Did you mean '{f.name}'?"
    return did_you_mean(name, [f.name for f in dataclasses.fields(cls)])


def did_you_mean(name: str, options: Iterable[str]) -> str:
    options = list(options)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else f" Valid: {', '.join(sorted(options))}."


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against the field's type (ints are accepted for floats); raises SettingError."""
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif typing.get_origin(hint) is list:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = list(value) if ok else value
    else:  # pragma: no cover - every field uses one of the types above
        raise TypeError(f"unsupported setting type {hint} for {key}")
    if not ok:
        name = getattr(hint, "__name__", str(hint))
        raise SettingError(f"{key} = {value!r} has type {type(value).__name__}; expected {name}.")
    return value


def check_value(key: str, value: Any, spec: Spec) -> None:
    """Raise SettingError unless `value` is finite and allowed by `spec`."""
    if spec.choices is not None:
        options = spec.options()
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.6)
            raise SettingError(f"{key} = {value!r} is not allowed; choose one of {', '.join(options)}."
                               + (f" Did you mean '{close[0]}'?" if close else ""))
        return
    if isinstance(value, list) and not value:
        raise SettingError(f"{key} = []: give at least one value, each {spec.allowed()}.")
    numbers = value if isinstance(value, list) else [value]
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if not math.isfinite(number):
            raise SettingError(f"{key} = {value!r} is not a finite number; allowed: {spec.allowed()}.")
        if spec.zero_disables and number == 0:
            continue
        if spec.range is not None and not spec.range.contains(number):
            raise SettingError(f"{key} = {value!r} is out of range; allowed: {spec.allowed()}.")


def check_settings(obj: Any, prefix: str = "") -> None:
    """Validate every field of a settings dataclass instance against its declaration, then the rules that
    tie fields together (a `check_rules(prefix)` method, where the class has one)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = coerce(key, getattr(obj, f.name), hints[f.name])
        check_value(key, value, f.metadata["spec"])
    rules = getattr(obj, "check_rules", None)
    if rules is not None:
        rules(prefix)


def describe_settings(cls: type, section: str) -> list[str]:
    """One line per field: key, default, unit, allowed values, meaning (for `check --explain` and docs)."""
    lines = []
    for f in dataclasses.fields(cls):
        spec: Spec = f.metadata["spec"]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        unit = f" [{spec.unit}]" if spec.unit else ""
        lines.append(f"{section}.{f.name} = {default!r}{unit}; allowed: {spec.allowed()}. {spec.doc}")
    return lines
