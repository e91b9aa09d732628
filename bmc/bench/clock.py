"""One timer for every implementation: the steady state of a training loop, from the end of its
``warmup``-th optimizer step to the end of its last, and the process's peak resident memory.

Lightning is not imported here, so that the TRL and bare-loop processes do not carry it in their memory.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import torch


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StepClock:
    """Call :meth:`tick` after each optimizer step, :meth:`write` once training ends."""

    def __init__(self, path: str | Path, warmup: int = 2) -> None:
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (the timed window starts at the end of a step), got {warmup}")
        self.path = Path(path)
        self.warmup = warmup
        self.ticks: list[float] = []
        self.extra: dict[str, Any] = {}  # written beside the result (a caller's finer timings)

    def tick(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # GPU work is asynchronous: a step ends when its kernels do
        self.ticks.append(time.perf_counter())

    def result(self) -> dict[str, Any]:
        if len(self.ticks) <= self.warmup:
            raise RuntimeError(f"{len(self.ticks)} steps timed, need more than warmup={self.warmup}")
        return {
            "steps": len(self.ticks),
            "timed_steps": len(self.ticks) - self.warmup,
            "seconds": self.ticks[-1] - self.ticks[self.warmup - 1],
            # each timed step on its own: a slow outlier (a page-in, another process) shows instead of averaging in
            "step_seconds": [round(b - a, 4) for a, b in zip(self.ticks[self.warmup - 1 :], self.ticks[self.warmup :])],
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            **self.extra,
        }

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.result()))
