"""trainer=fsdp2 on two CPU processes (gloo), killed and resumed: its sharded last.ckpt (a folder of each rank's
shards) is written atomically, and a run killed by SIGKILL inside an epoch resumes from it to the metrics of one
uninterrupted process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bmc.checkpointing import read_checkpoint
from bmc.sharded_checkpoint import staging_paths
from tests.conftest import SHARDED, run_cli
from tests.doubles.train_process import kill_once_written

# two epochs of six optimizer steps (22 training pairs, a global batch of 4), last.ckpt every 2 steps
RESUMABLE = ["debug=default", "callbacks=default", "logger=none", "trainer.max_steps=-1", "trainer.max_epochs=2",
             "optim.lr=2e-3", "optim.warmup_ratio=0", "callbacks.last_checkpoint.every_n_train_steps=2"]  # fmt: skip


def test_a_sharded_run_killed_mid_epoch_resumes_to_the_metrics_of_one_uninterrupted_process(tmp_path: Path) -> None:
    """Killed at its first checkpoint (step 2 of epoch 0's 6): last.ckpt is a whole sharded folder (each rank's
    shard of the weights and AdamW state, and the loop state with the data position) and no staging folder is
    left in its place; resumed with ckpt_path=last it trains the 10 remaining steps, skipping the 4 global batches
    it trained on, and ends at the final metrics of one process with batch 4 that was never interrupted
    (within 1e-5: the two ranks' gradient halves sum in another order)."""
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    run_dir, single_dir = tmp_path / "killed", tmp_path / "single"
    last = run_dir / "checkpoints" / "last.ckpt"
    kill_once_written([*RESUMABLE, *SHARDED, cache, f"hydra.run.dir={run_dir}"], last, tmp_path, timeout_s=120)
    assert not (run_dir / "summary.json").exists()
    assert last.is_dir() and {"meta.pt", ".metadata"} <= {p.name for p in last.iterdir()}
    assert sorted(p.name for p in last.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one per rank
    assert not staging_paths(last)[0].exists()
    killed_at = read_checkpoint(last)
    assert killed_at["global_step"] == 2 and killed_at["PreferenceDataModule"] == {"epoch": 0, "batches": 2}
    weights = killed_at["state_dict"]["policy.model.embed_tokens.weight"]
    assert isinstance(weights, torch.Tensor) and weights.shape[0] > 2  # gathered whole from the two shards
    assert {"optimizer_0", "lr_schedulers", "best_metrics"} <= killed_at.keys()

    output = run_cli([*RESUMABLE, *SHARDED, cache, f"hydra.run.dir={run_dir}", "ckpt_path=last"], cwd=tmp_path)
    assert "Restoring states from the checkpoint path" in output
    run_cli([*RESUMABLE, cache, "batch_size=4", f"hydra.run.dir={single_dir}"], cwd=tmp_path)
    resumed = json.loads((run_dir / "summary.json").read_text())
    single = json.loads((single_dir / "summary.json").read_text())
    assert resumed["status"] == single["status"] == "completed"
    assert resumed["metrics"]["train/steps"] == single["metrics"]["train/steps"] == 12
    assert resumed["metrics"].keys() == single["metrics"].keys()
    for key, value in single["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
