"""Name -> implementation registries with option validation (losses, token weightings, regularizers).

Every registered target is either a function ``f(x, *, <options>)`` (bound with ``functools.partial``) or
a class whose ``__init__`` takes the options (instantiated). Its keyword names ARE the config keys, so a
typo in a YAML file fails at build time with the accepted keys instead of silently using a default.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any


@dataclass(frozen=True)
class Interval:
    """A real interval usable with ``in``; ``optional`` also admits ``None``."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def __contains__(self, value: object) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, Real):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        text = f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        return f"{text} or None" if self.optional else text


POSITIVE = Interval(0.0, low_open=True, high_open=True)
NON_NEGATIVE = Interval(0.0, high_open=True)
# Checked whenever an option of that name is given, unless a registration overrides it.
DEFAULT_RANGES: dict[str, Container] = {
    "beta": POSITIVE,
    "tau": POSITIVE,
    "alpha": NON_NEGATIVE,
    "lam": NON_NEGATIVE,
    "delta": NON_NEGATIVE,
    "eps": Interval(0.0, 0.5, high_open=True),  # label smoothing; 0.5 = no preference
}


def accepted_options(target: Callable) -> list[str]:
    """Keyword options of a registered function (keyword-only params) or class (``__init__`` params)."""
    if inspect.isclass(target):
        params = list(inspect.signature(target.__init__).parameters.values())[1:]  # drop self
    else:
        params = [p for p in inspect.signature(target).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


@dataclass(frozen=True)
class Entry:
    target: Callable
    ranges: Mapping[str, Container] = field(default_factory=dict)
    reference_free: bool = False
    listwise: bool = False  # a loss on ranked lists of K responses (RankedLogps), not on pairs


class Registry(dict[str, Entry]):
    """``kind`` (e.g. "loss") only appears in error messages."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(
        self,
        name: str,
        *,
        ranges: Mapping[str, Container] | None = None,
        reference_free: bool = False,
        listwise: bool = False,
    ) -> Callable[[Callable], Callable]:
        def decorator(target: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = Entry(target, {**DEFAULT_RANGES, **(ranges or {})}, reference_free, listwise)
            return target

        return decorator

    def entry(self, name: str) -> Entry:
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}")
        return self[name]

    def build(self, name: str, **options: Any) -> Any:
        """Validate ``options`` against the target's keywords and ranges, then bind them."""
        entry = self.entry(name)
        accepted = accepted_options(entry.target)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"{self.kind} {name!r} got unknown option(s) {unknown}; accepted: {accepted}")
        for key, value in options.items():
            allowed = entry.ranges.get(key)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{self.kind} {name!r}: {key}={value!r} is out of range {allowed}")
        if inspect.isclass(entry.target):
            return entry.target(**options)
        return functools.partial(entry.target, **options)
