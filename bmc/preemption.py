"""Preemption: a job told to stop (SIGTERM, as SLURM sends on preemption and at the time limit; SIGUSR1, as
``sbatch --signal`` and submitit use ahead of the limit) saves an exact mid-epoch checkpoint first.

:class:`PreemptionCheckpoint` catches the signal during training, lets the running optimizer step finish (a
step whose accumulated gradients were cut short could not resume exactly), writes ``last.ckpt`` (weights,
optimizer, loop state and the position inside the epoch) and stops the run with :class:`Preempted`: the
summary says ``preempted``. :func:`handed_back_signals` then gives the signal to the handler that was in place
before training: submitit's requeues the job, the default one ends the process as the signal would have.
A requeued job, or the same command with ``ckpt_path=auto``, resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """The run stopped on a preemption signal after writing its checkpoint. A ``SystemExit`` (exit status
    128 + the signal's number, as a shell reports a process ended by it): a sweep does not go on to the next job
    in a process that was told to stop."""

    def __init__(self, signum: int, step: int, checkpoint: Path, previous: Any) -> None:
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint, self.previous = signum, step, checkpoint, previous

    def __str__(self) -> str:
        return (
            f"preempted by {signal.Signals(self.signum).name} at step {self.step}; {self.checkpoint} holds the "
            "run: the same command with ckpt_path=auto (or a requeued job) resumes it"
        )


class PreemptionCheckpoint(pl.Callback):
    """On ``signals`` during training: finish the optimizer step, write ``checkpoint`` and raise :class:`Preempted`.

    The handlers are installed when training starts (over Lightning's own SIGTERM handler, which would stop
    after the current batch, inside a gradient accumulation, without a checkpoint) and the ones in place before
    ``fit`` come back when it ends. Every rank stops at the same step: the decision is reduced across ranks at
    each optimizer step, so a signal that reached one rank stops them all.
    """

    def __init__(self, checkpoint: str, signals: Sequence[str] = ("SIGTERM", "SIGUSR1")) -> None:
        self.checkpoint = Path(checkpoint)
        self.signals = [signal.Signals[name] for name in signals]
        self._before_fit: dict[signal.Signals, Any] = {}
        self._received: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning installs its handlers after this hook: these are the job's own (submitit's, or the default)
        self._before_fit = {signum: signal.getsignal(signum) for signum in self.signals}
        self._received = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for signum in self.signals:
            signal.signal(signum, self._note)
        names = ", ".join(s.name for s in self.signals)
        log.info("preemption: %s write %s at the next optimizer step and stop the run", names, self.checkpoint)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self._received is None:
            log.warning("received %s: stopping after the current optimizer step", signal.Signals(signum).name)
        self._received = signum

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = batch_idx + 1
        if done % trainer.accumulate_grad_batches == 0 or done == trainer.num_training_batches:  # a step was taken
            self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_signalled(trainer)  # a signal during the last validation: the final state is saved

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._before_fit.items():
            signal.signal(signum, handler)

    def _stop_if_signalled(self, trainer: pl.Trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            return
        trainer.save_checkpoint(self.checkpoint)
        signum = self._received if self._received is not None else self.signals[0]  # another rank's signal
        log.warning("preempted: wrote %s at step %d", self.checkpoint, trainer.global_step)
        raise Preempted(signum, trainer.global_step, self.checkpoint, self._before_fit.get(signum))


@contextmanager
def handed_back_signals() -> Iterator[None]:
    """Around the main job: a :class:`Preempted` run, once its summary is written, hands its signal to the
    handler that was there before training (submitit's requeue, or the default: the process ends by it). An
    ignored signal, or one a Python handler returns from, leaves the ``SystemExit`` to end the process."""
    try:
        yield
    except Preempted as stop:
        if callable(stop.previous):
            stop.previous(stop.signum, None)
        elif stop.previous == signal.SIG_DFL:
            logging.shutdown()  # the default action ends the process at once: flush the logs first
            signal.signal(stop.signum, signal.SIG_DFL)
            os.kill(os.getpid(), stop.signum)
        raise
