"""Preference pairs from ranked completions: a prompt with N scored completions (raw UltraFeedback's
``instruction`` + ``completions: [{response, overall_score, ...}]``), turned into pairs by ``task.pairing``:

- ``best_worst``: one pair per prompt, the highest-scored completion over the lowest (the first of equals);
- ``all_pairs``: every two completions with different scores, the higher-scored one chosen;
- ``lists``: one ranked list per prompt for listwise losses (:mod:`bmc.data.lists`): every completion, highest
  score first (equals in their order), equal scores in one tie block, the scores as the grades ψ; its best and
  worst are the row's ``chosen``/``rejected``.

Completions with equal scores carry no preference: such pairs are dropped and counted (all of a prompt's
completions tied: no pair at all). An empty completion is paired like the others, and its pairs are dropped
and counted as in every layout (``empty chosen`` / ``empty rejected``, :func:`bmc.data.hf_prefs.filter_pairs`).
A completion is ``{response, score}`` (column names from ``task.columns``: ``completions``, ``response``,
``score``), or a string with its score at the same index of a ``scores`` column. Each pair keeps
``score_chosen`` and ``score_rejected``.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

from bmc.data.layouts import DataError, is_messages, kind_of

PAIRINGS = ("best_worst", "all_pairs", "lists")
#: task.columns entries of this layout, beside prompt/chosen/rejected
COLUMNS = {"completions": "completions", "response": "response", "score": "score", "scores": "scores"}


def _scored(row: dict[str, Any], columns: dict[str, str], where: str) -> list[tuple[str, float]]:
    completions = row[columns["completions"]]
    if not isinstance(completions, list) or len(completions) < 2:
        got = f"{len(completions)}" if isinstance(completions, list) else kind_of(completions)
        field = columns["completions"]
        raise DataError(f"{where}, field {field!r}: expected a list of at least 2 completions, got {got}")
    parallel = row.get(columns["scores"])
    scored = []
    for i, item in enumerate(completions):
        at = f"{where}, field {columns['completions']!r}[{i}]"
        if isinstance(item, dict):
            if columns["response"] not in item or columns["score"] not in item:
                raise DataError(f"{at}: needs keys {[columns['response'], columns['score']]}, has {sorted(item)}")
            text, score = item[columns["response"]], item[columns["score"]]
        elif isinstance(item, str) and isinstance(parallel, list) and len(parallel) == len(completions):
            text, score = item, parallel[i]
        else:
            raise DataError(f"{at}: expected {{{columns['response']!r}, {columns['score']!r}}} or a string with a "
                            f"{columns['scores']!r} list of the same length, got {kind_of(item)}")  # fmt: skip
        if not isinstance(text, str):
            raise DataError(f"{at}: the response must be a string, got {kind_of(text)}")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise DataError(f"{at}: the score must be a finite number, got {score!r}")
        scored.append((text, float(score)))
    return scored


def ranked_pairs(
    row: dict[str, Any], columns: dict[str, str], where: str, pairing: str = "best_worst"
) -> tuple[list[dict[str, Any]], int]:
    """(the row's pairs, how many tied pairs were dropped)."""
    if pairing not in PAIRINGS:
        raise DataError(f"task.pairing must be one of {PAIRINGS}, got {pairing!r}")
    if columns["prompt"] not in row:
        raise DataError(f"{where}: missing column(s) [{columns['prompt']!r}]; the row has {sorted(row)}")
    prompt = row[columns["prompt"]]
    if not (isinstance(prompt, str) or is_messages(prompt)):
        raise DataError(f"{where}, field {columns['prompt']!r}: expected a string or messages, got {kind_of(prompt)}")
    scored = _scored(row, columns, where)
    if pairing == "lists":
        return _ranked_list(prompt, scored)
    if pairing == "best_worst":
        best = max(range(len(scored)), key=lambda i: scored[i][1])
        worst = min(range(len(scored)), key=lambda i: scored[i][1])
        candidates = [(best, worst)]
    else:
        indices = combinations(range(len(scored)), 2)
        candidates = [(i, j) if scored[i][1] >= scored[j][1] else (j, i) for i, j in indices]
    pairs, ties = [], 0
    for high, low in candidates:
        if scored[high][1] == scored[low][1]:
            ties += 1
            continue
        pairs.append({
            "prompt": prompt, "chosen": scored[high][0], "rejected": scored[low][0],
            "score_chosen": scored[high][1], "score_rejected": scored[low][1],
        })  # fmt: skip
    return pairs, ties


def _ranked_list(prompt: Any, scored: list[tuple[str, float]]) -> tuple[list[dict[str, Any]], int]:
    """``pairing: lists``: the prompt's one ranked list, or none (one tie: every score equal)."""
    ordered = sorted(scored, key=lambda item: -item[1])  # stable: equal scores keep their order
    grades = sorted({score for _, score in scored}, reverse=True)
    if len(grades) < 2:
        return [], 1
    responses, scores = [text for text, _ in ordered], [score for _, score in ordered]
    return [{
        "prompt": prompt, "chosen": responses[0], "rejected": responses[-1], "responses": responses,
        "ranks": [grades.index(score) for score in scores], "scores": scores,
        "score_chosen": scores[0], "score_rejected": scores[-1],
    }], 0  # fmt: skip
