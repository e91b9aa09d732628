"""Preemption: a job told to stop saves an exact checkpoint within one micro-batch, then does what the signal
would have done. The signals: SIGTERM (SLURM on preemption and at the time limit), SIGUSR1 (``sbatch
--signal``, Lightning's SLURM requeue signal) and SIGUSR2 (submitit's preemption signal,
``--signal=USR2@<delay>``).

:class:`PreemptionCheckpoint` catches them during training, lets the running micro-batch finish and writes
``last.ckpt``: with gradient accumulation (``model=hf`` accumulates 32 micro-batches per optimizer step,
more than a grace period may allow) it does not wait for the window's optimizer step. The rule: the
checkpoint holds the weights and optimizer state of the last optimizer step and the position (inside the
epoch, in the loops) of the START of the running accumulation window; the gradients of the window's
micro-batches so far are dropped, and the resumed run replays the whole window, ending exactly where an
uninterrupted run ends (:mod:`bmc.accumulation_window`). A signal before this process's first optimizer step
writes nothing: the checkpoint the run started from (or none: a fresh start) still is that window's start.
Then the handler that was in place before training decides:

- the default action (a plain job): the run stops as ``preempted`` and, once its summary is written
  (:func:`handed_back_signals`), the process ends by the signal;
- a Python handler (submitit's): it is called; if it exits (submitit requeues the job, then exits), the run
  stops as ``preempted`` and the process leaves with the handler's exit, after the summary; if it returns
  (submitit's SIGTERM handler only logs, the real notice being SIGUSR2), training goes on;
- an ignored signal: training goes on, with the checkpoint taken.

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

from bmc.accumulation_window import WindowStart

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """The run stopped on a preemption signal after writing its checkpoint. A ``SystemExit``, so that a sweep does
    not go on to the next job in a process that was told to stop: with the exit of the handler that stopped it
    (``handler_exit``), or ``128 + signum`` as a shell reports a process ended by the signal. ``kill``: end the
    process by the signal's default action once the summary is written."""

    def __init__(
        self,
        signum: int,
        step: int,
        checkpoint: Path | None,
        handler_exit: BaseException | None = None,
        kill: bool = False,
    ) -> None:
        code = handler_exit.code if isinstance(handler_exit, SystemExit) else 128 + signum
        super().__init__(code)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.handler_exit, self.kill = handler_exit, kill

    def __str__(self) -> str:
        where = f"preempted by {signal.Signals(self.signum).name} at step {self.step}"
        if self.checkpoint is None:
            return (
                f"{where}, before this process's first optimizer step: nothing new to save; the same command with "
                "ckpt_path=auto (or a requeued job) starts again where this run started"
            )
        return (
            f"{where}; {self.checkpoint} holds the run: the same command with ckpt_path=auto (or a requeued job) "
            "resumes it"
        )


class PreemptionCheckpoint(pl.Callback):
    """On ``signals`` during training: finish the micro-batch, write ``checkpoint`` at the start of its
    accumulation window, then let the handler from before training decide whether the run stops (see the module
    docstring).

    The handlers are installed when training starts (over Lightning's own SIGTERM handler, which would stop
    after the current batch without a checkpoint) and the ones in place before ``fit`` come back when it ends.
    Every rank saves and stops at the same micro-batch: both decisions are reduced across ranks at the end of
    every micro-batch, so a signal that reached one rank, or a handler that exits on one, stops them all.
    """

    def __init__(self, checkpoint: str, signals: Sequence[str] = ("SIGTERM", "SIGUSR1", "SIGUSR2")) -> None:
        self.checkpoint = Path(checkpoint)
        self.signals = [signal.Signals[name] for name in signals]
        self._before_fit: dict[int, Any] = {}
        self._received: int | None = None
        self._window = WindowStart()
        self._saving = False  # this callback's own save: rewound to the window's start

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning installs its handlers after this hook: these are the job's own (submitit's, or the default)
        self._before_fit = {signum: signal.getsignal(signum) for signum in self.signals}
        self._received = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window.start(trainer)
        for signum in self.signals:
            signal.signal(signum, self._note)
        names = ", ".join(s.name for s in self.signals)
        log.info("preemption (pid %d): %s write %s at the end of the micro-batch", os.getpid(), names, self.checkpoint)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        log.warning("received %s: a checkpoint at the end of the current micro-batch", signal.Signals(signum).name)
        self._received = signum

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._window.batch_ended(trainer)
        self._act_on_signal(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._saving:
            self._window.rewind(checkpoint)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._act_on_signal(trainer)  # a signal during the last validation: the final state is saved

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._before_fit.items():
            signal.signal(signum, handler)

    def _act_on_signal(self, trainer: pl.Trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            return
        signum, self._received = self._received, None
        saved = self._save(trainer)
        stop = self._hand_over(signum, trainer.global_step, saved) if signum is not None else None
        if trainer.strategy.reduce_boolean_decision(stop is not None, all=False):
            # another rank's signal or handler stopped the run: this rank stops with it
            raise stop or Preempted(self.signals[0], trainer.global_step, saved)
        log.info("preemption: the handler from before training let the run go on")

    def _save(self, trainer: pl.Trainer) -> Path | None:
        """Write the checkpoint at the start of the running accumulation window; None when this process has not
        captured that start (no optimizer step yet: the run's own starting point is the window's start)."""
        if not self._window.known:
            log.warning("preemption: no optimizer step since training started here: nothing new to save")
            return None
        replayed = self._window.micro_batches
        self._saving = True
        try:
            trainer.save_checkpoint(self.checkpoint)
        finally:
            self._saving = False
        log.warning(
            "preemption: wrote %s at step %d (the start of its accumulation window: the resumed run replays the %d "
            "micro-batch(es) of the window that ran)", self.checkpoint, trainer.global_step, replayed
        )  # fmt: skip
        return self.checkpoint

    def _hand_over(self, signum: int, step: int, saved: Path | None) -> Preempted | None:
        """What the handler from before training makes of ``signum``: a :class:`Preempted` to stop with, or None
        to go on."""
        previous = self._before_fit[signum]
        if previous == signal.SIG_DFL:
            return Preempted(signum, step, saved, kill=True)
        if not callable(previous):  # ignored
            return None
        try:
            previous(signum, None)
        except BaseException as handler_exit:  # submitit's requeue ends in sys.exit
            return Preempted(signum, step, saved, handler_exit=handler_exit)
        return None


@contextmanager
def handed_back_signals() -> Iterator[None]:
    """Around the main job: a :class:`Preempted` run, once its summary is written, leaves as the handler from
    before training made it (its exit, e.g. submitit's requeue code), or ends by the signal's default action."""
    try:
        yield
    except Preempted as stop:
        if stop.handler_exit is not None:
            raise stop.handler_exit from None
        if stop.kill:
            logging.shutdown()  # the default action ends the process at once: flush the logs first
            signal.signal(stop.signum, signal.SIG_DFL)
            os.kill(os.getpid(), stop.signum)
        raise
