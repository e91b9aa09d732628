"""A resumable checkpoint by wall time: at most ``every_minutes`` of training are lost to a crash.

``model=hf`` validates once per epoch, and an epoch of a real data set takes hours: the checkpoint after each
validation alone would leave a crash (or a preemption whose grace period runs out) hours to redo. A cadence in
optimizer steps depends on the step time; one in minutes does not. (Lightning's
``ModelCheckpoint(train_time_interval=...)`` saves at whatever micro-batch the time runs out, inside a gradient
accumulation, where no checkpoint resumes exactly; this one waits for the window's optimizer step.)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class TimedCheckpoint(pl.Callback):
    """Write ``checkpoint`` (weights, optimizer, loop state and the position inside the epoch) at the first
    optimizer step once ``every_minutes`` have passed since training started or since the last full checkpoint
    (this one's or another writer's: the checkpoint after a validation, a preemption, ``every_n_train_steps``).
    ``every_minutes=None``: never.

    Every rank writes at the same step: the decision is reduced across ranks, as ``trainer.save_checkpoint``
    must be called on all of them.
    """

    def __init__(self, checkpoint: str, every_minutes: float | None) -> None:
        if every_minutes is not None and every_minutes <= 0:
            raise ValueError(f"TimedCheckpoint: every_minutes must be positive or null, got {every_minutes}")
        self.checkpoint = Path(checkpoint)
        self.every_s = None if every_minutes is None else 60.0 * every_minutes
        self._last_save = 0.0
        self._step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save, self._step = time.monotonic(), trainer.global_step

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # called for full checkpoints only (not best.ckpt's weights): any of them restarts the clock
        self._last_save = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.every_s is None or trainer.global_step == self._step:  # inside an accumulation window
            return
        self._step = trainer.global_step
        due = time.monotonic() - self._last_save >= self.every_s
        if trainer.strategy.reduce_boolean_decision(due, all=False):
            trainer.save_checkpoint(self.checkpoint)
            log.info("wrote %s at step %d (every %g min of training)", self.checkpoint, self._step, self.every_s / 60)
