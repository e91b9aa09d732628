"""A preemption notice at a known point, for tests: a callback that sends its own process a signal as a given
training micro-batch starts. In a ``train.py`` run (whose folder makes ``tests`` importable):

    python train.py ... '+callbacks.signal_at={_target_: tests.doubles.signal_at.SignalAt, epoch: 0, batch: 5}'
"""

from __future__ import annotations

import os
import signal as signals
import time
from typing import Any

import pytorch_lightning as pl


class SignalAt(pl.Callback):
    """Send ``signal`` to this process when micro-batch ``batch`` (0-based) of epoch ``epoch`` starts, once, on
    the process of global rank ``rank`` only (None: on every one); ``sent_at`` is when (``time.monotonic``),
    None before."""

    def __init__(self, epoch: int, batch: int, signal: str = "SIGTERM", rank: int | None = None) -> None:
        self.epoch, self.batch, self.rank = epoch, batch, rank
        self.signum = signals.Signals[signal]
        self.sent_at: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if self.sent_at is None and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            self.sent_at = time.monotonic()
            os.kill(os.getpid(), self.signum)
