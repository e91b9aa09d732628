"""Sharded (distributed) checkpoints of trainer=fsdp2, written atomically.

Lightning's ``ModelParallelStrategy`` writes a distributed checkpoint as a folder (each rank's shard files, the
``.metadata`` of ``torch.distributed.checkpoint`` and Lightning's ``meta.pt``) straight into its place: a run
killed while writing leaves a folder of old and new shards mixed, which resumes to nonsense or not at all. Here
every rank writes into a staging folder beside it, and once all have, rank 0 swaps it in with two renames (the
old folder aside, the new one in), so ``last.ckpt`` is always the previous checkpoint whole or the new one whole.
Between the two renames (no data is written there, only two directory entries change) a kill leaves the previous
checkpoint under ``.last.ckpt.old``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.strategies import ModelParallelStrategy

from bmc.checkpointing import fsync_folder


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose distributed checkpoints are staged and renamed into place (module
    docstring); a full (single-file) checkpoint, ``save_distributed_checkpoint=false``, is Lightning's write."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint or storage_options is not None:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        # every rank writes to the same folder: rank 0 names it
        target = Path(self.broadcast(str(filepath)))
        staging, aside = staging_paths(target)
        if self.global_rank == 0:
            for leftover in (staging, aside):  # of a run killed while writing
                remove_checkpoint(leftover)
        self.barrier("sharded checkpoint: staging folder clean")
        super().save_checkpoint(checkpoint, staging)
        self.barrier("sharded checkpoint: every shard written")
        if self.global_rank == 0:
            if target.exists():
                os.replace(target, aside)
            os.replace(staging, target)
            fsync_folder(target.parent)
            remove_checkpoint(aside)
        self.barrier("sharded checkpoint: in place")


def staging_paths(target: Path) -> tuple[Path, Path]:
    """Where a sharded checkpoint for ``target`` is written before it is renamed into place, and where the
    previous one is put aside meanwhile (hidden names in the same folder, so that the renames stay on one
    filesystem and no checkpoint callback counts them as checkpoints)."""
    return target.with_name(f".{target.name}.staging"), target.with_name(f".{target.name}.old")


def remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint at ``path``, a file or a sharded folder, if there is one."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
