"""Which differences in a table hold beyond noise: a paired bootstrap over the held-out prompts and the seeds.

Each run's evaluation writes every held-out answer's verifier score (``eval_answers.jsonl``, see
:data:`bmc.summary.EVAL_ANSWERS`). For a row and the baseline row on one task, a resample draws the prompts
with replacement, the same draw for both rows (paired: every row answered the same prompts), and each row's
seeds with replacement; its statistic is the row's mean minus the baseline's. The 95% interval is the 2.5th
to 97.5th percentile of the resampled statistics, and a difference holds beyond noise when the interval
excludes 0. Prompt noise dominates at a few hundred prompts; seed noise is what a rerun of training adds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bmc.report.records import RunRecord
from bmc.report.table import Table
from bmc.summary import EVAL_ANSWERS

#: metrics that per-prompt scores give, and how one answer's verifier score counts towards each
PER_PROMPT: dict[str, Callable[[float], float]] = {
    "eval/accuracy": lambda score: float(score == 1.0),
    "eval/score": float,
}
MARK_BETTER, MARK_WORSE = "▲", "▼"


@dataclass(frozen=True)
class Difference:
    """A row's difference to the baseline row on one (task, metric), with its bootstrap interval."""

    method: str
    baseline: str
    task: str
    metric: str
    delta: float
    low: float
    high: float
    prompts: int
    seeds: int
    baseline_seeds: int

    @property
    def beyond_noise(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def mark(self) -> str:
        """▲ / ▼ when the row is better / worse than the baseline beyond noise (both metrics: higher is better)."""
        if not self.beyond_noise:
            return ""
        return MARK_BETTER if self.delta > 0 else MARK_WORSE


def answer_scores(record: RunRecord) -> dict[str, float] | None:
    """``prompt -> verifier score`` of a completed local run's held-out answers; None without the file."""
    path = None if record.path is None or not record.ok else record.path / EVAL_ANSWERS
    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["prompt"]: float(row["score"]) for row in rows}


def paired_bootstrap(
    baseline: np.ndarray, other: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean difference, 2.5th and 97.5th percentile) of ``other - baseline``; both are (seeds, prompts)
    arrays over the same prompts in the same order."""
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, baseline.shape[1], size=(resamples, baseline.shape[1]))

    def resampled_means(scores: np.ndarray) -> np.ndarray:
        per_seed = scores[:, prompts].mean(axis=2)  # (seeds, resamples): each seed on the resampled prompts
        draws = rng.integers(0, scores.shape[0], size=(resamples, scores.shape[0]))
        return np.take_along_axis(per_seed.T, draws, axis=1).mean(axis=1)

    deltas = resampled_means(other) - resampled_means(baseline)
    low, high = np.percentile(deltas, [2.5, 97.5])
    return float(other.mean() - baseline.mean()), float(low), float(high)


def differences(
    records: Sequence[RunRecord],
    baseline: str,
    metrics: Sequence[str],
    resamples: int = 2000,
    seed: int = 0,
) -> list[Difference]:
    """Every other row's difference to ``baseline`` on each task and per-prompt metric, over the prompts all
    the runs involved answered; rows (or tasks) without answer files are left out."""
    scores: dict[tuple[str, str], list[dict[str, float]]] = {}
    for record in records:
        answers = answer_scores(record)
        if answers:
            scores.setdefault((record.method, record.task), []).append(answers)
    out = []
    for (method, task), runs in scores.items():
        base_runs = scores.get((baseline, task))
        if method == baseline or not base_runs:
            continue
        prompts = sorted(set.intersection(*(set(run) for run in runs + base_runs)))
        if not prompts:
            continue
        for metric in (m for m in metrics if m in PER_PROMPT):
            base, row = (_per_prompt(group, prompts, PER_PROMPT[metric]) for group in (base_runs, runs))
            delta, low, high = paired_bootstrap(base, row, resamples, seed)
            out.append(Difference(method, baseline, task, metric, delta, low, high, len(prompts), len(runs), len(base)))
    return out


def _per_prompt(runs: list[dict[str, float]], prompts: list[str], count: Callable[[float], float]) -> np.ndarray:
    return np.array([[count(run[p]) for p in prompts] for run in runs])


def differences_markdown(diffs: Sequence[Difference], decimals: int = 3) -> str:
    """One line per (row, task, metric): the difference to the baseline and its 95% interval."""
    if not diffs:
        return ""
    lines = [
        f"Differences to {diffs[0].baseline} (paired bootstrap over prompts and seeds, 95% interval; "
        f"{MARK_BETTER}/{MARK_WORSE}: beyond noise)\n",
        "| method | task | metric | difference | 95% interval | prompts | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in diffs:
        interval = f"[{d.low:+.{decimals}f}, {d.high:+.{decimals}f}]"
        lines.append(
            f"| {d.method} | {d.task} | {d.metric} | {d.delta:+.{decimals}f} {d.mark} | {interval} | {d.prompts} "
            f"| {d.seeds} vs {d.baseline_seeds} |"
        )
    return "\n".join(lines) + "\n"


#: the row differences are measured against when the caller names none: the control every preference method
#: must beat (method=sft_chosen)
DEFAULT_BASELINE = "SFT+chosen"


def mark_table(table: Table, records: Sequence[RunRecord], baseline: str, resamples: int = 2000) -> list[Difference]:
    """Mark ``table``'s cells that differ from ``baseline``'s beyond noise, say so in its footnote, and return
    every difference measured."""
    diffs = differences(records, baseline, table.metrics, resamples)
    table.marks.update({(d.method, d.task, d.metric): d.mark for d in diffs if d.mark})
    if diffs:
        table.footnote = (
            f"{MARK_BETTER}/{MARK_WORSE}: better/worse than {baseline} beyond noise (95% paired bootstrap interval "
            f"of the difference excludes 0; {resamples} resamples of the held-out prompts and the seeds)."
        )
    return diffs
