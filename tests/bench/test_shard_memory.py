"""bmc.bench.shard_memory on two CPU processes at the llama-smoke shapes, against the bytes counted by hand."""

from __future__ import annotations

import pytest

from bmc.bench.shard_memory import format_table, measure
from bmc.bench.workload import NAMED_CONFIGS

# llama-smoke: embeddings 4096 x 64 (tied with the LM head) = 262144; per layer q 64x64, k and v 32x64, o 64x64,
# gate and up 192x64, down 64x192, two norms of 64 = 49280, twice; the final norm 64: 360768 float32 parameters
# in 20 tensors (1 + 9 per layer + 1)
PARAMETERS_MB = 360768 * 4 / 1e6
STEPS_MB = 20 * 4 / 1e6  # AdamW's step count, a float32 scalar per parameter tensor, on every rank


def test_ddp_holds_everything_on_each_rank_and_fsdp2_half_on_each() -> None:
    config = NAMED_CONFIGS["llama-smoke"]
    ddp, fsdp2 = measure("ddp", config), measure("fsdp2", config)
    for rank in ddp:
        assert rank["parameters_mb"] == pytest.approx(PARAMETERS_MB, abs=1e-9)
        assert rank["gradients_mb"] == pytest.approx(PARAMETERS_MB, abs=1e-9)
        assert rank["adamw_state_mb"] == pytest.approx(2 * PARAMETERS_MB + STEPS_MB, abs=1e-9)  # two moments
    # every sharded dimension (4096, 64, 32 and 192 rows) splits evenly over 2 ranks: exactly half each
    for rank in fsdp2:
        assert rank["parameters_mb"] == pytest.approx(PARAMETERS_MB / 2, abs=1e-9)
        assert rank["gradients_mb"] == pytest.approx(PARAMETERS_MB / 2, abs=1e-9)
        assert rank["adamw_state_mb"] == pytest.approx(PARAMETERS_MB + STEPS_MB, abs=1e-9)
        assert rank["total_mb"] == pytest.approx(2 * PARAMETERS_MB + STEPS_MB, abs=1e-9)
    table = format_table({"modes": {"ddp": ddp, "fsdp2": fsdp2}})
    assert f"| fsdp2 | 1 | {PARAMETERS_MB / 2:.1f} | {PARAMETERS_MB / 2:.1f} |" in table
