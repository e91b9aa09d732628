"""Real preference datasets through ``datasets.load_dataset``: a local JSONL/JSON/CSV/Parquet file or folder,
or a hub name where the network allows.

Two row formats are understood, as in TRL:
- standard: ``prompt``, ``chosen``, ``rejected`` strings;
- conversational: ``chosen``/``rejected`` are lists of ``{role, content}`` messages, with the prompt either
  in a ``prompt`` column (a message list) or implicit as the messages the two conversations share.
``columns`` maps other column names onto ``prompt``/``chosen``/``rejected``.

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

from bmc.data.sources import TaskData

log = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
FIELDS = ("prompt", "chosen", "rejected")


class DataError(ValueError):
    """A bad row or file: the message names the file, the row and the field."""


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
                    raise DataError(f"{path}, row {number}: expected an object with columns, got {_kind(row)}")
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


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)


def _check_messages(messages: list[dict[str, str]], where: str) -> None:
    roles = [m["role"] for m in messages if m["role"] != "system"]
    for previous, current in zip(roles, roles[1:]):
        if previous == current:
            raise DataError(f"{where}: roles must alternate between user and assistant, got {roles}")
    for m in messages:
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message content must be a string, got {type(m['content']).__name__}")


def normalise_row(row: dict[str, Any], columns: dict[str, str], where: str) -> dict[str, Any]:
    """Map columns, check types and split conversational rows into prompt messages and a final answer.

    Returns ``{prompt, chosen, rejected}`` where prompt is a string or a message list and the responses are
    strings.
    """
    missing = [columns[f] for f in ("chosen", "rejected") if columns[f] not in row]
    conversational = not missing and _is_messages(row[columns["chosen"]]) and _is_messages(row[columns["rejected"]])
    if columns["prompt"] not in row and not conversational:  # only conversational rows may imply the prompt
        missing.insert(0, columns["prompt"])
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; the row has {sorted(row)}")
    prompt = row.get(columns["prompt"])
    chosen, rejected = row[columns["chosen"]], row[columns["rejected"]]
    if conversational:
        if prompt is None:  # implicit prompt: the shared leading messages
            shared = 0
            while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
                shared += 1
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not _is_messages(prompt):
            raise DataError(f"{where}: field {columns['prompt']!r} must be a message list in conversational rows")
        for name, messages in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            _check_messages(messages, f"{where}, field {columns[name]!r}")
        for name, messages in (("chosen", chosen), ("rejected", rejected)):
            if len(messages) != 1 or messages[0]["role"] != "assistant":
                raise DataError(f"{where}, field {columns[name]!r}: expected one final assistant message")
        _check_messages(prompt + chosen, f"{where}, field {columns['prompt']!r}+{columns['chosen']!r}")
        return {"prompt": prompt, "chosen": chosen[0]["content"], "rejected": rejected[0]["content"]}
    for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise DataError(f"{where}, field {columns[name]!r}: expected a string, got {_kind(value)}")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


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


def hf_preferences(
    name: str,
    path: str,
    split: str = "train",
    data_files: Any = None,
    columns: dict[str, str] | None = None,
    sizes: dict[str, int | None] | None = None,
) -> TaskData:
    """Load preference pairs; SFT warm-starts on the chosen responses. No verifier: evaluation is the
    validation reward accuracy and margins.

    ``sizes`` has the built-in tasks' keys: ``pref`` keeps only the first N rows (null = all),
    ``sft_val`` holds out that many chosen responses for the SFT validation loss.
    """
    sizes = {"pref": None, "sft_val": 64, **(sizes or {})}
    columns = {**{f: f for f in FIELDS}, **(columns or {})}
    rows = _load_rows(path, split, data_files)
    if sizes["pref"] is not None:
        rows = rows[: sizes["pref"]]
    if not rows:
        raise DataError(f"{path}: no rows in split {split!r}")
    pairs = filter_pairs([(n, normalise_row(r, columns, f"{path}, row {n}")) for n, r in rows], path)
    if not pairs:
        raise DataError(f"{path}: all {len(rows)} row(s) were dropped; the warnings above say which and why")
    sft = [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs]
    n_val = sizes["sft_val"]
    return TaskData(name=name, sft_train=sft[n_val:] or sft, sft_val=sft[:n_val], pairs=pairs)
