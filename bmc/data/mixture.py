"""``task.sources``: several preference datasets mixed by fractions of the mixed pairs.

    task.sources='[{path: a.jsonl, fraction: 0.7}, {path: b.jsonl, fraction: 0.3}]'

Each source is read on its own (:func:`bmc.data.hf_prefs.read_pairs`: its layout, its drops, its extra
columns), with the task's ``split``, ``eval_split``, ``data_files``, ``format``, ``columns`` and ``pairing``
unless the source sets its own. ``name`` (default: its ``path``) is what each of its pairs carries under
``task_source``, and what the data report counts.

What a fraction means: the share of the mixed pairs that come from that source. The fractions must sum to 1
(one source may leave its fraction out: 1). The mixed total is ``task.sizes.pref`` pairs, or, when that is
null, the largest total that no source runs short of (``min(pairs_i / fraction_i)``). Each source gives
``fraction * total`` pairs (rounded so that they add up to the total), drawn without replacement with the
task's ``seed`` and kept in file order; a source asked for more pairs than it has is an error that names it,
never a silent repetition.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bmc.data.layouts import DataError

#: the pair key that names the source a pair was read from
SOURCE = "task_source"
#: what a source may set: its name and fraction, and the task settings it overrides
KEYS = ("name", "path", "fraction", "split", "eval_split", "data_files", "format", "columns", "pairing")
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Source:
    """One entry of ``task.sources``: ``reading`` holds the keyword arguments of ``read_pairs``."""

    name: str
    fraction: float
    reading: dict[str, Any]
    eval_split: str | None


def parse_sources(sources: list[Mapping[str, Any]], defaults: dict[str, Any]) -> list[Source]:
    """The checked entries of ``task.sources``, each with the task's settings it does not set itself."""
    parsed = []
    for i, entry in enumerate(sources):
        where = f"task.sources[{i}]"
        if not isinstance(entry, Mapping) or not entry.get("path"):  # Hydra hands over a DictConfig
            raise DataError(f"{where}: expected a mapping with a path, e.g. {{path: a.jsonl, fraction: 0.5}}")
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise DataError(f"{where} ({entry['path']}): unknown key(s) {unknown}; a source may set {list(KEYS)}")
        fraction = entry.get("fraction", 1.0 if len(sources) == 1 else None)
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise DataError(f"{where} ({entry['path']}): fraction must be a number in (0, 1], got {fraction!r}")
        settings = {**defaults, **entry}
        name, eval_split = str(settings.pop("name", None) or entry["path"]), settings.pop("eval_split", None)
        settings.pop("fraction", None)
        parsed.append(Source(name, float(fraction), settings, eval_split))
    names = [s.name for s in parsed]
    if len(set(names)) < len(names):
        raise DataError(f"task.sources: names must differ (give each a name), got {names}")
    total = sum(s.fraction for s in parsed)
    if abs(total - 1) > _TOLERANCE:
        shares = {s.name: s.fraction for s in parsed}
        raise DataError(f"task.sources: the fractions must sum to 1, got {total:g} ({shares})")
    return parsed


def _counts(sources: list[Source], available: dict[str, int], total: int | None) -> list[int]:
    """Pairs per source: ``fraction * total`` rounded by largest remainder, so they sum to ``total``."""
    if total is None:
        total = min(math.floor(available[s.name] / s.fraction + _TOLERANCE) for s in sources)
    exact = [s.fraction * total for s in sources]
    counts = [math.floor(x + _TOLERANCE) for x in exact]
    by_remainder = sorted(range(len(sources)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, (source, n) in enumerate(zip(sources, counts)):
        if n > available[source.name]:
            raise DataError(
                f"task.sources[{i}] ({source.name}): fraction {source.fraction:g} of {total} mixed pairs asks for "
                f"{n} pairs, but it has {available[source.name]} (after its drops); pairs are drawn without "
                "replacement: lower task.sizes.pref or this fraction"
            )
    return counts


def tagged(pair: dict[str, Any], source: str | None) -> dict[str, Any]:
    """``pair`` with the name of its source (none outside a mixture)."""
    if source is None:
        return pair
    if SOURCE in pair:
        raise DataError(
            f"task.sources entry {source!r}, field {SOURCE!r}: its rows have a column of that name, which would hide "
            "the pair's source; rename it"
        )
    return {**pair, SOURCE: source}


def mix(
    sources: list[Source], pairs: dict[str, list[dict[str, Any]]], total: int | None, seed: int
) -> list[dict[str, Any]]:
    """The mixed pairs, source by source, each tagged with its source's name (module docstring)."""
    counts = _counts(sources, {name: len(p) for name, p in pairs.items()}, total)
    mixed = []
    for source, n in zip(sources, counts):
        drawn = sorted(random.Random(f"{seed}/{source.name}").sample(range(len(pairs[source.name])), n))
        mixed += [tagged(pairs[source.name][i], source.name) for i in drawn]
    return mixed
