"""trainer=fsdp2's sharded checkpoints (bmc.sharded_checkpoint): staged and renamed into place, so that a write
that dies midway leaves the previous checkpoint whole; and read back in one process (bmc.checkpointing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning.strategies.model_parallel as model_parallel
import torch

from bmc.checkpointing import read_checkpoint
from bmc.sharded_checkpoint import AtomicModelParallelStrategy, staging_paths


def _checkpoint(step: int) -> dict:
    """What Lightning hands the strategy: weights, optimizer state and the loop state."""
    weights = {"policy.weight": torch.full((4, 2), float(step))}
    # keyed by the parameter's name, as FSDP2's optimizer state dict is
    optimizer = {"state": {"policy.weight": {"exp_avg": torch.full((4, 2), step / 10)}},
                 "param_groups": [{"lr": 0.1, "params": ["policy.weight"]}]}  # fmt: skip
    return {"state_dict": weights, "optimizer_states": [optimizer], "global_step": step}


def test_a_sharded_write_that_dies_midway_leaves_the_previous_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process (no process group: the broadcast and barriers are no-ops, and torch.distributed.checkpoint
    writes one shard): the checkpoint at step 1 is in place; the write of step 2 dies after a shard file, and
    last.ckpt still reads as step 1; the next write clears the leftover staging folder and puts step 3 in place."""
    strategy = AtomicModelParallelStrategy(save_distributed_checkpoint=True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    strategy.save_checkpoint(_checkpoint(1), last)
    assert last.is_dir() and {"meta.pt", ".metadata", "__0_0.distcp"} == {p.name for p in last.iterdir()}

    save = model_parallel._distributed_checkpoint_save

    def dies_midway(state: dict, path: Path) -> None:
        (path / "__0_0.distcp").write_bytes(b"half a shard")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        strategy.save_checkpoint(_checkpoint(2), last)
    survivor = read_checkpoint(last)
    assert survivor["global_step"] == 1 and torch.equal(survivor["state_dict"]["policy.weight"], torch.ones(4, 2))
    staging, aside = staging_paths(last)
    assert staging.is_dir() and not aside.exists()  # what the killed write left, beside last.ckpt

    monkeypatch.setattr(model_parallel, "_distributed_checkpoint_save", save)
    strategy.save_checkpoint(_checkpoint(3), last)
    saved = read_checkpoint(last)
    assert saved["global_step"] == 3 and torch.equal(saved["state_dict"]["policy.weight"], torch.full((4, 2), 3.0))
    # the optimizer state as the strategy stores it (one entry per optimizer), gathered whole
    assert torch.equal(saved["optimizer_0"]["state"]["policy.weight"]["exp_avg"], torch.full((4, 2), 0.3))
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no staging or old folder left


def test_read_checkpoint_reads_a_file_as_torch_load_does(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "global_step": 7}, tmp_path / "last.ckpt")
    read = read_checkpoint(tmp_path / "last.ckpt")
    assert read["global_step"] == 7 and torch.equal(read["state_dict"]["w"], torch.arange(3.0))
