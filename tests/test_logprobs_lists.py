"""The shared-prompt layout of K responses per prompt: pairs packed exactly as before lists existed (bit for bit),
ranked lists of 2 packed as their pairs, and the groups of rows that share a prompt."""

from __future__ import annotations

import pytest
import torch

from bmc.attention import packed_attention_mask
from bmc.logprobs import prompt_groups, shared_prompt_token_logps, token_logps
from tests.conformance import CHUNK, list_batch, pair_batch, tiny_model


def pair_packing_reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The pair layout of the shared prompt as it was before lists (commit 7ad7d1c), written out pair by pair:
    row ``prompt + chosen + rejected``, the rejected response's positions restarting after the prompt, padding at
    position 0, each response seeing the prompt and itself, a padding query every real key before it."""
    ids, n_pairs = batch["input_ids"], batch["input_ids"].shape[0] // 2
    lengths, prompts = batch["attention_mask"].sum(-1).tolist(), batch["response_mask"].int().argmax(-1).tolist()
    rows = []
    for i in range(n_pairs):
        p = prompts[i]
        rows.append((ids[i, : lengths[i]].tolist() + ids[n_pairs + i, p : lengths[n_pairs + i]].tolist(), p,
                     lengths[i] - p))  # fmt: skip
    width = max(len(r) for r, _, _ in rows)
    packed = torch.zeros(n_pairs, width, dtype=torch.long)
    position_ids = torch.zeros(n_pairs, width, dtype=torch.long)
    allowed = torch.zeros(n_pairs, width, width, dtype=torch.bool)
    for i, (row, p, chosen) in enumerate(rows):
        packed[i, : len(row)] = torch.tensor(row)
        for q in range(width):
            position_ids[i, q] = (q if q < p + chosen else q - chosen) if q < len(row) else 0
            for k in range(width):
                in_rejected = p + chosen <= q < len(row)
                sees_chosen = in_rejected and p <= k < p + chosen
                allowed[i, q, k] = q == k or (k <= q and k < len(row) and not sees_chosen)
    positions = torch.zeros(2 * n_pairs, ids.shape[1] - 1, dtype=torch.long)
    for r in range(2 * n_pairs):
        p, chosen = rows[r % n_pairs][1], rows[r % n_pairs][2]
        for t in range(ids.shape[1] - 1):
            positions[r, t] = min(t if (t < p or r < n_pairs) else t + chosen, width - 1)
    logits = model(input_ids=packed, attention_mask=packed_attention_mask(model, allowed, position_ids),
                   position_ids=position_ids, use_cache=False).logits  # fmt: skip
    pair_of = torch.arange(n_pairs).repeat(2)[:, None]
    mask = batch["response_mask"][:, 1:]
    return token_logps(logits[pair_of, positions], ids[:, 1:]).masked_fill(~mask, 0.0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral", "gemma2"])
def test_pairs_are_packed_bit_for_bit_as_before_lists(family: str) -> None:
    model, batch = tiny_model(family, "eager"), pair_batch()
    with torch.no_grad():
        assert torch.equal(shared_prompt_token_logps(model, batch)[0], pair_packing_reference(model, batch))


@pytest.mark.parametrize("chunk", [None, CHUNK])
def test_lists_of_two_are_packed_as_their_pairs(chunk: int | None) -> None:
    model, pairs = tiny_model("mistral"), pair_batch()
    n = pairs["input_ids"].shape[0] // 2
    order = torch.stack([torch.arange(n), torch.arange(n) + n], 1).flatten()  # chosen 0, rejected 0, chosen 1, ...
    lists = {name: value[order] for name, value in pairs.items()}
    lists["list_index"] = torch.arange(n).repeat_interleave(2)
    with torch.no_grad():
        packed_pairs = shared_prompt_token_logps(model, pairs, chunk)[0]
        packed_lists = shared_prompt_token_logps(model, lists, chunk)[0]
    assert torch.equal(packed_lists, packed_pairs[order])


def test_prompt_groups_of_pairs_and_of_lists_of_varying_k() -> None:
    assert prompt_groups(pair_batch()).tolist() == [[0, 3], [1, 4], [2, 5]]
    assert prompt_groups(list_batch()).tolist() == [[0, 1, 2], [3, 4, -1], [5, 6, -1]]


def test_a_list_whose_rows_hold_different_prompts_is_refused() -> None:
    batch = list_batch()
    batch["input_ids"][4, 1] += 1  # the second list's second row: its prompt differs
    with pytest.raises(ValueError, match="the same non-empty prompt"):
        shared_prompt_token_logps(tiny_model("llama"), batch)
