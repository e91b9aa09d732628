"""`python -m bmc.bench --smoke` produces a well-formed report (the real benchmark is `make bench`)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from bmc.bench.__main__ import format_table, main


def test_smoke_benchmark_writes_a_well_formed_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    # one mode keeps the test short; the in-step mode of the comparison loop is checked below
    report = main(["--smoke", "--modes", "precomputed", "--out", str(out), "--workdir", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    expected = ["ours_dpo", "ours_bmc", "bare"] + (["trl"] if importlib.util.find_spec("trl") else [])
    assert sorted(report["settings"]["implementations"]) == sorted(expected)
    assert report["machine"]["threads"] == 1 and report["machine"]["torch"]
    size = report["sizes"]["smoke"]
    assert size["parameters"] > 0 and size["steps"] >= 3 and 60 < size["tokens_per_pair"] < 400

    for mode in ("precomputed",):
        cell = report["results"]["smoke"][mode]
        assert sorted(cell["implementations"]) == sorted(expected)
        for row in cell["implementations"].values():
            assert row["pairs_per_s"] > 0 and row["peak_rss_mb"] > 50 and len(row["repeats"]) == 1
            (steps,) = row["step_seconds"]
            assert len(steps) == size["steps"] - report["settings"]["warmup_steps"] and all(s > 0 for s in steps)
        for impl in ("ours_dpo", "ours_bmc"):  # train.py's steps also in phases, within each step's time
            (phases,) = cell["implementations"][impl]["phase_seconds"]
            (steps,) = cell["implementations"][impl]["step_seconds"]
            assert sorted(phases) == ["backward", "forward", "optimizer"]
            for i, step in enumerate(steps):
                parts = [phases[name][i] for name in phases]
                assert all(p > 0 for p in parts) and sum(parts) <= step + 1e-3
            assert math.isclose(row["tokens_per_s"], row["pairs_per_s"] * size["tokens_per_pair"])
        ratios = cell["ratios"]
        rows = cell["implementations"]
        assert math.isclose(ratios["ours_dpo/bare"], rows["ours_dpo"]["pairs_per_s"] / rows["bare"]["pairs_per_s"])
        assert math.isclose(
            ratios["bmc_step/dpo_step"], rows["ours_dpo"]["pairs_per_s"] / rows["ours_bmc"]["pairs_per_s"]
        )
        assert ("ours_dpo/trl" in ratios) == ("trl" in expected)
    walls = report["results"]["smoke"]["train_py_wall_s"]
    assert set(walls) == {"reference_cache_miss", "reference_cache_hit"} and all(v > 0 for v in walls.values())

    targets = {(t["mode"], t["ratio"]) for t in report["targets"]}
    assert ("precomputed", "ours_dpo/bare") in targets and ("precomputed", "bmc_step/dpo_step") in targets
    assert all(isinstance(t["met"], bool) and t["value"] > 0 for t in report["targets"])
    table = format_table(report)
    assert all(f"| {name} |" in table for name in expected) and "reference cache miss" in table


def test_smoke_benchmark_runs_the_reference_in_the_step(tmp_path: Path) -> None:
    report = main(["--smoke", "--modes", "in_step", "--impls", "bare", "--out", str(tmp_path / "b.json")])
    row = report["results"]["smoke"]["in_step"]["implementations"]["bare"]
    assert row["pairs_per_s"] > 0 and "train_py_wall_s" not in report["results"]["smoke"]
