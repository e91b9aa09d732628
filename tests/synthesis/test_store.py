"""resumable_map: a killed run resumes without redoing finished items, and a torn last journal line is ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bmc.synthesis.store import resumable_map


class Interrupted(RuntimeError):
    pass


def test_resumable_map_resumes_without_redoing_finished_items(tmp_path: Path) -> None:
    items = list(range(10))
    calls: list[list[int]] = []

    def process(batch: list[int], first: int, fail_at: int | None = None) -> list[dict]:
        if fail_at is not None and first >= fail_at:
            raise Interrupted
        calls.append(batch)
        return [{"square": x * x, "first": first} for x in batch]

    with pytest.raises(Interrupted):
        resumable_map(tmp_path, "stage", {"v": 1}, items, lambda b, f: process(b, f, fail_at=6), batch_size=3)
    assert calls == [[0, 1, 2], [3, 4, 5]]
    journal = next((tmp_path / "stage").glob("*.journal.jsonl"))
    assert len(journal.read_text().splitlines()) == 6  # finished items were stored as they completed

    result = resumable_map(tmp_path, "stage", {"v": 1}, items, process, batch_size=3)
    assert calls[2:] == [[6, 7, 8], [9]]  # only the unfinished batches ran
    assert [r["square"] for r in result] == [x * x for x in items]
    assert not journal.exists()

    again = resumable_map(tmp_path, "stage", {"v": 1}, items, process, batch_size=3)
    assert again == result and len(calls) == 4  # cache hit: nothing recomputed
    resumable_map(tmp_path, "stage", {"v": 2}, items, process, batch_size=3)
    assert len(calls) == 8  # another config is another cache entry


def test_a_torn_last_journal_line_is_ignored(tmp_path: Path) -> None:
    items = [1, 2]
    with pytest.raises(Interrupted):
        resumable_map(tmp_path, "s", {}, items, lambda b, f: (_ for _ in ()).throw(Interrupted()), batch_size=1)
    journal = next((tmp_path / "s").glob("*.journal.jsonl"))
    journal.write_text(json.dumps({"index": 0, "result": {"x": 1}}) + "\n" + '{"index": 1, "res')
    result = resumable_map(tmp_path, "s", {}, items, lambda b, f: [{"x": 2}], batch_size=1)
    assert result == [{"x": 1}, {"x": 2}]
