"""Checkpoints of the preference stage: atomic writes, and the checkpoint a resumed run starts from.

A run writes ``<output_dir>/checkpoints/last.ckpt`` (and the best one by a ``val/`` metric). To resume a
killed run, run the same command again in its output folder with ``ckpt_path=last``
(``python train.py ... hydra.run.dir=<that run's folder> ckpt_path=last``), or pass any checkpoint
as ``ckpt_path=<path>``. ``ckpt_path=auto`` resumes from ``last.ckpt`` when the folder has one and starts
afresh otherwise: what a job that a cluster may requeue into its own folder passes (a SLURM job's folder is
keyed by its job id, :mod:`bmc.run_dir`). A checkpoint is a file or, as a sharded one is, a folder: the path
is handed to the strategy's checkpoint IO as it is.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from lightning_fabric.utilities.load import _load_distributed_checkpoint
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

LAST = "last"
AUTO = "auto"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but a local checkpoint is written to a temporary file in its own folder,
    flushed to disk and renamed over the target, so a run killed mid-write leaves the previous checkpoint
    intact. (Lightning's own local write stages the file in the system temp folder and then moves it, which
    is a copy, not a rename, when that folder is on another filesystem.) Remote paths use Lightning's IO."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        fsync_folder(target.parent)


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk: a rename in it is durable only then."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents on CPU, in this process alone: a file as ``torch.load`` reads it (tensors only,
    memory-mapped), a sharded checkpoint (the folder trainer=fsdp2 writes) with its shards gathered into full
    tensors, in a file's layout: ``state_dict``, ``optimizer_0``... and the loop state of its ``meta.pt``.

    A sharded one is read without a process group, whole into memory (its weights and optimizer state)."""
    path = Path(path)
    if path.is_dir():
        return _load_distributed_checkpoint(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """The checkpoint ``Trainer.fit`` resumes from: ``None`` starts afresh, ``last`` is ``last.ckpt`` in
    ``checkpoint_dir`` (the run's own checkpoint folder), ``auto`` is that one when it exists and a fresh start
    otherwise (a job that a cluster may requeue into its own folder), anything else is a checkpoint (a file, or
    the folder of a sharded checkpoint).

    A missing checkpoint is an error: Lightning would warn and silently train from scratch instead.
    """
    if ckpt_path is None:
        return None
    last = Path(checkpoint_dir) / "last.ckpt"
    if ckpt_path == AUTO:
        log.info("ckpt_path=auto: %s", f"resuming from {last}" if last.exists() else f"no {last}, a fresh start")
        return str(last) if last.exists() else None
    path = last if ckpt_path == LAST else Path(ckpt_path)
    if not path.exists():
        hint = (
            "ckpt_path=last resumes the run whose output folder this is: pass the killed run's folder as "
            "hydra.run.dir=<folder> (its checkpoints are in <folder>/checkpoints), or ckpt_path=<file.ckpt>"
            if ckpt_path == LAST
            else "ckpt_path must be a checkpoint (e.g. <run folder>/checkpoints/last.ckpt), `last` or `auto`"
        )
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no checkpoint at {path}. {hint}")
    return str(path)


POLICY_PREFIX = "policy."  # the policy's keys in a PreferenceModule state dict


def load_policy_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """The policy weights of a PreferenceModule state dict (a Lightning checkpoint's, or the gathered weights of
    an FSDP run), loaded into ``model``; ``source`` names where they come from in the error.

    Checkpoints keep only the trainable weights (a LoRA checkpoint holds the adapters), so every key must
    exist in ``model`` and every trainable weight must be in the state."""
    weights = {k[len(POLICY_PREFIX) :]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise ValueError(
            f"{source}: does not match the policy (unexpected keys {unexpected[:3]}, "
            f"missing trainable {sorted(trainable & set(missing))[:3]})"
        )


def policy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as a PreferenceModule checkpoint holds them: its trainable parameters and its
    buffers, under ``policy.``."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {POLICY_PREFIX + k: v for k, v in model.state_dict().items() if k not in frozen}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Two state dicts hold the same tensors under the same names (bit for bit, dtype included)."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k].cpu(), b[k].cpu()) for k in a
    )
