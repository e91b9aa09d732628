"""The run folder: named by the SLURM job where there is one (a requeued job finds its folder), and at
completion each set of weights kept once."""

from __future__ import annotations

import json
import re
from datetime import datetime
from itertools import combinations
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bmc.checkpointing import POLICY_PREFIX, same_weights
from bmc.pipeline import run
from bmc.run_dir import run_id
from tests.conftest import compose_config

# three epochs of six steps, last.ckpt and best.ckpt after every epoch's validation
CHECKPOINTED = ["debug=default", "callbacks=default", "trainer.max_steps=-1", "trainer.max_epochs=3",
                "optim.lr=2e-3", "optim.warmup_ratio=0", "eval.enabled=false"]  # fmt: skip


def test_a_slurm_job_names_its_run_folder_by_the_job_and_the_overrides_and_other_runs_by_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    stamp = run_id("loss=ipo,seed=1", "%Y-%m-%d_%H-%M-%S")
    assert abs((datetime.strptime(stamp, "%Y-%m-%d_%H-%M-%S") - datetime.now()).total_seconds()) < 5

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    job = run_id("loss=ipo,seed=1", "%Y-%m-%d_%H-%M-%S")
    assert re.fullmatch(r"slurm4242-[0-9a-f]{6}", job)
    assert run_id("loss=ipo,seed=1", "%Y-%m-%d_%H-%M-%S") == job  # the requeued job: same id, same command
    assert run_id("loss=ipo,seed=2", "%Y-%m-%d_%H-%M-%S") != job  # another command in the same job

    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # an array task has a job id of its own, and is named as SLURM's %A_%a
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_id("loss=ipo,seed=1", "%Y-%m-%d_%H-%M-%S") == "slurm4240_3" + job.removeprefix("slurm4242")


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _weight_sets(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The sets of policy weights the folder holds: model/ and each checkpoint's."""
    exported = {POLICY_PREFIX + k: v for k, v in load_file(run_dir / "model" / "model.safetensors").items()}
    checkpoints = {
        path.name: torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        for path in sorted((run_dir / "checkpoints").glob("*.ckpt"))
    }
    return {"model/": exported, **checkpoints}


@pytest.mark.parametrize(
    ("overrides", "kept"),
    [([], {}), (["trainer.max_steps=8"], {"best.ckpt": 6}),
     (["trainer.max_steps=8", "export.which=best"], {"last.ckpt": 8})],
    ids=["the-best-weights-are-the-final-ones", "training-ends-after-the-best", "the-best-exported"],
)  # fmt: skip
def test_a_completed_run_keeps_each_set_of_weights_once_and_no_optimizer_state_within_3x_the_model(
    overrides: list[str], kept: dict[str, int], tmp_path: Path, shared_cache: Path
) -> None:
    """While training, last.ckpt holds the optimizer state (AdamW's two moments: 3x the weights in all) and
    best.ckpt the weights at the best val/loss. At completion (checkpoint.keep_optimizer=false) a checkpoint
    whose weights model/ holds goes, and the others lose their optimizer state:

    - the last validation was the best and training ended there: both hold model/'s weights and both go;
    - training ends 2 steps after the last validation (max_steps=8, with last.ckpt written at the end): last.ckpt
      holds model/'s step 8 and goes, best.ckpt holds step 6 and stays;
    - the same with export.which=best: model/ holds step 6, so best.ckpt goes, and last.ckpt (step 8) stays
      without its optimizer state.

    Each set of weights is in the folder once, and the folder is at most 3x model/."""
    run_dir = tmp_path / "run"
    run(compose_config([*CHECKPOINTED, *overrides], run_dir, shared_cache))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == sorted(kept)
    removed = "removed (its weights are kept elsewhere)"
    assert {Path(path).name: what for path, what in summary["checkpoints"].items()} == {
        "last.ckpt": "kept without optimizer state" if "last.ckpt" in kept else removed,
        "best.ckpt": "kept" if "best.ckpt" in kept else removed,
    }
    weights = _weight_sets(run_dir)
    assert not any(same_weights(a, b) for a, b in combinations(weights.values(), 2))
    for name, step in kept.items():
        checkpoint = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert "optimizer_states" not in checkpoint and checkpoint["global_step"] == step
    assert _size(run_dir) <= 3 * _size(run_dir / "model")


def test_keep_optimizer_keeps_last_ckpt_whole_and_a_later_run_trains_on_from_it(
    tmp_path: Path, shared_cache: Path
) -> None:
    """checkpoint.keep_optimizer=true: the completed run's last.ckpt keeps its optimizer and loop state, and a
    run with one more epoch resumes from it (18 steps done, 24 at the end); best.ckpt, the same weights as
    model/, still goes."""
    run_dir = tmp_path / "run"
    run(compose_config([*CHECKPOINTED, "checkpoint.keep_optimizer=true"], run_dir, shared_cache))
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["optimizer_states"] and last["global_step"] == 18

    more = [*CHECKPOINTED, "trainer.max_epochs=4", "ckpt_path=last", "checkpoint.keep_optimizer=true"]
    assert run(compose_config(more, run_dir, shared_cache))["train/steps"] == 24
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["optimizer_states"] and last["global_step"] == 24
