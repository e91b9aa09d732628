"""Ranked lists from full rankings (``data.ranking=full``): what listwise losses train on (METHODS.md section 6).

A list row is a pair row with the whole ranking beside it: ``{prompt, chosen, rejected, responses, ranks}`` and,
where the ranking came from scores, ``scores``. ``responses`` are best first, ``ranks`` their tie-block index
(0 = best), ``scores`` their grades ψ. ``chosen``/``rejected`` are the first and last response, so every stage
that reads pairs (splits, the data report, an evaluation's held-out prompts, a pairwise loss) reads a list row as
the pair of its best and worst response.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def list_rows(
    samples: Sequence[Mapping[str, Any]],
    rankings: Sequence[Sequence[Sequence[int]]],
    dropped: Counter,
    scores: Sequence[Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """One list row per sample from its ranking (tie blocks of completion indices, best block first) and, with
    ``scores``, each completion's score.

    A repeated text is kept once, where it ranks best (a list of duplicates would pit a response against
    itself). A prompt is dropped, counted in ``dropped`` by reason, when its best response was cut off by the
    token budget (``truncated chosen``, as for pairs) or when fewer than two tie blocks are left (``all tied
    after ranking``: no preference to learn).
    """
    rows = []
    for index, (sample, blocks) in enumerate(zip(samples, rankings)):
        if sample["truncated"][blocks[0][0]]:  # ranked with the cut-off ones (data.drop_truncated_rejected=false)
            dropped["truncated chosen"] += 1
            continue
        seen: set[str] = set()
        members: list[tuple[int, int]] = []  # (block, completion)
        for block, completions in enumerate(blocks):
            for completion in completions:
                text = sample["completions"][completion]
                if text not in seen:
                    seen.add(text)
                    members.append((block, completion))
        kept_blocks = sorted({block for block, _ in members})
        if len(kept_blocks) < 2:
            dropped["all tied after ranking"] += 1
            continue
        responses = [sample["completions"][completion] for _, completion in members]
        row = {
            "prompt": sample["prompt"],
            "chosen": responses[0],
            "rejected": responses[-1],
            "responses": responses,
            "ranks": [kept_blocks.index(block) for block, _ in members],
        }
        if scores is not None:
            row["scores"] = [float(scores[index][completion]) for _, completion in members]
        rows.append(row)
    return rows


def list_sizes(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many lists have each number of responses K, for the data report (``{"4": 10, "5": 52}``)."""
    return {str(size): count for size, count in sorted(Counter(len(row["responses"]) for row in rows).items())}
