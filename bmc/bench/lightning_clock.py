"""The benchmark's :class:`~bmc.bench.clock.StepClock` as a Lightning callback, for timing ``train.py`` itself."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from bmc.bench.clock import StepClock


class LightningStepClock(pl.Callback):
    """:class:`StepClock` as a Lightning callback, so ``train.py`` itself is what gets timed:
    ``+callbacks.clock._target_=bmc.bench.lightning_clock.LightningStepClock +callbacks.clock.path=...``."""

    def __init__(self, path: str, warmup: int = 2) -> None:
        self.clock = StepClock(path, warmup)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.clock.tick()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.write()
