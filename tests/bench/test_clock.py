"""The step clock times from the end of warmup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bmc.bench.clock import StepClock


def test_step_clock_times_from_the_end_of_warmup(tmp_path: Path, monkeypatch) -> None:
    times = iter([10.0, 11.0, 11.5, 13.0])
    monkeypatch.setattr("bmc.bench.clock.time.perf_counter", lambda: next(times))
    clock = StepClock(tmp_path / "clock.json", warmup=1)
    with pytest.raises(RuntimeError, match="warmup"):
        clock.result()
    for _ in range(4):
        clock.tick()
    clock.write()
    result = json.loads((tmp_path / "clock.json").read_text())
    assert result["steps"] == 4 and result["timed_steps"] == 3 and result["seconds"] == 3.0
    assert result["step_seconds"] == [1.0, 0.5, 1.5]
    assert result["peak_rss_mb"] > 0
    with pytest.raises(ValueError, match="warmup"):
        StepClock(tmp_path / "x.json", warmup=0)
