"""The start of the running gradient-accumulation window, as a checkpoint can hold it.

Inside a window (``trainer.accumulate_grad_batches`` micro-batches per optimizer step) the weights and the
optimizer are still those of the window's start; only the gradients have grown. A checkpoint taken mid-window
that keeps the weights and the optimizer but records the loop's position at the window's START (and drops the
partial gradients, which a checkpoint never holds) resumes exactly: the resumed run replays the whole window,
batch for batch, as an uninterrupted run trained it. Lightning itself cannot resume into the middle of a window
(its loops would take the next optimizer step on the rest of the window's gradients only).

:class:`WindowStart` keeps what Lightning would have written at the end of the micro-batch that closed the
previous window (the fit loop's progress and the datamodule's position inside the epoch), captured when that
batch ended, and :meth:`WindowStart.rewind` puts it into a checkpoint written later in the window. Those are
states Lightning's own mid-epoch checkpoints (``ModelCheckpoint(every_n_train_steps=...)``) have, so its loops
resume from them as from their own, validation that ran after that micro-batch included (it is not repeated).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl


@dataclass(frozen=True)
class _Position:
    """The loop and data state of a checkpoint written at the end of a window's last micro-batch."""

    epoch: int
    fit_loop: dict[str, Any]
    datamodule_key: str | None
    datamodule: dict[str, Any] | None


class WindowStart:
    """The start of the accumulation window that is running, tracked micro-batch by micro-batch.

    Call :meth:`start` when training starts and :meth:`batch_ended` at the end of every training micro-batch;
    a micro-batch after which the optimizer stepped closes a window, and the position then is the next window's
    start. Before the first optimizer step of a process the start is the state training started from, which
    this process did not capture: :attr:`known` is False then.
    """

    def __init__(self) -> None:
        self._position: _Position | None = None
        self._step = -1
        self.micro_batches = 0  # of the open window that have run (0: no window is open)

    def start(self, trainer: pl.Trainer) -> None:
        """Training (re)starts at a window's start, at ``trainer.global_step``."""
        self._position, self._step, self.micro_batches = None, trainer.global_step, 0

    def batch_ended(self, trainer: pl.Trainer) -> None:
        """A micro-batch ended; if the optimizer stepped in it, the position now is the next window's start."""
        if trainer.global_step == self._step:
            self.micro_batches += 1
            return
        self._step, self.micro_batches = trainer.global_step, 0
        datamodule = trainer.datamodule
        state = datamodule.state_dict() if datamodule is not None else None
        self._position = _Position(
            epoch=trainer.current_epoch,
            fit_loop=copy.deepcopy(trainer.fit_loop.state_dict()),
            datamodule_key=type(datamodule).__qualname__ if state else None,
            datamodule=copy.deepcopy(state) if state else None,
        )

    @property
    def known(self) -> bool:
        """A checkpoint now can hold the window's start: no window is open, or its start was captured."""
        return not self.micro_batches or self._position is not None

    def rewind(self, checkpoint: dict[str, Any]) -> None:
        """Make ``checkpoint``, written now, resume at the start of the open window (if one is open): its loop
        progress and data position become those captured when the window started. The weights and optimizer
        state need nothing: the optimizer has not stepped since."""
        if not self.micro_batches:
            return
        if self._position is None:
            raise RuntimeError("the start of this accumulation window was not captured (no optimizer step yet)")
        checkpoint["epoch"] = self._position.epoch
        checkpoint["loops"]["fit_loop"] = copy.deepcopy(self._position.fit_loop)
        if self._position.datamodule_key is not None:
            checkpoint[self._position.datamodule_key] = copy.deepcopy(self._position.datamodule)
