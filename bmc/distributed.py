"""Runs with several processes (Lightning strategies ddp, ddp_spawn, fsdp, deepspeed): which process reports,
and which launches cannot work.

The SFT warm start and the data stages run once (the first process to take the cache lock of
:mod:`bmc.cache`), the preference stage on every rank, the evaluation and ``summary.json`` on rank 0.
"""

from __future__ import annotations

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities.rank_zero import rank_zero_only


def is_global_zero(trainer: pl.Trainer | None) -> bool:
    """Whether this process writes the run's results (rank 0 of a multi-process run). Before the Trainer
    exists, the rank is the one the launcher (Lightning, torchrun, SLURM) put in the environment."""
    return trainer.is_global_zero if trainer is not None else rank_zero_only.rank == 0


def check_launch(trainer: pl.Trainer) -> None:
    """Refuse a launch that would go wrong: Lightning's ``ddp`` (and fsdp/deepspeed) launcher starts the other
    ranks by re-running the command line, which inside a local ``-m`` sweep re-runs the whole sweep in
    every rank. Ranks started by torchrun or SLURM (hydra/launcher=slurm) are fine."""
    launcher = trainer.strategy.launcher
    relaunches = (
        isinstance(launcher, _SubprocessScriptLauncher)
        and launcher.num_processes > 1
        and not launcher.cluster_environment.creates_processes_externally
    )
    if relaunches and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ValueError(
            f"trainer.strategy={trainer.strategy.__class__.__name__} with {launcher.num_processes} processes "
            "starts its ranks by re-running the command, which would re-run the whole -m sweep: use "
            "trainer=ddp_spawn in a local sweep, or hydra/launcher=slurm with one task per device"
        )
