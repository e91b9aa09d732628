"""Real preference datasets through ``datasets.load_dataset``: a local JSONL/JSON/CSV/Parquet file or folder,
or a hub name where the network allows.

The layouts of the published datasets are read as they are (:mod:`bmc.data.layouts`): standard rows with an
explicit or an implicit prompt, conversational rows (UltraFeedback-binarized included), HH-RLHF transcripts,
and ranked completions (raw UltraFeedback, :mod:`bmc.data.ranked`, paired by ``pairing``); ``format`` names
one where the columns leave it open. ``columns`` maps other column names onto
``prompt``/``chosen``/``rejected``.

Every column a layout does not read (ids such as ``prompt_id``, scores such as ``score_chosen``, lists such
as ``messages``) is kept on each pair of its row as it is: it reaches the data report and the cached pairs
file, never the tokenized tensors. ``split`` names the split to train on, ``eval_split`` (of ``path``) or
``eval_path`` (another file or dataset) the held-out one; ``sources`` mixes several (:mod:`bmc.data.mixture`).

Conversational prompts stay message lists here; :func:`bmc.data.render.render_task` turns them into text once
(with the model's chat template when it has one), for the SFT warm start and the preference pairs alike.

Input policy: a bad file or row raises :class:`DataError` naming the file, the row and the field (invalid
UTF-8, malformed JSON, missing columns, wrong types, nulls, roles that do not alternate); rows are numbered as
:mod:`bmc.data.files` reads them. Rows with an empty prompt or response, identical responses, or that repeat an
earlier row exactly are dropped with a warning that counts them and lists their row numbers: duplicates
would weigh a pair twice and could land on both sides of the train/validation split.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from typing import Any

from bmc.data import mixture, ranked
from bmc.data.files import load_rows
from bmc.data.layouts import DataError, detect_layout, kind_of
from bmc.data.sources import Prompt, TaskData
from bmc.plugins import LAYOUTS
from bmc.tasks import Example

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")
RANKED = "ranked"  # the one layout with several pairs per row (bmc.data.ranked)
#: the row columns a layout reads (by their task.columns names); every other column is an extra one
_READS = {RANKED: ("prompt", "completions", "scores")}
EVAL_OVERLAP = "prompt also in the eval split"


def _drop_reason(pair: dict[str, Any], duplicate: bool) -> str | None:
    if isinstance(pair["prompt"], str) and not pair["prompt"].strip():
        return "empty prompt"
    if not pair["chosen"].strip():
        return "empty chosen"
    if not pair["rejected"].strip():
        return "empty rejected"
    if pair["chosen"] == pair["rejected"]:
        return "chosen == rejected"
    return "a duplicate of an earlier row" if duplicate else None


def filter_pairs(
    numbered: list[tuple[int, dict[str, Any]]], source: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Drop pairs with an empty prompt or response, identical responses, or that repeat an earlier row
    exactly, and say which rows (by their numbers in ``numbered``) and why; returns the kept pairs and how many
    were dropped for each reason."""
    reasons: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    kept = []
    for number, pair in numbered:
        key = json.dumps([pair["prompt"], pair["chosen"], pair["rejected"]], sort_keys=True)
        reason = _drop_reason(pair, key in seen)
        if reason:
            reasons[reason].append(number)
        else:
            seen.add(key)
            kept.append(pair)
    for reason, rows in reasons.items():
        log.warning(
            "%s: dropped %d of %d row(s) with %s (rows %s%s)",
            source,
            len(rows),
            len(numbered),
            reason,
            rows[:10],
            "..." if len(rows) > 10 else "",
        )
    return kept, {reason: len(rows) for reason, rows in reasons.items()}


def _extras(row: dict[str, Any], read: set[str], pair: dict[str, Any], where: str) -> dict[str, Any]:
    """The row's other columns, kept on each of its pairs as they are: ids, scores, lists and objects such as
    UltraFeedback-binarized's ``messages``. A value that is not JSON (it could not be cached or reported), or a
    column that would overwrite a field of the pair, is an error."""
    extras = {}
    for column, value in row.items():
        if column in read:
            continue
        if column in pair:
            raise DataError(
                f"{where}, field {column!r}: a column that is not read (task.columns names others) must not share "
                f"its name with a field of the pair {sorted(pair)}; rename it"
            )
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise DataError(
                f"{where}, field {column!r}: extra columns are kept with their pairs and must hold JSON values "
                f"(strings, numbers, booleans, null, lists, objects), got {kind_of(value)}"
            ) from None
        extras[column] = value
    return extras


def _numbered_pairs(
    rows: list[tuple[int, dict[str, Any]]], layout: str, columns: dict[str, str], pairing: str, path: str
) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """(row number, pair) of every pair the rows hold (one per row, or several for ranked completions), each
    with the row's extra columns, and how many ranked completion pairs were dropped for equal scores."""
    read = {columns[field] for field in _READS.get(layout, FIELDS)}
    numbered, ties = [], 0
    for n, row in rows:
        where = f"{path}, row {n}"
        pairs, tied = ranked.ranked_pairs(row, columns, where, pairing) if layout == RANKED else (
            [LAYOUTS[layout].target(row, columns, where)], 0)  # fmt: skip
        numbered += [(n, {**pair, **_extras(row, read, pair, where)}) for pair in pairs]
        ties += tied
    if ties:
        log.warning("%s: dropped %d completion pair(s) with equal scores (no preference; task.pairing=%s)",
                    path, ties, pairing)  # fmt: skip
    return numbered, ties


def read_pairs(
    path: str,
    split: str = "train",
    data_files: Any = None,
    columns: dict[str, str] | None = None,
    format: str = "auto",
    pairing: str = "best_worst",
    first_rows: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The pairs of one file, folder or hub dataset split (only its ``first_rows`` rows where given), and how
    many were dropped for each reason."""
    columns = {**{f: f for f in FIELDS}, **ranked.COLUMNS, **(columns or {})}
    rows = load_rows(path, split, data_files)[:first_rows]
    if not rows:
        raise DataError(f"{path}: no rows in split {split!r}")
    layout = detect_layout(rows[0][1], columns) if format == "auto" else format
    if layout != RANKED and layout not in LAYOUTS:
        formats = sorted({*LAYOUTS, RANKED})
        raise DataError(f"{path}: task.format must be auto or one of {formats}, got {format!r}")
    log.info("%s: %d row(s) in the %s layout", path, len(rows), layout)
    numbered, ties = _numbered_pairs(rows, layout, columns, pairing, path)
    pairs, dropped = filter_pairs(numbered, path)
    if not pairs:
        raise DataError(f"{path}: all {len(rows)} row(s) were dropped; the warnings above say which and why")
    return pairs, {**dropped, **({"equal scores": ties} if ties else {})}


def _reading(settings: dict[str, Any], dropped: Counter[str], why: str) -> list[dict[str, Any]]:
    """:func:`read_pairs` of ``settings``, its drops counted in ``dropped`` under ``why``."""
    pairs, reasons = read_pairs(**settings)
    dropped.update({f"{why}: {reason}": n for reason, n in reasons.items()})
    return pairs


def _prompt_key(prompt: Prompt) -> str:
    return json.dumps(prompt, sort_keys=True)


def _disjoint_from(
    pairs: list[dict[str, Any]], held_out: list[dict[str, Any]], dropped: Counter[str]
) -> list[dict[str, Any]]:
    """``pairs`` without those whose prompt is also a held-out one: a prompt is in one split only."""
    held = {_prompt_key(p["prompt"]) for p in held_out}
    kept = [p for p in pairs if _prompt_key(p["prompt"]) not in held]
    if len(kept) < len(pairs):
        log.warning("dropped %d training pair(s) whose prompt is also in the eval split", len(pairs) - len(kept))
        dropped[EVAL_OVERLAP] += len(pairs) - len(kept)
    if not kept:
        raise DataError(f"every one of the {len(pairs)} training pair(s) has a prompt of the eval split")
    return kept


def _reference_examples(pairs: list[dict[str, Any]]) -> list[Example]:
    """One held-out example per prompt: the first pair's chosen response as the reference, its rejected response
    and extra columns in ``meta``."""
    first: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        first.setdefault(_prompt_key(pair["prompt"]), pair)
    return [Example(p["prompt"], p["chosen"], {k: v for k, v in p.items() if k not in ("prompt", "chosen")})
            for p in first.values()]  # fmt: skip


def hf_preferences(
    name: str,
    path: str | None = None,
    split: str = "train",
    data_files: Any = None,
    columns: dict[str, str] | None = None,
    sizes: dict[str, int | None] | None = None,
    format: str = "auto",
    pairing: str = "best_worst",
    eval_split: str | None = None,
    eval_path: str | None = None,
    sources: list[dict[str, Any]] | None = None,
    seed: int = 0,
) -> TaskData:
    """Load preference pairs; SFT warm-starts on the chosen responses. No verifier: evaluation is the
    validation reward accuracy and margins.

    ``sizes`` has the built-in tasks' keys: ``pref`` keeps only the first N rows (null = all; of a mixture:
    the number of mixed pairs), ``sft_val`` holds out that many chosen responses for the SFT validation loss.
    ``pairing`` turns ranked completions into pairs (:mod:`bmc.data.ranked`).

    The eval split (``eval_split`` of ``path``, or ``eval_path``, read in split ``eval_split`` or ``train``)
    gives the held-out prompts (``eval_examples``, the first chosen response of each as the reference) and
    the validation pairs (``val_pairs``); training pairs on its prompts are dropped and counted.
    ``sources`` mixes several datasets (:mod:`bmc.data.mixture`), sampled with ``seed``.
    """
    sizes = {"pref": None, "sft_val": 64, **(sizes or {})}
    reading = {"path": path, "split": split, "data_files": data_files, "columns": columns, "format": format,
               "pairing": pairing}  # fmt: skip
    dropped: Counter[str] = Counter()
    if sources:
        if path is not None:
            raise DataError(f"set task.path ({path!r}) or task.sources, not both")
        parts = mixture.parse_sources(sources, {**reading, "eval_split": eval_split})
        pairs = mixture.mix(parts, {s.name: _reading(s.reading, dropped, f"read {s.name}") for s in parts},
                            sizes["pref"], seed)  # fmt: skip
        held_out = [(s.name, {**s.reading, "split": s.eval_split}) for s in parts if s.eval_split is not None]
    elif path is None:
        raise DataError("task.path (a file, folder or hub dataset) or task.sources must be set")
    else:
        pairs = _reading({**reading, "first_rows": sizes["pref"]}, dropped, "read")
        held_out = [(None, {**reading, "split": eval_split})] if eval_split is not None else []
    if eval_path is not None:
        held_out = [(None, {**reading, "path": eval_path, "split": eval_split or "train", "data_files": None})]
    eval_pairs = [mixture.tagged(p, source) for source, settings in held_out
                  for p in _reading(settings, dropped, "eval split")]  # fmt: skip
    pairs = _disjoint_from(pairs, eval_pairs, dropped)
    sft = [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs]
    n_val = sizes["sft_val"]
    extra = sorted({column for pair in pairs + eval_pairs for column in pair} - set(FIELDS))
    examples = _reference_examples(eval_pairs)
    report = {"dropped": dict(dropped), **({"extra_columns": extra} if extra else {})}
    if sources:
        report["sources"] = dict(Counter(p[mixture.SOURCE] for p in pairs))
    if eval_pairs:
        report |= {"eval_pairs": len(eval_pairs), "eval_prompts": len(examples)}
    return TaskData(name=name, sft_train=sft[n_val:] or sft, sft_val=sft[:n_val], pairs=pairs, val_pairs=eval_pairs,
                    eval_examples=examples, report=report)  # fmt: skip
