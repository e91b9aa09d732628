"""Runs with several processes (Lightning strategies ddp, ddp_spawn, fsdp, fsdp2, deepspeed): which process
reports, which launches cannot work, which strategies shard the parameters, and work split across the
processes.

The SFT warm start and the data stages run once (the first process to take the cache lock of
:mod:`bmc.cache`), the preference stage on every rank, the reference precompute and the evaluation's generation
split across the ranks (:func:`cached_on_every_rank`, :func:`split_across_ranks`) and ``summary.json`` on rank 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from bmc.cache import cache_hit, cached_dir

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_global_zero(trainer: pl.Trainer | None) -> bool:
    """Whether this process writes the run's results (rank 0 of a multi-process run). Before the Trainer
    exists, the rank is the one the launcher (Lightning, torchrun, SLURM) put in the environment."""
    return trainer.is_global_zero if trainer is not None else rank_zero_only.rank == 0


def shards_parameters(strategy: Strategy) -> bool:
    """Whether ``strategy`` splits the model's parameters across the processes (FSDP, FSDP2 through
    ``ModelParallelStrategy``, DeepSpeed ZeRO stage 3), so that no process holds the whole model and a forward
    needs every rank. Under DDP or DeepSpeed stages 1-2 every process holds all the weights."""
    if isinstance(strategy, DeepSpeedStrategy):
        return strategy.zero_stage_3
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def full_state_dict(strategy: Strategy) -> dict[str, torch.Tensor]:
    """The LightningModule's whole state dict, gathered from the shards of every rank, on rank 0 (other ranks
    may get an empty dict); every rank must call it. FSDP1 (``state_dict_type: full``) and DeepSpeed gather it
    in Lightning's ``lightning_module_state_dict``; ModelParallelStrategy returns the shards there when it
    writes distributed checkpoints, so the full weights are collected here."""
    if isinstance(strategy, ModelParallelStrategy):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(strategy.lightning_module, options=options)
    return strategy.lightning_module_state_dict()


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


def _several_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _from_rank_zero(value: T) -> T:
    """Rank 0's ``value``, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cached_on_every_rank(
    root: str | os.PathLike, stage: str, payload: Any, compute: Callable[[], T], write: Callable[[T, Path], None]
) -> Path:
    """The cache folder of ``stage`` for ``payload`` (:func:`bmc.cache.cached_dir`), its values computed by every
    rank together on a miss: ``compute()`` is called on every rank (it splits its work with
    :func:`split_across_ranks`, so every rank returns all of it) and rank 0 writes it (``write``). Rank 0's look
    into the cache decides hit or miss for all, so no rank computes alone while the others read. In one process
    (or without a process group) it is ``cached_dir`` with ``write(compute(), folder)``, under its lock."""
    if not _several_ranks():
        return cached_dir(root, stage, payload, lambda folder: write(compute(), folder))
    rank = dist.get_rank()
    hit = _from_rank_zero(cache_hit(root, stage, payload) if rank == 0 else None)  # rank 0 logs its hit
    if hit is not None:
        if rank != 0:
            log.info("cache hit: %s %s", stage, hit)
        return hit
    values = compute()
    folder = _from_rank_zero(cached_dir(root, stage, payload, lambda f: write(values, f)) if rank == 0 else None)
    if rank != 0:  # it reads the entry rank 0 has written, as every later run will
        log.info("cache entry written by rank 0: %s %s", stage, folder)
    return folder


def split_across_ranks(
    items: Sequence[T], work: Callable[[list[T]], list[Any]], block: int = 1, what: str = "items"
) -> list[Any]:
    """``work``'s results for ``items``, in order, on every process, each process doing its share: ``items`` cut
    into blocks of ``block`` (a generation batch, so each batch holds the prompts it holds in one process, and
    gives the same answers), rank r taking blocks r, r + world_size, ...; the shares are gathered with
    ``all_gather_object``. In one process (or without a process group) it is ``work(items)``."""
    if not _several_ranks():
        return work(list(items))
    world, rank = dist.get_world_size(), dist.get_rank()
    blocks = [list(items[i : i + block]) for i in range(0, len(items), block)]
    share = [item for b in blocks[rank::world] for item in b]
    log.info("rank %d of %d: %d of the %d %s", rank, world, len(share), len(items), what)
    mine = work(share) if share else []  # fewer blocks than ranks: nothing to do here
    shares: list[list[Any]] = [[] for _ in range(world)]
    dist.all_gather_object(shares, mine)
    results, taken = [], [0] * world
    for index, b in enumerate(blocks):  # block i is the next len(b) results of rank i % world
        owner = index % world
        results += shares[owner][taken[owner] : taken[owner] + len(b)]
        taken[owner] += len(b)
    return results
