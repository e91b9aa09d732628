"""FSDP2 (trainer=fsdp2, Lightning's ModelParallelStrategy with fully_shard): the preset, which strategies count as
sharding the parameters, and real sharded training on two CPU processes (gloo) against one process on the same
global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from torch.distributed.fsdp import MixedPrecisionPolicy
from transformers import AutoModelForCausalLM

from bmc.distributed import shards_parameters
from bmc.precision import resolve_precision
from bmc.sharding import mixed_precision_policy
from tests.conftest import run_sharded_and_single


def test_the_fsdp2_preset_builds_a_two_process_cpu_model_parallel_trainer(make_config) -> None:
    trainer = instantiate(make_config("trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2").trainer)
    assert isinstance(trainer.strategy, ModelParallelStrategy) and trainer.world_size == 2
    assert trainer.strategy._data_parallel_size == 2 and trainer.strategy._tensor_parallel_size == 1
    assert trainer.precision == "32-true"


def test_fsdp_fsdp2_and_zero_stage_3_shard_parameters_ddp_and_zero_stage_2_do_not() -> None:
    assert shards_parameters(FSDPStrategy()) and shards_parameters(ModelParallelStrategy())
    assert not shards_parameters(DDPStrategy())
    # DeepSpeedStrategy cannot be built without deepspeed installed; its stage is read from its config alone
    for stage, shards in ((2, False), (3, True)):
        deepspeed = object.__new__(DeepSpeedStrategy)
        deepspeed.config = {"zero_optimization": {"stage": stage}}
        assert shards_parameters(deepspeed) == shards


@pytest.mark.parametrize(
    ("precision", "param_dtype"),
    [("32-true", None), ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16), ("16-true", None)],
)
def test_fsdp2_computes_in_bfloat16_and_reduces_in_float32_under_a_bfloat16_precision(
    precision: str, param_dtype: torch.dtype | None
) -> None:
    policy = mixed_precision_policy(resolve_precision(precision))
    expected = MixedPrecisionPolicy(param_dtype, torch.float32) if param_dtype else MixedPrecisionPolicy()
    assert policy == expected


def test_fsdp2_on_two_cpu_processes_matches_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    """Per-rank batch 2 on 2 ranks vs batch 4 in one process, same seed (as in test_ddp): every step's global batch
    is the same pairs. FSDP2 all-gathers each layer's shards for the forward and reduce-scatters the gradients
    (averaged over the ranks, as DDP's all-reduce); the metrics and the exported policy agree with one process
    within 1e-5 (measured: metrics equal, weights within 1e-7: the gradient sum of two halves in another order)."""
    cache = tmp_path / "cache"
    common = ["debug=default", "optim.lr=2e-3", "optim.warmup_ratio=0", f"paths.cache_dir={cache}"]
    sharded_dir, single_dir = tmp_path / "fsdp2", tmp_path / "single"
    output = run_sharded_and_single(common, tmp_path)
    assert "Starting with 2 processes" in output and "distributed_backend=gloo" in output

    rank0_log = (sharded_dir / "train.log").read_text()
    rank1_log = (sharded_dir / "train_ddp_process_1.log").read_text()
    for log in (rank0_log, rank1_log):
        assert "fsdp2: policy sharded over 2 ranks, 2 decoder layers as shard units, precision 32-true" in log
    assert "rank 1 of 2: training done" in rank1_log

    sharded = json.loads((sharded_dir / "summary.json").read_text())
    single = json.loads((single_dir / "summary.json").read_text())
    assert sharded["status"] == single["status"] == "completed"
    assert sharded["metrics"].keys() == single["metrics"].keys()
    assert sharded["metrics"]["train/steps"] == single["metrics"]["train/steps"] == 6
    assert sharded["metrics"]["val/loss"] != pytest.approx(0.6931, abs=1e-3)  # the policy moved
    for key, value in single["metrics"].items():
        assert sharded["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key

    # the export holds the full weights gathered from both ranks' shards, as plain tensors a single process loads
    exported = AutoModelForCausalLM.from_pretrained(sharded_dir / "model").state_dict()
    expected = AutoModelForCausalLM.from_pretrained(single_dir / "model").state_dict()
    assert exported.keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(exported[name], weight, rtol=1e-5, atol=1e-5, msg=name)


def test_fsdp2_under_bf16_mixed_passes_the_first_batch_check_and_stays_near_one_process(tmp_path: Path) -> None:
    """Under bf16-mixed FSDP2 keeps float32 shards but computes every layer in bfloat16 (norms included, which
    Lightning's autocast in one process keeps in float32): the first-batch scoring check applies its 16-bit
    bound to the sharded policy instead of stopping the run, and the final metrics stay within bfloat16 rounding
    of one process (measured: val/loss 2.2e-4 apart, sequence log-probs 0.06 of about 146)."""
    common = ["debug=default", "trainer.precision=bf16-mixed", f"paths.cache_dir={tmp_path / 'cache'}"]
    sharded_dir, single_dir = tmp_path / "fsdp2", tmp_path / "single"
    run_sharded_and_single(common, tmp_path)
    assert "precision bf16-mixed" in (sharded_dir / "train.log").read_text()
    sharded = json.loads((sharded_dir / "summary.json").read_text())["metrics"]
    single = json.loads((single_dir / "summary.json").read_text())["metrics"]
    assert sharded["val/loss"] == pytest.approx(single["val/loss"], abs=1e-3)
    assert sharded["val/logps/chosen"] == pytest.approx(single["val/logps/chosen"], rel=1e-3)
