"""The rounds report (bmc/report/round_metrics.py): each method's metrics round by round, mean ± std over seeds."""

from __future__ import annotations

from bmc.report.records import RunRecord
from bmc.report.round_metrics import per_round, plot_rounds, rounds_markdown


def _run(method: str, seed: int, metrics: dict[str, float], status: str = "completed") -> RunRecord:
    record = RunRecord(f"{method}-{seed}", status, {"task": {"name": "math"}, "seed": seed}, metrics)
    record.method = method
    return record


def test_a_run_of_rounds_gives_each_round_and_a_single_run_round_one() -> None:
    rounds = _run("iter", 0, {"round/1/eval/accuracy": 0.5, "round/2/eval/accuracy": 0.75, "eval/accuracy": 0.75})
    single = _run("once", 0, {"eval/accuracy": 0.6})
    assert per_round(rounds, "eval/accuracy") == {1: 0.5, 2: 0.75}
    assert per_round(single, "eval/accuracy") == {1: 0.6}
    assert per_round(single, "data/pairs_out") == {}
    started = _run("iter", 1, {"eval/sft_accuracy": 0.4, "round/1/eval/accuracy": 0.5, "round/2/eval/accuracy": 0.6})
    assert per_round(started, "eval/accuracy") == {0: 0.4, 1: 0.5, 2: 0.6}  # round 0: the warm start
    assert per_round(started, "data/pairs_out") == {}


def test_the_table_has_mean_and_std_over_seeds_per_round_and_skips_runs_that_failed() -> None:
    records = [
        _run("iter", 0, {"round/1/eval/accuracy": 0.5, "round/2/eval/accuracy": 0.7}),
        _run("iter", 1, {"round/1/eval/accuracy": 0.3, "round/2/eval/accuracy": 0.8}),
        _run("iter", 2, {"round/1/eval/accuracy": 0.9, "round/2/eval/accuracy": 0.9}, status="failed"),
        _run("once", 0, {"eval/accuracy": 0.6}),
    ]
    table = rounds_markdown(records, metrics=("eval/accuracy",))
    # round 1: mean(0.5, 0.3) = 0.4, sample std = sqrt(0.02) = 0.1414; round 2: 0.75, sqrt(0.005) = 0.0707
    assert "| math | iter | 0.400 ± 0.141 (n=2) | 0.750 ± 0.071 (n=2) |" in table
    assert "| math | once | 0.600 (n=1) | - |" in table
    assert rounds_markdown([_run("once", 0, {"eval/accuracy": 0.6})]) == ""  # no run of rounds: no table


def test_the_plot_is_one_figure_per_task_with_a_line_per_method_and_a_level_for_one_round() -> None:
    records = [
        _run("iter", 0, {"round/1/eval/accuracy": 0.5, "round/2/eval/accuracy": 0.7}),
        _run("once", 0, {"eval/accuracy": 0.6}),
    ]
    records[1].metrics["eval/sft_accuracy"] = 0.4  # a one-round run's start does not move its level
    [(name, figure)] = plot_rounds(records, metrics=("eval/accuracy",))
    assert name == "rounds_math"
    [ax] = figure.axes
    assert sorted(ax.get_legend_handles_labels()[1]) == ["iter", "once"]
    [errorbars] = ax.containers  # the method of rounds: its means by round
    assert errorbars.get_label() == "iter" and list(errorbars.lines[0].get_ydata()) == [0.5, 0.7]
    [level] = [line for line in ax.lines if line.get_label() == "once"]  # the one-round run: a level
    assert list(level.get_ydata()) == [0.6, 0.6]
