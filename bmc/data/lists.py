"""Ranked lists of K responses per prompt as a DataModule (listwise losses, METHODS.md section 6).

A row is ``{prompt, responses, ranks[, scores]}`` (:mod:`bmc.synthesis.ranked_lists` builds them): responses best
first, ``ranks`` their tie-block index (0 = best, non-decreasing), ``scores`` their grades ψ (non-increasing)
where the ranking came from scores. Rows are checked on the way in; a bad one is an error naming the row and field.

A batch holds B lists, K_b rows each, list after list in ranking order: the rows of
:func:`~bmc.data.tokenize.pad_sequences` plus ``list_index`` (N,) (which list a row belongs to), ``ranks`` (N,)
and, with scores, ``scores`` (N,). BMC diff marks of each response come from its diff against the best response
τ(1): a response k > 1 is marked where it differs from τ(1), and τ(1) where it differs from any of the others
(the union), so at K = 2 they are the pair's masks.
"""

from __future__ import annotations

from typing import Any

import torch

from bmc.data.datamodule import PreferenceDataModule
from bmc.data.tokenize import encode_prompts, encode_responses, pad_sequences
from bmc.losses.masks import diff_masks

#: the token-id columns of a tokenized list (the reference cache's key hashes them)
LIST_ID_COLUMNS = ("prompt_ids", "response_ids")
#: the column of each response's per-token reference log-probs (:mod:`bmc.reference` fills it)
LIST_REF_COLUMN = "ref_response_logps"


def check_list_row(row: dict[str, Any], where: str) -> None:
    """A list row's fields, or a ValueError naming ``where`` (the split and row) and the field."""
    responses, ranks = row.get("responses"), row.get("ranks")
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise ValueError(f"{where}: field 'responses' must be a list of at least 2 strings, got {responses!r}")
    if not isinstance(ranks, list) or len(ranks) != len(responses) or not all(isinstance(r, int) for r in ranks):
        raise ValueError(f"{where}: field 'ranks' must be one int per response, got {ranks!r}")
    if ranks[0] != 0 or any(b - a not in (0, 1) for a, b in zip(ranks, ranks[1:])) or ranks[-1] == 0:
        raise ValueError(
            f"{where}: field 'ranks' must number tie blocks 0, 1, ... best first, with at least 2 blocks, got {ranks}"
        )
    scores = row.get("scores")
    if scores is not None and (len(scores) != len(responses) or any(b > a for a, b in zip(scores, scores[1:]))):
        raise ValueError(f"{where}: field 'scores' must be one grade per response, best first, got {scores!r}")


class ListDataModule(PreferenceDataModule):
    """Ranked lists for listwise losses; everything else (truncation, length grouping, resuming mid-epoch,
    reference log-probs) as :class:`PreferenceDataModule`. Batches hold ``batch_size`` lists."""

    kind = "lists"
    noun = "list"
    id_columns = LIST_ID_COLUMNS
    _scored = False  # whether the rows carry scores ψ (decided in setup)

    def setup(self, stage: str | None = None) -> None:
        for split, rows in self.rows.items():
            for index, row in enumerate(rows):
                check_list_row(row, f"lists/{split} row {index}")
            scored = {"scores" in row for row in rows}
            if len(scored) > 1:
                raise ValueError(f"lists/{split}: some rows have field 'scores' and some do not")
        self._scored = scored == {True}
        super().setup(stage)

    def _fields(self) -> tuple[str, ...]:
        return ("prompt", "responses", "ranks", "scores") if self._scored else ("prompt", "responses", "ranks")

    def _after_the_cut(self, dataset: Any) -> str:
        # cutting the responses can make two of them equal: the list then ranks a response against itself
        repeated = sum(
            cut and len({tuple(r) for r in responses}) < len(responses)
            for cut, responses in zip(dataset["truncated"], dataset["response_ids"])
        )
        return f"; {repeated} of them have two equal responses after the cut"

    def pair_lengths(self, split: str) -> list[int]:
        """Each list's row length in a batch: its prompt plus its longest response, in tokens."""
        dataset = self.datasets[split]
        return [len(p) + max(map(len, rs)) for p, rs in zip(dataset["prompt_ids"], dataset["response_ids"])]

    def _encode(self, batch: dict[str, list], stopwords: frozenset[int]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("prompt_ids", "response_ids", "response_marks", "ranks", "truncated")}
        if self._scored:
            out["scores"] = []
        prompts = encode_prompts(self.tokenizer, batch["prompt"])
        for index, prompt_ids in enumerate(prompts):
            responses = encode_responses(self.tokenizer, batch["responses"][index])
            marks = self._marks(responses, stopwords)
            cut = self.truncation.apply(prompt_ids, responses, self.prompt_frame)
            if cut is None:  # dropped: counted by _tokenize from the rows left out
                continue
            prompt_ids, responses, truncated = cut
            out["prompt_ids"].append(prompt_ids)
            out["response_ids"].append(responses)
            out["response_marks"].append([m[: len(r)] for m, r in zip(marks, responses)])
            out["ranks"].append(batch["ranks"][index])
            out["truncated"].append(truncated)
            if self._scored:
                out["scores"].append([float(s) for s in batch["scores"][index]])
        return out

    def _marks(self, responses: list[list[int]], stopwords: frozenset[int]) -> list[list[int]]:
        """Diff marks against the best response (module docstring)."""
        best = [0] * len(responses[0])
        marks = [best]
        for response in responses[1:]:
            best_marks, response_marks = diff_masks(
                responses[0], response, alignment=self.masks["alignment"], stopword_ids=stopwords
            )
            best[:] = [a | b for a, b in zip(best, best_marks)]
            marks.append(response_marks)
        return marks

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sizes = [len(r["response_ids"]) for r in rows]
        prompts = [r["prompt_ids"] for r, k in zip(rows, sizes) for _ in range(k)]
        responses = [response for r in rows for response in r["response_ids"]]
        marks = [m for r in rows for m in r["response_marks"]]
        ref_logps = [v for r in rows for v in r[LIST_REF_COLUMN]] if LIST_REF_COLUMN in rows[0] else None
        batch = pad_sequences(prompts, responses, self.tokenizer.pad_token_id, marks, ref_logps)
        batch["list_index"] = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(sizes))
        batch["ranks"] = torch.tensor([rank for r in rows for rank in r["ranks"]])
        if self._scored:
            batch["scores"] = torch.tensor([s for r in rows for s in r["scores"]])
        return batch
