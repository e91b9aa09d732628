"""Iterative pairwise ranking (IPR; Chen et al., arXiv 2411.05875; METHODS.md 2.1) and the ``rm_score`` baseline.

IPR picks a best and a worst of N sampled completions with a judge that only ever compares two of them:

- ``compare(x, a, b)`` (:func:`bmc.synthesis.judges.compare`) asks the judge in both orders,
  v = prefer(x, a, b) − prefer(x, b, a) ∈ {−2, …, 2} (each single judgment is +1/0/−1 for its first slot), so
  a judge that always favours one slot gives v = 0: position bias cancels. sign(v) is the verdict from a's
  point of view.
- Best (winner-stays): the incumbent starts as completion 0 and meets completions 1..N−1 in sampling order;
  the challenger takes over only on v < 0 (a tie keeps the incumbent). N−1 comparisons.
- Eliminated: the completions that lost a best-comparison, in the order they lost: the challenger when the
  incumbent stayed, the old incumbent when it was replaced. Every completion but the final best is eliminated
  exactly once, so there are N−1 of them.
- Worst (loser-stays): the incumbent starts as the first eliminated and meets the others in elimination order;
  the challenger takes over only if it is worse (v > 0 from the incumbent's side; a tie keeps the incumbent).
  N−2 comparisons.

Total: 2N−3 comparisons and 2(N−1) + 2(N−2) single judgments. The best completion is never among the
eliminated, so best and worst are different completions; their texts may still be equal (duplicate samples),
which the caller must drop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bmc.synthesis._common import ordered_map
from bmc.synthesis.judges import Judge, compare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IPRResult:
    """Outcome of :func:`rank` for one prompt.

    ``identical`` is True when best and worst have the same text; the prompt then gives no pair.
    """

    best_index: int
    worst_index: int
    comparisons: int
    judge_calls: int
    identical: bool


def rank(judge: Judge, prompt: str, completions: Sequence[str]) -> IPRResult:
    """Best by winner-stays, worst by loser-stays over the eliminated (see the module docstring)."""
    if len(completions) < 2:
        raise ValueError(f"IPR needs at least 2 completions per prompt, got {len(completions)}")
    best, eliminated = 0, []
    for challenger in range(1, len(completions)):
        if compare(judge, prompt, completions[best], completions[challenger]) < 0:
            eliminated.append(best)
            best = challenger
        else:
            eliminated.append(challenger)
    worst = eliminated[0]
    for challenger in eliminated[1:]:
        if compare(judge, prompt, completions[worst], completions[challenger]) > 0:
            worst = challenger
    comparisons = 2 * len(completions) - 3
    # each comparison asks two single judgments (not judge.calls' growth: other prompts' threads add to it)
    result = IPRResult(best, worst, comparisons, 2 * comparisons, completions[best] == completions[worst])
    log.debug("IPR: best %d, worst %d, %d comparisons, %d judge calls", best, worst, comparisons, result.judge_calls)
    return result


def rank_many(judge: Judge, samples: Sequence[Mapping[str, Any]]) -> list[IPRResult]:
    """:func:`rank` of each ``{prompt, completions}`` sample, in order, with up to ``judge.max_concurrency``
    prompts judged at once (each prompt's comparisons stay in sequence: winner-stays depends on them). The judge
    is told every completion first (:meth:`Judge.prepare`: a reward model scores them in batches across prompts)."""
    judge.prepare([(s["prompt"], completion) for s in samples for completion in s["completions"]])
    return ordered_map(lambda s: rank(judge, s["prompt"], s["completions"]), samples, judge.max_concurrency)


def rm_pairs(scores: Sequence[float]) -> tuple[int, int]:
    """The ``rm_score`` baseline: (argmax, argmin) of scalar reward-model scores, first index on ties.

    All-equal scores give best == worst; the caller drops such a prompt.
    """
    if not scores:
        raise ValueError("rm_pairs needs at least one score")
    if not all(math.isfinite(s) for s in scores):
        raise ValueError(f"reward-model scores must be finite, got {list(scores)}")
    indices = range(len(scores))
    return max(indices, key=scores.__getitem__), min(indices, key=scores.__getitem__)
