"""Real preference datasets through ``datasets.load_dataset``: a local JSONL/JSON/CSV/Parquet file or folder,
or a hub name where the network allows.

The layouts of the published datasets are read as they are (:mod:`bmc.data.layouts`): standard rows with an
explicit or an implicit prompt, conversational rows (UltraFeedback-binarized included), HH-RLHF transcripts,
and ranked completions (raw UltraFeedback, :mod:`bmc.data.ranked`, paired by ``pairing``); ``format`` names
one where the columns leave it open. ``columns`` maps other column names onto
``prompt``/``chosen``/``rejected``.

Conversational prompts stay message lists here; :func:`bmc.data.render.render_task` turns them into text once
(with the model's chat template when it has one), for the SFT warm start and the preference pairs alike.

Input policy: a bad file or row raises :class:`DataError` naming the file, the row and the field (invalid
UTF-8, malformed JSON, missing columns, wrong types, nulls, roles that do not alternate). Rows are numbered
from 1: the line number in JSON Lines files, the element in JSON arrays, the data row (header excluded) in
CSV and Parquet files. Rows with an empty prompt or response, identical responses, or that repeat an
earlier row exactly are dropped with a warning that counts them and lists their row numbers: duplicates
would weigh a pair twice and could land on both sides of the train/validation split.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from bmc.data import ranked
from bmc.data.layouts import LAYOUTS, DataError, detect_layout, kind_of
from bmc.data.sources import TaskData

log = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FIELDS = ("prompt", "chosen", "rejected")
RANKED = "ranked"  # the one layout with several pairs per row (bmc.data.ranked)
FORMATS = (*LAYOUTS, RANKED)  # what task.format may name besides auto


def _decode_utf8(local: Path) -> str:
    data = local.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{local}, line {line}: not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start}); "
            "re-encode the file as UTF-8"
        ) from None


def _json_lines(local: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line; a line that is not JSON raises naming it."""
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            raise DataError(f"{local}, line {number}: malformed JSON ({error.msg} at column {error.colno})") from None
    return rows


def _json_rows(local: Path) -> list[tuple[int, Any]]:
    """A ``.json`` file holding one array of rows, or JSON Lines; a ``.jsonl`` file is always JSON Lines."""
    text = _decode_utf8(local)
    if local.suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            document = None  # not one JSON document: read it as JSON Lines
        if isinstance(document, list):
            return list(enumerate(document, 1))
    return _json_lines(local, text)


def _load_rows(path: str, split: str, data_files: Any = None) -> list[tuple[int, dict[str, Any]]]:
    """(row number, row) pairs of a local file, a dataset folder or a hub dataset."""
    local = Path(path)
    if local.is_file():
        builder = _BUILDERS.get(local.suffix)
        if builder is None:
            raise DataError(f"{path}: unsupported file type {local.suffix!r}; use one of {sorted(_BUILDERS)}")
        if builder == "json":
            # read here rather than by pyarrow, whose errors name neither the line nor the row
            rows = _json_rows(local)
            for number, row in rows:
                if not isinstance(row, dict):
                    raise DataError(f"{path}, row {number}: expected an object with columns, got {kind_of(row)}")
            return rows
        if builder == "csv":
            _decode_utf8(local)
        loader = {"path": builder, "data_files": str(local), "split": "train"}
    else:
        loader = {"path": path, "data_files": data_files, "split": split}
    from datasets import load_dataset  # here, not at the top: JSON files never need it (about 80 MB resident)

    try:
        dataset = load_dataset(**loader)
    except Exception as error:  # pyarrow/pandas/hub errors: say which file, keep the cause for debugging
        raise DataError(f"{path}: could not be read as a {loader['path']} dataset: {error}") from error
    return list(enumerate(dataset.to_list(), 1))


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


def filter_pairs(numbered: list[tuple[int, dict[str, Any]]], source: str) -> list[dict[str, Any]]:
    """Drop pairs with an empty prompt or response, identical responses, or that repeat an earlier row
    exactly, and say which rows (by their numbers in ``numbered``) and why."""
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
    return kept


def _numbered_pairs(
    rows: list[tuple[int, dict[str, Any]]], layout: str, columns: dict[str, str], pairing: str, path: str
) -> list[tuple[int, dict[str, Any]]]:
    """(row number, pair) of every pair the rows hold: one per row, or several for ranked completions."""
    if layout != RANKED:
        return [(n, LAYOUTS[layout](r, columns, f"{path}, row {n}")) for n, r in rows]
    numbered, ties = [], 0
    for n, r in rows:
        pairs, tied = ranked.ranked_pairs(r, columns, f"{path}, row {n}", pairing)
        numbered += [(n, pair) for pair in pairs]
        ties += tied
    if ties:
        log.warning("%s: dropped %d completion pair(s) with equal scores (no preference; task.pairing=%s)",
                    path, ties, pairing)  # fmt: skip
    return numbered


def hf_preferences(
    name: str,
    path: str,
    split: str = "train",
    data_files: Any = None,
    columns: dict[str, str] | None = None,
    sizes: dict[str, int | None] | None = None,
    format: str = "auto",
    pairing: str = "best_worst",
) -> TaskData:
    """Load preference pairs; SFT warm-starts on the chosen responses. No verifier: evaluation is the
    validation reward accuracy and margins.

    ``sizes`` has the built-in tasks' keys: ``pref`` keeps only the first N rows (null = all),
    ``sft_val`` holds out that many chosen responses for the SFT validation loss. ``pairing`` turns ranked
    completions into pairs (:mod:`bmc.data.ranked`).
    """
    sizes = {"pref": None, "sft_val": 64, **(sizes or {})}
    columns = {**{f: f for f in FIELDS}, **ranked.COLUMNS, **(columns or {})}
    rows = _load_rows(path, split, data_files)
    if sizes["pref"] is not None:
        rows = rows[: sizes["pref"]]
    if not rows:
        raise DataError(f"{path}: no rows in split {split!r}")
    layout = detect_layout(rows[0][1], columns) if format == "auto" else format
    if layout not in FORMATS:
        raise DataError(f"{path}: task.format must be auto or one of {sorted(FORMATS)}, got {format!r}")
    log.info("%s: %d row(s) in the %s layout", path, len(rows), layout)
    pairs = filter_pairs(_numbered_pairs(rows, layout, columns, pairing, path), path)
    if not pairs:
        raise DataError(f"{path}: all {len(rows)} row(s) were dropped; the warnings above say which and why")
    sft = [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs]
    n_val = sizes["sft_val"]
    return TaskData(name=name, sft_train=sft[n_val:] or sft, sft_val=sft[:n_val], pairs=pairs)
