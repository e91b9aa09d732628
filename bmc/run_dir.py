"""The run folder's name, keyed so that a requeued SLURM job lands in its own folder.

``conf/hydra/default.yaml`` names a run's folder ``outputs/<task>/${bmc.run_id:...}_<loss>_<data>_s<seed>``.
Outside SLURM the id is the start time, as before: every run gets a new folder. In a SLURM job it is the job
(``slurm<SLURM_JOB_ID>``, or ``slurm<array job>_<task>`` for an array task) and a short digest of the command
line's overrides: SLURM requeues a job (preemption, ``scontrol requeue``, ``--requeue`` after a node failure)
under the same id with the same command, so the requeued run finds the folder, and ``ckpt_path=auto`` the
``last.ckpt`` in it. The digest keeps two different commands run by one job (or in one ``salloc``) apart; the
same command twice in one job shares its folder, as a requeue does.

The alternative, ``ckpt_path=auto`` searching the outputs for the latest run of the same config, would split a
run over two folders and guess at what "the same" means; a folder known from the job needs no search.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime

from omegaconf import OmegaConf

RESOLVER = "bmc.run_id"


def run_id(overrides: str, time_format: str) -> str:
    """``slurm<job>[_<array task>]-<digest of overrides>`` in a SLURM job, else the time now in ``time_format``."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return datetime.now().strftime(time_format)
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        job = f"{array_job}_{task}"
    digest = hashlib.sha256(overrides.encode()).hexdigest()[:6]
    return f"slurm{job}-{digest}"


def register_resolvers() -> None:
    """Make ``${bmc.run_id:<overrides>,<time format>}`` known to OmegaConf (once per process; the value is
    cached, so every reading of the run folder in a process gives the same time)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, run_id, use_cache=True)
