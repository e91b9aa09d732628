"""Stage 7, completion: the run folder keeps each set of weights once.

While a run trains, resumability wins: ``last.ckpt`` holds the optimizer state (AdamW's two moments, twice the
weights) and the loop state beside the weights. Once the run has completed nothing resumes it, and keeping it
all made the folder of a ``model=hf`` run 2.57 GB for a 517 MB model (``model/`` 517 MB, ``best.ckpt`` 538 MB,
``last.ckpt`` 1.61 GB). At completion, on rank 0, each checkpoint the run's callbacks wrote is, in turn:

- kept whole when it is resumable (it holds optimizer state) and ``checkpoint.keep_optimizer=true``: to train
  on later (``ckpt_path=<it> trainer.max_epochs=...``);
- removed when its weights are, bit for bit, those ``model/`` holds (the export) or those of a checkpoint kept
  before it (``best.ckpt`` when the best validation was the last one);
- else kept without its optimizer and LR-scheduler state (weights, loop state and metrics; what Lightning
  writes with ``save_weights_only``).

So a completed run's folder holds ``model/`` and at most two other sets of weights (the best and the last, when
they differ from the export): at most 3x the model, plus ``last.ckpt``'s optimizer state with
``keep_optimizer=true``. A sharded checkpoint (the folder trainer=fsdp2 writes) is read whole and follows the
same rules; one that stays without its optimizer state becomes a single file (nothing resumes from it). A
failed or preempted run never gets here: its checkpoints stay whole, to resume from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytorch_lightning as pl

from bmc.checkpointing import AtomicCheckpointIO, fsync_folder, policy_state, read_checkpoint, same_weights
from bmc.preemption import PreemptionCheckpoint
from bmc.sharded_checkpoint import remove_checkpoint, staging_paths
from bmc.stages.products import TrainedPolicy
from bmc.timed_checkpoint import TimedCheckpoint

log = logging.getLogger(__name__)

#: what only resuming needs: dropped at completion unless checkpoint.keep_optimizer
RESUME_STATE = ("optimizer_states", "lr_schedulers")


def tidy_checkpoints(trained: TrainedPolicy, exported: bool, keep_optimizer: bool) -> dict[str, str]:
    """Apply the completion rules (module docstring) to the checkpoints ``trained``'s run wrote; ``exported``:
    ``trained.model`` holds what ``model/`` holds. Returns what became of each checkpoint, by path."""
    kept = [policy_state(trained.model)] if exported else []
    # the resumable ones first: with keep_optimizer they stay, and a weights-only copy of them goes
    written = sorted(written_checkpoints(trained.trainer), key=lambda path: not _resumable(read_checkpoint(path)))
    outcome: dict[str, str] = {}
    for path in written:
        # a file is memory-mapped: only the weights compared are read, and those of a checkpoint that goes are
        # let go; a sharded folder is read whole
        checkpoint, before = read_checkpoint(path), _size(path)
        if keep_optimizer and _resumable(checkpoint):
            outcome[str(path)] = "kept whole (checkpoint.keep_optimizer)"
            kept.append(checkpoint["state_dict"])
        elif any(same_weights(checkpoint["state_dict"], weights) for weights in kept):
            remove_checkpoint(path)
            outcome[str(path)] = "removed (its weights are kept elsewhere)"
        else:
            if _resumable(checkpoint) or path.is_dir():
                # a sharded folder becomes one file: resuming from it (the only reason for shards) is over
                _replace(path, {k: v for k, v in checkpoint.items() if not _resume_state(k)})
            outcome[str(path)] = "kept without optimizer state" if _resumable(checkpoint) else "kept"
            kept.append(checkpoint["state_dict"])
        log.info("completion: %s %s (%.1f MB -> %.1f MB)", path, outcome[str(path)], before / 1e6, _size(path) / 1e6)
    return outcome


def written_checkpoints(trainer: pl.Trainer) -> list[Path]:
    """The checkpoints the run's callbacks wrote that exist: each ``ModelCheckpoint``'s best and last, and the
    ``last.ckpt`` of the preemption and wall-time callbacks."""
    paths = [
        path
        for callback in trainer.checkpoint_callbacks
        for path in (callback.best_model_path, callback.last_model_path)
        if path
    ]
    paths += [str(c.checkpoint) for c in trainer.callbacks if isinstance(c, (PreemptionCheckpoint, TimedCheckpoint))]
    return [Path(path) for path in dict.fromkeys(paths) if Path(path).exists()]


def _resumable(checkpoint: dict) -> bool:
    return any(_resume_state(key) for key in checkpoint)


def _resume_state(key: str) -> bool:
    # a sharded checkpoint read whole holds its optimizer state as optimizer_0, optimizer_1...
    return key in RESUME_STATE or key.startswith("optimizer_")


def _replace(path: Path, checkpoint: dict) -> None:
    """Write ``checkpoint`` as one file at ``path``, which a file or a sharded folder holds now: staged beside it
    and renamed into place (a folder is put aside first, as :mod:`bmc.sharded_checkpoint` swaps folders)."""
    staging, aside = staging_paths(path)
    AtomicCheckpointIO().save_checkpoint(checkpoint, staging)
    if path.is_dir():
        os.replace(path, aside)
    os.replace(staging, path)
    fsync_folder(path.parent)
    remove_checkpoint(aside)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.exists() else 0
