"""The precision rule (bmc.precision): every value Lightning accepts for ``trainer.precision`` normalised by
its own mapping, and the forward context each one runs the computations outside ``fit`` in."""

from __future__ import annotations

import pytest
import torch
from lightning_fabric.connector import _convert_precision_to_unified_args

from bmc.precision import ACCEPTED, DEFAULT_PRECISION, resolve_precision

BF16, FP16, FP32, FP64 = torch.bfloat16, torch.float16, torch.float32, torch.float64

#: every value Lightning accepts -> (unified name, autocast dtype, weights dtype, compute dtype)
TABLE = {
    None: ("32-true", None, None, FP32),
    32: ("32-true", None, None, FP32),
    "32": ("32-true", None, None, FP32),
    "32-true": ("32-true", None, None, FP32),
    64: ("64-true", None, FP64, FP64),
    "64": ("64-true", None, FP64, FP64),
    "64-true": ("64-true", None, FP64, FP64),
    16: ("16-mixed", FP16, None, FP16),
    "16": ("16-mixed", FP16, None, FP16),
    "16-mixed": ("16-mixed", FP16, None, FP16),
    "bf16": ("bf16-mixed", BF16, None, BF16),
    "bf16-mixed": ("bf16-mixed", BF16, None, BF16),
    "16-true": ("16-true", None, FP16, FP16),
    "bf16-true": ("bf16-true", None, BF16, BF16),
    "transformer-engine": ("transformer-engine", BF16, BF16, BF16),
    "transformer-engine-float16": ("transformer-engine-float16", FP16, FP16, FP16),
}


def test_every_precision_lightning_accepts_is_normalised_by_its_own_mapping() -> None:
    assert set(ACCEPTED) | {None} == set(TABLE)  # the table covers Lightning's list, no more
    for value, (name, autocast, weights, compute) in TABLE.items():
        precision = resolve_precision(value)
        assert (precision.name, precision.autocast_dtype, precision.weights_dtype) == (name, autocast, weights), value
        assert precision.compute_dtype == compute, value
        assert precision.name == (_convert_precision_to_unified_args(value) or "32-true")
    assert resolve_precision("bf16") == resolve_precision("bf16-mixed")  # one cache entry, one computation
    assert DEFAULT_PRECISION == resolve_precision(32)
    assert DEFAULT_PRECISION.key_fields() == {} and resolve_precision(16).key_fields() == {"precision": "16-mixed"}


@pytest.mark.parametrize("value", ["bf32", "16-bit", 8, 16.5, "fp16"])
def test_a_precision_lightning_refuses_names_the_accepted_ones(value) -> None:
    with pytest.raises(ValueError, match=r"not a precision Lightning accepts: one of \[.*'bf16-mixed'.*'bf16'"):
        resolve_precision(value)


def test_the_forward_context_autocasts_mixed_and_sets_the_default_dtype_of_true_precisions() -> None:
    def inside(value: str) -> tuple[bool, torch.dtype, torch.dtype]:
        with resolve_precision(value).forward_context("cpu"):
            return torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), torch.get_default_dtype()

    assert inside("32-true")[::2] == (False, FP32)
    assert inside("bf16")[0] and inside("bf16")[1:] == (BF16, FP32)
    assert inside("16-mixed")[1] == BF16  # Lightning trains 16-mixed on the CPU as bf16-mixed
    assert inside("bf16-true")[::2] == (False, BF16) and inside("64-true")[2] == FP64
    assert torch.get_default_dtype() == FP32  # restored after each


def test_convert_casts_the_weights_of_true_precisions_only() -> None:
    def weights(value: str, loaded: torch.dtype = FP32) -> torch.dtype:
        return resolve_precision(value).convert(torch.nn.Linear(2, 2).to(loaded)).weight.dtype

    assert [weights(v) for v in ("32-true", "bf16-mixed", "16-mixed")] == [FP32] * 3
    assert weights("32-true", BF16) == BF16  # the weights as loaded: Lightning does not cast them either
    assert [weights(v) for v in ("bf16-true", "16-true", "64-true")] == [BF16, FP16, FP64]
