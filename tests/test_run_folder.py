"""The run folder: named by the SLURM job where there is one (a requeued job finds its folder), and at
completion each set of weights kept once."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from bmc.run_dir import run_id


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
