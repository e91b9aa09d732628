"""One registry per pluggable kind, all with the same contract: a name, and options checked by signature.

An implementation registers itself where it is defined, with ``@<REGISTRY>.register("name")``; no import list
needs it. Each registry knows the package of its kind and imports every module under it on its first lookup, so
a new module there is found by itself, whether or not the stage that uses it ran before; a module elsewhere (a
user's, a test's) registers when it is imported, before the run.

A registered class takes its options in ``__init__``; a registered function in its keyword-only parameters.
Those names ARE the YAML keys of the config group that selects it, so a typo in a YAML file fails with the key
and the group named, before any stage runs, instead of silently using a default. ``supplied`` names the
parameters the caller passes itself (a task, the trainer's device): they are not YAML keys.

=================  ==========================  ======================
registry           selected by                 package searched
=================  ==========================  ======================
LOSSES             ``loss.name``               :mod:`bmc.losses`
WEIGHTINGS         ``token_weighting.name``    :mod:`bmc.losses`
REGULARIZERS       ``regularizer.name``        :mod:`bmc.losses`
JUDGES             ``judge.kind``              :mod:`bmc.synthesis`
EDITORS            ``editor.kind``             :mod:`bmc.synthesis`
CHAT_BACKENDS      ``<judge|editor>.backend``  :mod:`bmc.synthesis`
SAMPLER_BACKENDS   ``data.sampler.backend``    :mod:`bmc.synthesis`
EVALUATIONS        ``eval.kind``               :mod:`bmc.stages`
LAYOUTS            ``task.format``             :mod:`bmc.data`
PAIR_SOURCES       ``data.pairs``              :mod:`bmc.synthesis`
=================  ==========================  ======================
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
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
#: the ranges of the losses', weightings' and regularizers' shared hyper-parameters, checked whenever an
#: option of that name is given, unless a registration overrides it
OBJECTIVE_RANGES: dict[str, Container] = {
    "beta": POSITIVE,
    "tau": POSITIVE,
    "alpha": NON_NEGATIVE,
    "lam": NON_NEGATIVE,
    "delta": NON_NEGATIVE,
    "eps": Interval(0.0, 0.5, high_open=True),  # label smoothing; 0.5 = no preference
}


@dataclass(frozen=True)
class Entry:
    """A registered implementation: ``ranges`` maps options to the values they accept (anything supporting
    ``in``); ``supplied`` are the parameters its caller passes; ``traits`` are flags its user reads (a loss's
    ``reference_free``, ``sequence_kl``, ``listwise``)."""

    target: Callable
    ranges: Mapping[str, Container] = field(default_factory=dict)
    supplied: tuple[str, ...] = ()
    traits: frozenset[str] = frozenset()


def _parameters(target: Callable) -> list[inspect.Parameter]:
    """A class's ``__init__`` parameters (without self) or a function's keyword-only ones, without *args/**kw."""
    if inspect.isclass(target):
        params = list(inspect.signature(target.__init__).parameters.values())[1:]
    else:
        params = [p for p in inspect.signature(target).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def accepted_options(target: Callable, supplied: Sequence[str] = ()) -> list[str]:
    """The option names (YAML keys) of a registered class or function: its parameters less ``supplied``."""
    return [p.name for p in _parameters(target) if p.name not in supplied]


def construct(target: Callable, options: Mapping[str, Any], where: str, **supplied: Any) -> Any:
    """``target(**supplied, **options)`` with config mistakes reported by name instead of as a bare TypeError:
    an unknown key (naming ``where``, the config node) or a required option left out."""
    check_keys(target, options, where, tuple(supplied))
    return target(**supplied, **options)


def check_keys(
    target: Callable, options: Mapping[str, Any], where: str, supplied: Sequence[str] = (), group: str | None = None
) -> None:
    """ValueError naming the keys of ``options`` that ``target`` does not take (and the config ``group`` they
    were read from), or the ones it needs."""
    accepted = accepted_options(target, supplied)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        in_group = f" in config group {group!r}" if group else ""
        raise ValueError(f"{where} got unknown option(s) {unknown}{in_group}; accepted: {accepted}")
    missing = [p.name for p in _parameters(target)
               if p.default is p.empty and p.name not in options and p.name not in supplied]  # fmt: skip
    if missing:
        raise ValueError(f"{where} needs option(s) {missing}")


class Registry(Mapping[str, Entry]):
    """Name -> :class:`Entry` of one pluggable kind.

    Args:
        kind: what an implementation is, for messages ("loss", "judge").
        setting: the config key that names one (``judge.kind``); its parent is the group holding the options.
        package: where the built-in implementations are defined; its modules are imported on the first lookup.
        default_ranges: ranges checked for every implementation (a registration may override them).
        bind_functions: a registered function is bound to its options (``functools.partial``) and called later
            (a loss, called per batch), instead of being called now to make the implementation (a factory).
    """

    def __init__(
        self,
        kind: str,
        setting: str,
        package: str,
        default_ranges: Mapping[str, Container] | None = None,
        bind_functions: bool = False,
    ) -> None:
        self.kind, self.setting, self.package = kind, setting, package
        self.group = setting.rpartition(".")[0] or setting
        self.default_ranges = dict(default_ranges or {})
        self.bind_functions = bind_functions
        self._entries: dict[str, Entry] = {}
        self._discovered = False

    def _discover(self) -> None:
        """Import the package's modules once: their decorators register the built-in implementations."""
        if self._discovered:
            return
        self._discovered = True  # first: a module being imported may look the registry up
        package = importlib.import_module(self.package)
        for module in pkgutil.walk_packages(getattr(package, "__path__", []), f"{self.package}."):
            importlib.import_module(module.name)

    def __getitem__(self, name: str) -> Entry:
        self._discover()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(self._entries)

    def __len__(self) -> int:
        self._discover()
        return len(self._entries)

    def register(
        self,
        name: str,
        *,
        ranges: Mapping[str, Container] | None = None,
        supplied: Sequence[str] = (),
        traits: Iterable[str] = (),
    ) -> Callable[[Callable], Callable]:
        """Decorator registering a class or function under ``name`` (see the module docstring)."""

        def decorator(target: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name].target})")
            self._entries[name] = Entry(target, {**self.default_ranges, **(ranges or {})}, tuple(supplied),
                                        frozenset(traits))  # fmt: skip
            return target

        return decorator

    def unregister(self, name: str) -> None:
        """Forget ``name``: a plugin's test leaves the registry as it found it."""
        del self._entries[name]

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; an unknown name raises with the names there are."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}: {self.setting} must be one of {sorted(self)}")
        return self[name]

    def check(self, name: str, options: Mapping[str, Any]) -> Entry:
        """The entry of ``name`` once ``options`` are known keys in range (what the config check runs)."""
        entry = self.entry(name)
        check_keys(entry.target, options, f"{self.kind} {name!r}", entry.supplied, self.group)
        for key, value in options.items():
            allowed = entry.ranges.get(key)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{self.kind} {name!r}: {key}={value!r} is out of range {allowed}")
        return entry

    def build(self, name: str, options: Mapping[str, Any], /, **supplied: Any) -> Any:
        """The implementation of ``name`` with ``options`` checked; of ``supplied``, the entry gets the ones it
        declared (a caller passes everything it has: a judge kind takes what it needs)."""
        entry = self.check(name, options)
        given = {k: v for k, v in supplied.items() if k in entry.supplied}
        if not inspect.isclass(entry.target) and self.bind_functions:
            return functools.partial(entry.target, **given, **options)
        return entry.target(**given, **options)


LOSSES = Registry("loss", "loss.name", "bmc.losses", OBJECTIVE_RANGES, bind_functions=True)
WEIGHTINGS = Registry("token weighting", "token_weighting.name", "bmc.losses", OBJECTIVE_RANGES)
REGULARIZERS = Registry("regularizer", "regularizer.name", "bmc.losses", OBJECTIVE_RANGES)
JUDGES = Registry("judge", "judge.kind", "bmc.synthesis")
EDITORS = Registry("editor", "editor.kind", "bmc.synthesis")
CHAT_BACKENDS = Registry("chat backend", "backend.kind", "bmc.synthesis")
SAMPLER_BACKENDS = Registry("sampler backend", "data.sampler.backend.kind", "bmc.synthesis")
EVALUATIONS = Registry("evaluation", "eval.kind", "bmc.stages")
LAYOUTS = Registry("data layout", "task.format", "bmc.data")
PAIR_SOURCES = Registry("pair source", "data.pairs", "bmc.synthesis")
