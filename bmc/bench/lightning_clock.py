"""The benchmark's :class:`~bmc.bench.clock.StepClock` as a Lightning callback, for timing ``train.py`` itself."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl

from bmc.bench.clock import StepClock

#: the phases of an automatically optimised step, each from the hook that ends the one before it
PHASES = ("forward", "backward", "optimizer")


class LightningStepClock(pl.Callback):
    """:class:`StepClock` as a Lightning callback, so ``train.py`` itself is what gets timed:
    ``+callbacks.clock._target_=bmc.bench.lightning_clock.LightningStepClock +callbacks.clock.path=...``.

    Each timed step is also split into its phases (:data:`PHASES`, written as ``phase_seconds``): the batch
    start to the loss (data transfer, the reference's and the policy's forwards, the loss), the backward pass,
    and the rest (gradient clipping, the optimizer and scheduler, the step's logging), so a slow step says where
    its time went."""

    def __init__(self, path: str, warmup: int = 2) -> None:
        self.clock = StepClock(path, warmup)
        self.marks: list[float] = []
        self.phases: dict[str, list[float]] = {phase: [] for phase in PHASES}

    def _mark(self) -> None:
        self.marks.append(time.perf_counter())

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.marks = []
        self._mark()

    def on_before_backward(self, trainer: pl.Trainer, *args: Any) -> None:
        self._mark()

    def on_after_backward(self, trainer: pl.Trainer, *args: Any) -> None:
        self._mark()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.clock.tick()
        # the steps after the warm-up, like the clock's window (manual optimisation, whose hooks differ, gets none)
        if len(self.clock.ticks) > self.clock.warmup and len(self.marks) == len(PHASES):
            for phase, began, ended in zip(PHASES, self.marks, [*self.marks[1:], self.clock.ticks[-1]]):
                self.phases[phase].append(round(ended - began, 4))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.extra["phase_seconds"] = self.phases
        self.clock.write()
