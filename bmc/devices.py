"""The device a process computes on outside ``fit``: its own accelerator under the trainer's ``accelerator``.

Lightning places the policy during ``fit``; everything before and after it (the reference precompute, sampling,
evaluation, local judge and editor models) is placed here, so that the ranks of a multi-GPU run each use their
own GPU instead of all loading onto the first.
"""

from __future__ import annotations

import os

import torch


def accelerator_device(accelerator: str) -> torch.device:
    """The device a Lightning ``accelerator`` setting trains this process on: the GPU of the process's local
    rank (``LOCAL_RANK``, set by Lightning's launcher and torchrun, else SLURM's ``SLURM_LOCALID``), the MPS
    device, or the CPU when neither is asked for or present."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))))
    if accelerator in ("mps", "auto") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
