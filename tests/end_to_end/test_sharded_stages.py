"""Every stage of a job on two CPU processes (gloo) under trainer=ddp and trainer=fsdp2, with the processes
given a time limit (a rank waiting on a collective that the other skips would hang until it): sampling from the
policy, the reference precompute (split across the ranks), training with the checkpoints and the token-reward
callback, the final validation, the win-rate evaluation, the export and completion. What the two ranks produce
equals what one process produces on the same global batch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import run_cli

STAGES = ["debug=default", "data=sampled", "data.sampler.backend=hf", "callbacks=default", "eval=winrate",
          "eval.baseline=reference", "judge=verifier", "eval.bootstrap.samples=100", "eval.batch_size=2",
          "optim.lr=2e-3", "optim.warmup_ratio=0"]  # fmt: skip
LIMIT = 240  # seconds for a whole 2-rank job; measured about 40 s alone


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job in one process with the global batch (4) of the two-rank runs, its own cache."""
    folder = tmp_path_factory.mktemp("single")
    run_cli([*STAGES, "batch_size=4", f"paths.cache_dir={folder / 'cache'}", f"hydra.run.dir={folder / 'run'}"],
            cwd=folder)  # fmt: skip
    return folder / "run"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_every_stage_completes_on_two_ranks_and_equals_one_process(
    strategy: str, one_process: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    args = [*STAGES, f"trainer={strategy}", "trainer.accelerator=cpu", "trainer.devices=2", "batch_size=2",
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    run_cli(args, cwd=tmp_path, timeout=LIMIT)
    rank0, rank1 = ((run_dir / name).read_text() for name in ("train.log", "train_ddp_process_1.log"))
    assert "rank 1 of 2: training done" in rank1
    # rank 0 runs the stages before training alone (Lightning starts rank 1 at fit, docs/sharding.md): it
    # sampled the pairs, and rank 1 read the same cache entry
    (entry,) = re.findall(r"cache write: samples (\S+)", rank0)
    assert f"cache hit: samples {entry}" in rank1 and "cache write: samples" not in rank1
    # the reference precompute runs in fit's setup, where both ranks exist: each scores every other row of each
    # split, and rank 0 writes the entry that both read
    (entry,) = re.findall(r"cache write: ref_logps (\S+)", rank0)
    assert f"cache entry written by rank 0: ref_logps {entry}" in rank1 and "cache write: ref_logps" not in rank1
    for split in ("train", "val"):
        pattern = rf"rank (\d) of 2: (\d+) of the (\d+) rows of reference log-probs/{split}"
        (share0, share1) = (re.findall(pattern, text)[0] for text in (rank0, rank1))
        assert share0[0] == "0" and share1[0] == "1" and share0[2] == share1[2]
        assert int(share0[1]) + int(share1[1]) == int(share0[2]) and int(share0[1]) - int(share1[1]) in (0, 1)

    summary, single = (json.loads((d / "summary.json").read_text()) for d in (run_dir, one_process))
    assert summary["status"] == single["status"] == "completed"
    assert summary["metrics"].keys() == single["metrics"].keys()
    assert single["metrics"]["eval/num_prompts"] == 8 and "eval/winrate" in single["metrics"]
    for key, value in single["metrics"].items():
        assert summary["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    # the win rate's answers and verdicts, prompt by prompt, and the token rewards of the last validation
    for name in ("eval_winrate.jsonl", "token_rewards.json"):
        assert (run_dir / name).read_text() == (one_process / name).read_text(), name
    exported, expected = (AutoModelForCausalLM.from_pretrained(d / "model").state_dict()
                          for d in (run_dir, one_process))  # fmt: skip
    assert exported.keys() == expected.keys()
    for name, weight in expected.items():
        torch.testing.assert_close(exported[name], weight, rtol=1e-5, atol=1e-5, msg=name)
    # completion: the best and last checkpoints hold the exported (final) weights, and go
    removed, folder = "removed (its weights are kept elsewhere)", run_dir / "checkpoints"
    assert summary["checkpoints"] == {str(folder / f"{name}.ckpt"): removed for name in ("last", "best")}
    assert not list((run_dir / "checkpoints").iterdir())
