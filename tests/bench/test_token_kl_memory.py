"""The TDPO memory benchmark's workload and table (bmc/bench/token_kl_memory.py); the measurement itself builds a
135M-parameter model and runs in docs/performance.md, not here."""

from __future__ import annotations

import torch

from bmc.bench.token_kl_memory import CHUNKS, OBJECTIVES, batch, table


def test_the_workload_is_two_pairs_of_a_64_token_prompt_and_192_token_responses():
    rows = batch()
    assert rows["input_ids"].shape == (4, 256)
    assert rows["response_mask"].sum(-1).tolist() == [192] * 4 and rows["attention_mask"].all()
    assert torch.equal(rows["input_ids"][:2, :64], rows["input_ids"][2:, :64])  # chosen and rejected share the prompt
    assert not torch.equal(rows["input_ids"][:2, 64:], rows["input_ids"][2:, 64:])


def test_the_table_has_a_row_per_chunk_and_a_column_per_objective():
    results = [{"objective": o, "chunk": c, "peak_rss_mb": 1000.0 * (i + 1) + c} for c in CHUNKS for i, o in
               enumerate(OBJECTIVES)]  # fmt: skip
    assert table(results).splitlines() == [
        "| chunk | dpo_precomputed | dpo_ref_in_step | tdpo2 |",
        "|---|---|---|---|",
        "| 256 | 1256 MB | 2256 MB | 3256 MB |",
        "| 1024 | 2024 MB | 3024 MB | 4024 MB |",
    ]
