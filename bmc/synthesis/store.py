"""Resumable, cached per-item stages (sampling, judging, editing).

Finished items are appended to a JSONL journal as each batch completes, so a killed run resumes where it
stopped and loses nothing; when every item is done the results, in item order, become ``results.jsonl`` in
the stage's cache folder (keyed by its inputs and config, see :mod:`bmc.cache`) and the journal is removed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bmc.cache import cache_key, cached_dir

log = logging.getLogger(__name__)

#: part of the cache key, so that entries in an earlier file format are never read as this one
_FILE_FORMAT = "jsonl-v1"
RESULTS_FILE = "results.jsonl"


def _read_journal(path: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    with path.open() as f:
        for line in f:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the line being written when the run was killed
                continue
            done[entry["index"]] = entry["result"]
    return done


def resumable_map(
    root: str | os.PathLike,
    stage: str,
    payload: Any,
    items: Sequence[Any],
    process: Callable[[list[Any], int], list[dict[str, Any]]],
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """Apply ``process(batch, first_index)`` to ``items`` in batches, cached and resumable.

    ``process`` returns one JSON-serialisable dict per item. ``first_index`` lets it seed randomness per
    batch, so a resumed run produces exactly what an uninterrupted one would.
    """
    key_payload = {"payload": payload, "items": cache_key(items), "format": _FILE_FORMAT}
    journal = Path(root) / stage / f"{cache_key(key_payload)}.journal.jsonl"

    def build(folder: Path) -> None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        done = _read_journal(journal)
        if done:
            log.info("%s: resuming, %d/%d items already done", stage, len(done), len(items))
        starts = [
            s
            for s in range(0, len(items), batch_size)
            if any(i not in done for i in range(s, min(s + batch_size, len(items))))
        ]
        with journal.open("a") as out, tqdm(total=len(items), initial=len(done), desc=stage) as bar:
            if out.tell() and not journal.read_bytes().endswith(b"\n"):
                out.write("\n")  # end the line a killed run left torn, so the next entry is not glued to it
            for start in starts:
                results = process(list(items[start : start + batch_size]), start)
                for offset, result in enumerate(results):
                    out.write(json.dumps({"index": start + offset, "result": result}) + "\n")
                out.flush()
                os.fsync(out.fileno())
                bar.update(len(results))
        done = _read_journal(journal)
        with (folder / RESULTS_FILE).open("w") as out:
            out.writelines(json.dumps(done[i]) + "\n" for i in range(len(items)))

    folder = cached_dir(root, stage, key_payload, build)
    journal.unlink(missing_ok=True)
    return read_results(folder)


def read_results(folder: Path) -> list[dict[str, Any]]:
    """The results of a finished stage, in item order."""
    with (folder / RESULTS_FILE).open() as f:
        return [json.loads(line) for line in f]
