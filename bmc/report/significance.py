"""Which differences in a table hold beyond noise: a paired bootstrap test over the held-out prompts and the
seeds, Holm–Bonferroni-corrected across the table's cells.

**Resampled differences.** Each run's evaluation writes every held-out answer's verifier score
(``eval_answers.jsonl``, see :data:`bmc.summary_file.EVAL_ANSWERS`). For a row and the baseline row on one (task,
metric), a resample draws the prompts with replacement, the same draw for both rows (paired: every row
answered the same prompts), and each row's seeds with replacement; its statistic δ* is the row's mean minus the
baseline's. The 95% interval is the 2.5th to 97.5th percentile of the B resampled δ*. Prompt noise dominates
at a few hundred prompts; seed noise is what a rerun of training adds.

**p-value.** The two-sided p-value of "no difference" is the one that inverts the percentile interval (the
largest level whose interval still holds 0), with the Monte Carlo convention of counting the observed case
(Davison & Hinkley 1997, *Bootstrap Methods and their Application*, ch. 4) so that no p is 0:

    p = min(1, 2 · (1 + min(#{δ* ≤ 0}, #{δ* ≥ 0})) / (B + 1))

Rows identical on every resample (δ* ≡ 0) give p = 1; a row ahead on every resample gets the smallest p
there is, 2 / (B + 1); p ≤ 0.05 about where the 95% interval excludes 0.

**Seeds.** With fewer than :data:`MIN_SEEDS` seeds in the row or the baseline, resampling the seeds cannot
show what a rerun of training adds (with one seed it adds nothing): the interval is prompt noise only. Such
cells are marked ◦, never ▲/▼, and are not among the tests.

**Holm across the table.** Every (method, task, metric) cell of one table compared with the baseline with
enough seeds on both sides is one of m tests, Holm-corrected at α (:mod:`bmc.report.holm`): a cell is marked
▲/▼ only where its adjusted p is ≤ α.

**Resamples.** ``B = min(100 000, max(2000, ⌈20 m / α⌉))``. The smallest p, 2 / (B + 1), is then about a tenth
of the smallest Holm threshold α / m, and a p-value at α / m has a Monte Carlo standard deviation of about a
third of itself (p = 2k / B with k ~ Binomial(B, p / 2): sd = √(2p / B) = p / √10 there); under the cap the
smallest p stays below α / m up to m ≈ 2500 tests at α = 0.05.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from bmc.report.holm import holm_adjusted
from bmc.report.records import RunRecord
from bmc.report.table import Table
from bmc.summary_file import EVAL_ANSWERS

#: metrics that per-prompt scores give, and how one answer's verifier score counts towards each
PER_PROMPT: dict[str, Callable[[float], float]] = {
    "eval/accuracy": lambda score: float(score == 1.0),
    "eval/score": float,
}
MARK_BETTER, MARK_WORSE, MARK_PROMPT_NOISE = "▲", "▼", "◦"
#: seeds a row and the baseline each need before a difference is tested beyond noise (fewer: prompt noise only)
MIN_SEEDS = 3
#: the family-wise error rate of one table's marks
ALPHA = 0.05
#: B = clamp(RESOLUTION · m / α, MIN_RESAMPLES, MAX_RESAMPLES) (module docstring)
RESOLUTION, MIN_RESAMPLES, MAX_RESAMPLES = 20, 2000, 100_000
#: resamples drawn at once: their (resamples, prompts) draw counts stay at tens of MB for a few hundred prompts
CHUNK = 4096
#: |δ*| at or below this counts as 0: means of the same scores summed in another order differ in the last bits
ZERO = 1e-12


class Bootstrap(NamedTuple):
    """A paired bootstrap's mean difference, its 95% percentile interval and its two-sided p-value."""

    delta: float
    low: float
    high: float
    p_value: float


@dataclass(frozen=True)
class Difference:
    """A row's difference to the baseline row on one (task, metric): its bootstrap interval and p-value, and
    the Holm-adjusted p-value across the table (None when the cell is not tested: too few seeds)."""

    method: str
    baseline: str
    task: str
    metric: str
    delta: float
    low: float
    high: float
    p_value: float
    prompts: int
    seeds: int
    baseline_seeds: int
    alpha: float = ALPHA
    p_holm: float | None = None

    @property
    def tested(self) -> bool:
        """Whether both sides have the seeds a beyond-noise claim needs (:data:`MIN_SEEDS`)."""
        return min(self.seeds, self.baseline_seeds) >= MIN_SEEDS

    @property
    def beyond_noise(self) -> bool:
        return self.p_holm is not None and self.p_holm <= self.alpha

    @property
    def mark(self) -> str:
        """▲ / ▼ when the row is better / worse than the baseline beyond noise (both metrics: higher is better),
        ◦ when too few seeds leave prompt noise only."""
        if not self.tested:
            return MARK_PROMPT_NOISE
        if not self.beyond_noise:
            return ""
        return MARK_BETTER if self.delta > 0 else MARK_WORSE


@dataclass(frozen=True)
class Differences:
    """Every cell of one table compared with ``baseline``, the tested ones one Holm family at ``alpha``, each
    bootstrapped with ``resamples`` resamples."""

    baseline: str
    alpha: float
    resamples: int
    items: tuple[Difference, ...] = ()

    def __iter__(self) -> Iterator[Difference]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def tests(self) -> int:
        """m, the size of the Holm family."""
        return sum(d.tested for d in self.items)

    def notes(self) -> list[str]:
        """What the marks mean, for under the table: the test, B, α, m and the correction; the prompt-noise cells."""
        notes = []
        m = self.tests
        if m:
            notes.append(
                f"{MARK_BETTER}/{MARK_WORSE}: better/worse than {self.baseline} beyond noise, by a two-sided paired "
                f"bootstrap test of the difference in means ({self.resamples} resamples of the held-out prompts and "
                f"the seeds), Holm–Bonferroni-corrected across the m = {m} (method, task, metric) cells tested, at "
                f"α = {self.alpha:g} (smallest threshold α/m = {self.alpha / m:.2g}; smallest attainable p = "
                f"2/(B + 1) = {2 / (self.resamples + 1):.2g})."
            )
        if untested := len(self) - m:
            notes.append(
                f"{MARK_PROMPT_NOISE}: fewer than {MIN_SEEDS} seeds in the row or in {self.baseline} ({untested} "
                f"cells): their bootstrap covers prompt noise only, not what a rerun of training adds, so they get no "
                f"beyond-noise mark and are not among the tests."
            )
        return notes


def answer_scores(record: RunRecord) -> dict[str, float] | None:
    """``prompt -> verifier score`` of a completed local run's held-out answers; None without the file."""
    path = None if record.path is None or not record.ok else record.path / EVAL_ANSWERS
    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["prompt"]: float(row["score"]) for row in rows}


def resamples_for(tests: int, alpha: float) -> int:
    """B for a family of ``tests`` tests at ``alpha``: ``min(100 000, max(2000, ⌈20 m / α⌉))`` (module docstring)."""
    return min(MAX_RESAMPLES, max(MIN_RESAMPLES, math.ceil(RESOLUTION * tests / alpha)))


def paired_bootstrap(
    baseline: np.ndarray, other: np.ndarray, resamples: int = MIN_RESAMPLES, seed: int = 0
) -> Bootstrap:
    """Mean difference ``other - baseline``, its 2.5th and 97.5th percentile and its p-value over ``resamples``
    resamples (module docstring); both are (seeds, prompts) arrays over the same prompts in the same order."""
    rng = np.random.default_rng(seed)
    n_prompts = baseline.shape[1]
    both = np.vstack([other, baseline])

    def resampled_means(per_seed: np.ndarray) -> np.ndarray:
        """A row's mean over its seeds drawn with replacement, per resample; ``per_seed`` is (seeds, resamples)."""
        draws = rng.integers(0, per_seed.shape[0], size=(per_seed.shape[1], per_seed.shape[0]))
        return np.take_along_axis(per_seed.T, draws, axis=1).mean(axis=1)

    chunks = []
    for start in range(0, resamples, CHUNK):
        n = min(CHUNK, resamples - start)
        prompts = rng.integers(0, n_prompts, size=(n, n_prompts))
        # how often each resample drew each prompt: every seed's mean on every resample is then one matrix
        # product, ten times faster than gathering (seeds, resamples, prompts) scores
        counts = np.bincount((prompts + n_prompts * np.arange(n)[:, None]).ravel(), minlength=n * n_prompts)
        per_seed = both @ counts.reshape(n, n_prompts).T / n_prompts
        chunks.append(resampled_means(per_seed[: len(other)]) - resampled_means(per_seed[len(other) :]))
    deltas = np.concatenate(chunks)
    low, high = np.percentile(deltas, [2.5, 97.5])
    far_side = min(np.count_nonzero(deltas <= ZERO), np.count_nonzero(deltas >= -ZERO))
    p_value = min(1.0, 2 * (1 + int(far_side)) / (resamples + 1))
    return Bootstrap(float(other.mean() - baseline.mean()), float(low), float(high), p_value)


def differences(
    records: Sequence[RunRecord],
    baseline: str,
    metrics: Sequence[str],
    alpha: float = ALPHA,
    resamples: int | None = None,
    seed: int = 0,
) -> Differences:
    """Every other row's difference to ``baseline`` on each task and per-prompt metric, over the prompts all
    the runs involved answered, the tested ones Holm-corrected as one family; rows (or tasks) without answer
    files are left out. ``resamples``: B, by default :func:`resamples_for` the family."""
    scores: dict[tuple[str, str], list[dict[str, float]]] = {}
    for record in records:
        answers = answer_scores(record)
        if answers:
            scores.setdefault((record.method, record.task), []).append(answers)
    compared = []
    for (method, task), runs in scores.items():
        base_runs = scores.get((baseline, task))
        if method == baseline or not base_runs:
            continue
        prompts = sorted(set.intersection(*(set(run) for run in runs + base_runs)))
        if not prompts:
            continue
        for metric in (m for m in metrics if m in PER_PROMPT):
            base, row = (_per_prompt(group, prompts, PER_PROMPT[metric]) for group in (base_runs, runs))
            compared.append((method, task, metric, base, row))
    tests = sum(min(len(base), len(row)) >= MIN_SEEDS for *_, base, row in compared)
    resamples = resamples or resamples_for(tests, alpha)
    measured = []
    for method, task, metric, base, row in compared:
        delta, low, high, p_value = paired_bootstrap(base, row, resamples, seed)
        measured.append(
            Difference(
                method, baseline, task, metric, delta, low, high, p_value, base.shape[1], len(row), len(base), alpha
            )
        )
    adjusted = iter(holm_adjusted([d.p_value for d in measured if d.tested]))
    items = tuple(replace(d, p_holm=next(adjusted)) if d.tested else d for d in measured)
    return Differences(baseline, alpha, resamples, items)


def _per_prompt(runs: list[dict[str, float]], prompts: list[str], count: Callable[[float], float]) -> np.ndarray:
    return np.array([[count(run[p]) for p in prompts] for run in runs])


def differences_markdown(diffs: Differences, decimals: int = 3) -> str:
    """One line per (row, task, metric): the difference to the baseline, its 95% interval, its p-value and the
    Holm-adjusted one (``-``: not tested)."""
    if not diffs:
        return ""
    lines = [
        f"Differences to {diffs.baseline} (paired bootstrap over prompts and seeds, {diffs.resamples} resamples; "
        f"95% percentile interval; p: two-sided, 2·(1 + resamples on the far side of 0)/(B + 1); Holm p: adjusted "
        f"across the m = {diffs.tests} cells with at least {MIN_SEEDS} seeds on both sides, "
        f"{MARK_BETTER}/{MARK_WORSE} where ≤ α = {diffs.alpha:g}; {MARK_PROMPT_NOISE}: fewer seeds, prompt noise "
        f"only, not tested)\n",
        "| method | task | metric | difference | 95% interval | p | Holm p | prompts | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in diffs:
        interval = f"[{d.low:+.{decimals}f}, {d.high:+.{decimals}f}]"
        holm = "-" if d.p_holm is None else f"{d.p_holm:.2g}"
        lines.append(
            f"| {d.method} | {d.task} | {d.metric} | {d.delta:+.{decimals}f} {d.mark} | {interval} | {d.p_value:.2g} "
            f"| {holm} | {d.prompts} | {d.seeds} vs {d.baseline_seeds} |"
        )
    return "\n".join(lines) + "\n"


#: the row differences are measured against when the caller names none: the control every preference method
#: must beat (method=sft_chosen)
DEFAULT_BASELINE = "SFT+chosen"


def mark_table(
    table: Table, records: Sequence[RunRecord], baseline: str, alpha: float = ALPHA, resamples: int | None = None
) -> Differences:
    """Mark ``table``'s cells that differ from ``baseline``'s beyond noise (▲/▼) or have too few seeds to
    tell (◦), say what the marks mean under it, and return every difference measured."""
    diffs = differences(records, baseline, table.metrics, alpha, resamples)
    for d in diffs:
        if d.mark:
            table.mark(d.method, d.task, d.metric, d.mark)
    table.notes += diffs.notes()
    return diffs
