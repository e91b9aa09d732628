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
which the caller must drop. So must it drop a prompt whose comparisons were all ties (``IPRResult.tied``): the
judge told no two completions apart (all equally right or wrong for a verifier; a judge biased to one slot; replies
without a verdict), so "best" is completion 0 and "worst" completion 1 by sampling order alone. With a transitive
judge this is exactly the case where best and worst tie.

A full ranking (``data.ranking=full``, :func:`rank_full`) orders all N by binary insertion with the same
both-order ``compare``: completions 0, 1, … are inserted in sampling order into a list of tie blocks, best block
first; each insertion binary-searches the blocks, comparing the newcomer with a block's first member: better
goes above, worse below, a tie joins the block and ends the search. Without ties, completion i costs
⌈log2(i + 1)⌉ comparisons at most; ties end searches early. The ranking is what listwise losses train on.
Mean comparisons per prompt over every sampling order of N distinct completions, full vs best/worst: N = 4: 4.67
vs 5; N = 5: 7.07 vs 7; N = 8: 15.59 vs 13. With a verifier's ties (each completion right or wrong, p = 0.5, 2000
draws): 3.62, 5.07, 9.48 vs 5, 7, 13 (docs/measure_ipr_comparisons.py; tests/synthesis/test_ipr.py checks N = 5).
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

    ``identical`` is True when best and worst have the same text, ``tied`` when every comparison was a tie; either
    way the prompt gives no pair.
    """

    best_index: int
    worst_index: int
    comparisons: int
    judge_calls: int
    identical: bool
    tied: bool


def rank(judge: Judge, prompt: str, completions: Sequence[str]) -> IPRResult:
    """Best by winner-stays, worst by loser-stays over the eliminated (see the module docstring)."""
    if len(completions) < 2:
        raise ValueError(f"IPR needs at least 2 completions per prompt, got {len(completions)}")
    best, eliminated, decisive = 0, [], 0
    for challenger in range(1, len(completions)):
        verdict = compare(judge, prompt, completions[best], completions[challenger])
        decisive += verdict != 0
        if verdict < 0:
            eliminated.append(best)
            best = challenger
        else:
            eliminated.append(challenger)
    worst = eliminated[0]
    for challenger in eliminated[1:]:
        verdict = compare(judge, prompt, completions[worst], completions[challenger])
        decisive += verdict != 0
        if verdict > 0:
            worst = challenger
    comparisons = 2 * len(completions) - 3
    # each comparison asks two single judgments (not judge.calls' growth: other prompts' threads add to it)
    identical = completions[best] == completions[worst]
    result = IPRResult(best, worst, comparisons, 2 * comparisons, identical, tied=decisive == 0)
    log.debug("IPR: best %d, worst %d, %d comparisons, %d judge calls", best, worst, comparisons, result.judge_calls)
    return result


@dataclass(frozen=True)
class FullRanking:
    """Outcome of :func:`rank_full` for one prompt: ``blocks`` of completion indices, best block first, each
    block's members tied (in insertion order)."""

    blocks: list[list[int]]
    comparisons: int
    judge_calls: int


def rank_full(judge: Judge, prompt: str, completions: Sequence[str]) -> FullRanking:
    """All completions ranked by binary insertion into tie blocks (see the module docstring)."""
    if len(completions) < 2:
        raise ValueError(f"IPR needs at least 2 completions per prompt, got {len(completions)}")
    blocks: list[list[int]] = [[0]]
    comparisons = 0
    for newcomer in range(1, len(completions)):
        low, high = 0, len(blocks)
        while low < high:
            middle = (low + high) // 2
            comparisons += 1
            verdict = compare(judge, prompt, completions[blocks[middle][0]], completions[newcomer])
            if verdict == 0:
                blocks[middle].append(newcomer)
                break
            low, high = (middle + 1, high) if verdict > 0 else (low, middle)
        else:
            blocks.insert(low, [newcomer])
    log.debug("IPR full ranking: blocks %s, %d comparisons", blocks, comparisons)
    return FullRanking(blocks, comparisons, 2 * comparisons)


def rank_many(judge: Judge, samples: Sequence[Mapping[str, Any]], full: bool = False) -> list[Any]:
    """:func:`rank` (``full``: :func:`rank_full`) of each ``{prompt, completions}`` sample, in order, with up to
    ``judge.max_concurrency`` prompts judged at once (each prompt's comparisons stay in sequence: each depends on
    the last). The judge is told every completion first (:meth:`Judge.prepare`: a reward model scores them in
    batches across prompts)."""
    judge.prepare([(s["prompt"], completion) for s in samples for completion in s["completions"]])
    ranker = rank_full if full else rank
    return ordered_map(lambda s: ranker(judge, s["prompt"], s["completions"]), samples, judge.max_concurrency)


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


def score_blocks(scores: Sequence[float]) -> list[list[int]]:
    """The full ranking by scalar reward-model scores (``rm_score`` with ``data.ranking=full``): tie blocks of
    equal scores, highest first, each in index order."""
    rm_pairs(scores)  # the same checks
    return [[i for i in range(len(scores)) if scores[i] == value] for value in sorted(set(scores), reverse=True)]
