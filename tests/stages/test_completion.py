"""Completion (bmc.stages.completion) on trainer=fsdp2's sharded checkpoint folders: they follow the rules of a
checkpoint file, read whole in one process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed.checkpoint as dcp

from bmc.stages.completion import tidy_checkpoints
from bmc.stages.products import TrainedPolicy


def _sharded(folder: Path, weights: dict[str, torch.Tensor], step: int, optimizer: bool) -> Path:
    """A sharded checkpoint folder as Lightning's ModelParallelStrategy writes it (here from one process)."""
    state = {"state_dict": weights}
    if optimizer:
        state["optimizer_0"] = {"state": {"policy.weight": {"exp_avg": torch.ones(2, 2)}}}
    dcp.save(state, checkpoint_id=folder)
    loop = {"global_step": step, "epoch": 0}
    torch.save({**loop, "lr_schedulers": [{"last_epoch": step}]} if optimizer else loop, folder / "meta.pt")
    return folder


def test_a_sharded_folder_is_removed_when_the_export_holds_its_weights_else_kept_as_one_file(tmp_path: Path) -> None:
    """best.ckpt holds the exported weights: removed. last.ckpt holds others and the optimizer state: rewritten as
    one file with its weights and loop state and no optimizer or scheduler state (nothing resumes from it)."""
    policy = torch.nn.Linear(2, 2, bias=False)
    exported = {"policy.weight": policy.weight.detach().clone()}
    other = {"policy.weight": exported["policy.weight"] + 1.0}
    folder = tmp_path / "checkpoints"
    last = _sharded(folder / "last.ckpt", other, step=6, optimizer=True)
    best = _sharded(folder / "best.ckpt", exported, step=4, optimizer=False)
    callback = SimpleNamespace(best_model_path=str(best), last_model_path=str(last))
    trainer = SimpleNamespace(checkpoint_callbacks=[callback], callbacks=[])
    outcome = tidy_checkpoints(TrainedPolicy(policy, {}, trainer), exported=True, keep_optimizer=False)

    assert outcome == {str(last): "kept without optimizer state", str(best): "removed (its weights are kept elsewhere)"}
    assert last.is_file() and not best.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # no staging file or old folder left
    kept = torch.load(last, weights_only=True)
    assert set(kept) == {"state_dict", "global_step", "epoch"} and kept["global_step"] == 6
    assert torch.equal(kept["state_dict"]["policy.weight"], other["policy.weight"])


def test_keep_optimizer_keeps_a_sharded_folder_whole(tmp_path: Path) -> None:
    policy = torch.nn.Linear(2, 2, bias=False)
    exported = {"policy.weight": policy.weight.detach().clone()}
    last = _sharded(tmp_path / "last.ckpt", exported, step=6, optimizer=True)
    trainer = SimpleNamespace(checkpoint_callbacks=[SimpleNamespace(best_model_path="", last_model_path=str(last))],
                              callbacks=[])  # fmt: skip
    outcome = tidy_checkpoints(TrainedPolicy(policy, {}, trainer), exported=True, keep_optimizer=True)
    assert outcome == {str(last): "kept whole (checkpoint.keep_optimizer)"}
    assert last.is_dir() and (last / "meta.pt").is_file()
