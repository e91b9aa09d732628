"""The rows of a preference dataset, numbered for error messages: a local JSONL/JSON/CSV/Parquet file, a
dataset folder or a hub dataset (``datasets.load_dataset``).

Rows are numbered from 1: the line number in JSON Lines files, the element in JSON arrays, the data row (header
excluded) in CSV and Parquet files. A file that cannot be read raises :class:`~bmc.data.layouts.DataError`
naming it and, where there is one, the line (invalid UTF-8, malformed JSON, a row that is not an object).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bmc.data.layouts import DataError, kind_of

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


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


def load_rows(path: str, split: str, data_files: Any = None) -> list[tuple[int, dict[str, Any]]]:
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
