"""Crash and resume: atomic checkpoint writes, ``ckpt_path`` resolution, and a run killed by a real signal
that, resumed, ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.demos.boring_classes import BoringModel
from torch.utils.data import DataLoader

from bmc import timed_checkpoint
from bmc.checkpointing import AtomicCheckpointIO, resolve_ckpt_path
from bmc.data.epoch_sampler import EpochSampler
from bmc.pipeline import run
from bmc.preemption import Preempted, PreemptionCheckpoint, handed_back_signals
from bmc.timed_checkpoint import TimedCheckpoint
from tests.conftest import run_cli
from tests.doubles.signal_at import SignalAt
from tests.doubles.train_process import kill_once_written, start_train

# three epochs of six steps on the debug sizes, checkpoints after every epoch's validation
RESUMABLE = [
    "debug=default",
    "callbacks=default",
    "trainer.max_steps=-1",
    "trainer.max_epochs=3",
    "optim.lr=2e-3",
    "optim.warmup_ratio=0",
]


def test_a_checkpoint_write_that_dies_midway_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.arange(4.0)}, path)

    def dies_midway(obj: object, handle: object) -> None:
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(4)}, path)
    monkeypatch.undo()

    survivor = io.load_checkpoint(path)
    assert survivor["step"] == 1 and torch.equal(survivor["weights"], torch.arange(4.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no staging file left behind
    io.save_checkpoint({"step": 2}, path)
    assert io.load_checkpoint(path)["step"] == 2


def test_the_trainer_writes_checkpoints_through_the_atomic_io(make_config) -> None:
    trainer = instantiate(make_config().trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_ckpt_path_last_is_the_runs_own_last_checkpoint_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    assert resolve_ckpt_path(None, checkpoints) is None
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no checkpoint at .*last\.ckpt.*hydra\.run\.dir="):
        resolve_ckpt_path("last", checkpoints)
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*nope\.ckpt: no checkpoint"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), checkpoints)
    checkpoints.mkdir()
    (checkpoints / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path("last", checkpoints) == str(checkpoints / "last.ckpt")
    assert resolve_ckpt_path(str(checkpoints / "last.ckpt"), tmp_path / "elsewhere") == str(checkpoints / "last.ckpt")


def test_a_sharded_checkpoint_is_a_folder_and_ckpt_path_finds_it_as_a_file(tmp_path: Path) -> None:
    """Sharded checkpoints (FSDP2's distributed checkpoints) are folders: last, auto and a path take them."""
    checkpoints = tmp_path / "checkpoints"
    assert resolve_ckpt_path("auto", checkpoints) is None
    (checkpoints / "last.ckpt").mkdir(parents=True)
    (checkpoints / "last.ckpt" / "__0_0.distcp").write_bytes(b"x")
    for ckpt_path in ("last", "auto", str(checkpoints / "last.ckpt")):
        assert resolve_ckpt_path(ckpt_path, checkpoints) == str(checkpoints / "last.ckpt")


def test_resuming_a_run_without_checkpoints_fails_before_the_data_stages(make_config) -> None:
    cfg = make_config(*RESUMABLE, "ckpt_path=last")
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no checkpoint"):
        run(cfg)
    assert not Path(cfg.paths.cache_dir).exists()  # no SFT, no sampling: the error comes first
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["status"] == "failed" and "ckpt_path=last" in summary["error"]


def _kill_at_first_checkpoint(args: list[str], run_dir: Path, cwd: Path) -> dict:
    """Start ``train.py`` in ``run_dir``, SIGKILL it as soon as ``last.ckpt`` is in place, and return that
    checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    kill_once_written([*args, f"hydra.run.dir={run_dir}"], last, cwd)
    return torch.load(last, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> dict[str, float]:
    """The final metrics of the RESUMABLE run trained without interruption (what every resumed run must end at)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    output = run_cli([*RESUMABLE, "logger=none", f"paths.cache_dir={shared_cache}", f"hydra.run.dir={folder}"], folder)
    assert "cache hit: sft" in output or "cache write: sft" in output
    return json.loads((folder / "summary.json").read_text())["metrics"]


def _assert_same_metrics(resumed: dict, expected: dict[str, float]) -> None:
    assert resumed["status"] == "completed"
    assert resumed["metrics"].keys() == expected.keys()
    for key, value in expected.items():
        assert resumed["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_a_run_killed_mid_training_resumes_to_the_same_final_metrics(
    tmp_path: Path, shared_cache: Path, uninterrupted: dict[str, float]
) -> None:
    args = [*RESUMABLE, "logger=none", f"paths.cache_dir={shared_cache}"]
    run_dir = tmp_path / "killed"
    killed_at = _kill_at_first_checkpoint(args, run_dir, cwd=tmp_path)
    assert not (run_dir / "summary.json").exists()
    assert killed_at["global_step"] < uninterrupted["train/steps"] and killed_at["best_metrics"]

    run_cli([*args, f"hydra.run.dir={run_dir}", "ckpt_path=last"], cwd=tmp_path)
    _assert_same_metrics(json.loads((run_dir / "summary.json").read_text()), uninterrupted)


def test_a_run_killed_mid_epoch_resumes_to_the_same_final_metrics(
    tmp_path: Path, shared_cache: Path, uninterrupted: dict[str, float]
) -> None:
    """A checkpoint every 2 optimizer steps (an epoch is 6): the run is killed after the first, at step 2 of
    epoch 0, and the resumed run skips the 2 batches it trained on, as the uninterrupted run (which wrote no
    mid-epoch checkpoints) does not see them twice."""
    args = [*RESUMABLE, "logger=none", "callbacks.last_checkpoint.every_n_train_steps=2",
            f"paths.cache_dir={shared_cache}"]  # fmt: skip
    run_dir = tmp_path / "killed"
    killed_at = _kill_at_first_checkpoint(args, run_dir, cwd=tmp_path)
    assert killed_at["global_step"] % 6 != 0, killed_at["global_step"]  # inside an epoch
    assert killed_at["PreferenceDataModule"] == {"epoch": killed_at["epoch"], "batches": killed_at["global_step"] % 6}

    run_cli([*args, f"hydra.run.dir={run_dir}", "ckpt_path=last"], cwd=tmp_path)
    _assert_same_metrics(json.loads((run_dir / "summary.json").read_text()), uninterrupted)


def test_a_slurm_job_preempted_and_requeued_resumes_in_its_own_folder_to_the_same_final_metrics(
    tmp_path: Path, shared_cache: Path, uninterrupted: dict[str, float]
) -> None:
    """SIGTERM (SLURM's preemption signal) as soon as training has started, with no periodic checkpoints: the
    run writes last.ckpt at the end of the micro-batch, says `preempted`, and ends by the signal (no handler was
    there before training). SLURM requeues the job under its id with its command, and no hydra.run.dir is
    pinned: the run folder is named by the job (bmc.run_dir), so the requeued run lands in it, and ckpt_path=auto
    resumes from its last.ckpt to where the uninterrupted run ends. On the first start ckpt_path=auto found no
    checkpoint and started afresh."""
    args = [*RESUMABLE, "logger=none", f"paths.cache_dir={shared_cache}", "ckpt_path=auto"]
    job = {"SLURM_JOB_ID": "4242"}
    proc = start_train(args, tmp_path, env=job)

    def started(log_file: Path) -> bool:
        return "preemption (pid" in log_file.read_text()

    try:
        while proc.poll() is None and not any(started(f) for f in tmp_path.glob("outputs/math/*/train.log")):
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before training started"
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGTERM
    [run_dir] = tmp_path.glob("outputs/math/*")
    assert re.fullmatch(r"slurm4242-[0-9a-f]{6}_dpo_original_s0", run_dir.name), run_dir.name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and "preempted by SIGTERM" in summary["error"]
    assert "ckpt_path=auto" in summary["error"]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 1 <= saved["global_step"] < uninterrupted["train/steps"]
    assert "ckpt_path=auto: no " in (run_dir / "train.log").read_text()  # the first start found no checkpoint

    output = run_cli(args, cwd=tmp_path, env=job)  # the requeued job
    assert "ckpt_path=auto: resuming from" in output
    assert list(tmp_path.glob("outputs/math/*")) == [run_dir]
    _assert_same_metrics(json.loads((run_dir / "summary.json").read_text()), uninterrupted)


# model=hf's kind of run: several micro-batches per optimizer step (3 epochs of 3 steps of 4 micro-batches)
ACCUMULATING = [*RESUMABLE, "logger=none", "batch_size=2", "trainer.accumulate_grad_batches=4"]


@pytest.fixture(scope="module")
def uninterrupted_accumulating(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> dict[str, float]:
    """The final metrics of the ACCUMULATING run trained without interruption."""
    folder = tmp_path_factory.mktemp("uninterrupted_accumulating")
    run_cli([*ACCUMULATING, f"paths.cache_dir={shared_cache}", f"hydra.run.dir={folder}"], folder)
    metrics = json.loads((folder / "summary.json").read_text())["metrics"]
    assert metrics["train/steps"] == 9
    return metrics


def test_a_run_signalled_inside_an_accumulation_window_resumes_the_window_to_the_same_final_metrics(
    tmp_path: Path, shared_cache: Path, uninterrupted_accumulating: dict[str, float]
) -> None:
    """train.py accumulating 4 micro-batches per step: SIGTERM as micro-batch 6 starts (the second window, 4-7).
    The run writes last.ckpt when that micro-batch ends, at the window's start (step 1, 4 batches of epoch 0
    trained), and ends by the signal; ckpt_path=auto replays the window and ends with the uninterrupted run's
    metrics."""
    run_dir = tmp_path / "preempted"
    args = [*ACCUMULATING, f"paths.cache_dir={shared_cache}", f"hydra.run.dir={run_dir}", "ckpt_path=auto"]
    signal_at = "+callbacks.signal_at={_target_:tests.doubles.signal_at.SignalAt,epoch:0,batch:5}"
    proc = start_train([*args, signal_at], tmp_path)
    assert proc.wait(timeout=300) == -signal.SIGTERM
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and "preempted by SIGTERM at step 1;" in summary["error"]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 1 and saved["PreferenceDataModule"] == {"epoch": 0, "batches": 4}
    assert "replays the 2 micro-batch(es)" in (run_dir / "train.log").read_text()

    run_cli(args, cwd=tmp_path)
    _assert_same_metrics(json.loads((run_dir / "summary.json").read_text()), uninterrupted_accumulating)


def test_a_job_preempted_under_the_submitit_launcher_is_requeued_and_resumes_to_the_same_final_metrics(
    tmp_path: Path, shared_cache: Path, uninterrupted: dict[str, float]
) -> None:
    """The submitit launcher, run locally (hydra/launcher=submitit_local): SIGUSR2, submitit's preemption signal,
    to the training job. The job writes last.ckpt at the end of the micro-batch and hands the signal to submitit,
    which checkpoints the submission and requeues it; the requeued job (ckpt_path=auto) resumes from that
    checkpoint and ends with the uninterrupted run's metrics."""
    sweep = tmp_path / "sweep"
    args = ["-m", *RESUMABLE, "logger=none", f"paths.cache_dir={shared_cache}", "ckpt_path=auto",
            "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=job"]  # fmt: skip
    proc = start_train(args, tmp_path)
    log_file, pid = sweep / "job" / "train.log", None
    try:
        deadline = time.time() + 240
        while pid is None and proc.poll() is None and time.time() < deadline:
            found = re.search(r"preemption \(pid (\d+)\)", log_file.read_text() if log_file.exists() else "")
            pid = int(found.group(1)) if found else time.sleep(0.005)
        assert pid is not None, "the job never started training"
        os.kill(pid, signal.SIGUSR2)
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_file.read_text()
    assert "received SIGUSR2" in log and "preemption: wrote" in log
    assert "ckpt_path=auto: no " in log and "ckpt_path=auto: resuming from" in log  # started afresh, then resumed
    _assert_same_metrics(json.loads((sweep / "job" / "summary.json").read_text()), uninterrupted)


class _Rows(pl.LightningDataModule):
    """24 random rows in micro-batches of 2 (12 an epoch) in an :class:`EpochSampler` order, resumable inside an
    epoch as PreferenceDataModule is (its position travels with the checkpoint), and 4 validation rows."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.train, self.val = torch.randn(24, 32, generator=generator), torch.randn(4, 32, generator=generator)
        self._resume: tuple[int, int] | None = None

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(self.train, batch_size=2, seed=0)
        if self._resume is not None:
            sampler.resume(*self._resume)
        return DataLoader(self.train, batch_size=2, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=2)

    def state_dict(self) -> dict[str, int]:
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (state["epoch"], state["batches"])


class _Recorded(BoringModel):
    """BoringModel that records each training micro-batch as (epoch, batch, global step) and each validation as
    (epoch, global step), and takes ``delay`` seconds per micro-batch."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.trained: list[tuple[int, int, int]] = []
        self.validated: list[tuple[int, int]] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        self.trained.append((self.current_epoch, batch_idx, self.global_step))
        time.sleep(self.delay)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        if batch_idx == 0:
            self.validated.append((self.current_epoch, self.global_step))
        return super().validation_step(batch, batch_idx)


def _fit_accumulating(
    folder: Path, ckpt_path: Path | None = None, signal_at: SignalAt | None = None, delay: float = 0.0
) -> tuple[_Recorded, Preempted | None, float]:
    """3 epochs of 12 micro-batches, 4 per optimizer step, validated every 6, with the preemption callback
    writing ``folder/last.ckpt``: the model, the Preempted that stopped it (None if none) and when fit ended."""
    torch.manual_seed(0)
    model = _Recorded(delay)
    trainer = pl.Trainer(
        max_epochs=3, accumulate_grad_batches=4, val_check_interval=6, num_sanity_val_steps=0, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=folder,
        callbacks=[*([signal_at] if signal_at else []), PreemptionCheckpoint(str(folder / "last.ckpt"))],
    )  # fmt: skip
    try:
        trainer.fit(model, datamodule=_Rows(), ckpt_path=ckpt_path, weights_only=True)
    except Preempted as stop:
        return model, stop, time.monotonic()
    return model, None, time.monotonic()


def _position(checkpoint: dict) -> dict[str, int]:
    return checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]


@pytest.fixture
def requeue_on_sigusr2() -> Iterator[None]:
    """SIGUSR2's handler before training exits, as submitit's requeue does: the run stops, pytest goes on."""
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: sys.exit(144))
    yield
    signal.signal(signal.SIGUSR2, before)


@pytest.fixture(scope="module")
def uninterrupted_fit(tmp_path_factory: pytest.TempPathFactory) -> _Recorded:
    model, stop, _ = _fit_accumulating(tmp_path_factory.mktemp("uninterrupted_fit"))
    assert stop is None and model.global_step == 9
    return model


@pytest.mark.parametrize("exits", [False, True], ids=["handler-returns", "handler-exits"])
def test_a_preemption_signal_checkpoints_at_the_end_of_its_micro_batch_then_the_handler_from_before_decides(
    exits: bool, tmp_path: Path
) -> None:
    """SIGUSR2 as the first micro-batch of the second accumulation pair starts: the checkpoint is written when
    that micro-batch ends, holding the pair's start (step 1, 2 batches done), and the handler installed before
    training gets the signal once. One that returns (submitit's SIGTERM handler only logs) lets training go on
    to its end (step 4); one that exits (submitit's requeue, sys.exit(144)) stops the run there, and the process
    leaves with that exit."""
    received: list[int] = []

    def previous(signum: int, frame: object) -> None:
        received.append(signum)
        if exits:
            sys.exit(144)

    checkpoint = tmp_path / "last.ckpt"
    model = _Recorded()
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=8, accumulate_grad_batches=2, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[SignalAt(epoch=0, batch=2, signal="SIGUSR2"), PreemptionCheckpoint(str(checkpoint))],
    )  # fmt: skip
    before = signal.signal(signal.SIGUSR2, previous)
    try:
        if exits:
            with pytest.raises(SystemExit) as stop, handed_back_signals():
                trainer.fit(model)
            assert stop.value.code == 144 and not isinstance(stop.value, Preempted)
            assert isinstance(stop.value.__context__, Preempted) and stop.value.__context__.step == 1
            assert [batch for _, batch, _ in model.trained] == [0, 1, 2]  # not the rest of the pair
        else:
            with handed_back_signals():
                trainer.fit(model)
            assert trainer.global_step == 4
        assert signal.getsignal(signal.SIGUSR2) is previous
    finally:
        signal.signal(signal.SIGUSR2, before)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 1 and _position(saved)["processed"] == 2
    assert received == [signal.SIGUSR2]


@pytest.mark.parametrize(
    ("at", "window_start"),
    [((0, 5), (1, {"epoch": 0, "batches": 4})), ((1, 1), (3, {"epoch": 0, "batches": 12}))],
    ids=["mid-window", "first-window-of-an-epoch"],
)
def test_a_signal_inside_an_accumulation_window_checkpoints_its_start_within_one_micro_batch_and_resumes_exactly(
    at: tuple[int, int],
    window_start: tuple[int, dict[str, int]],
    tmp_path: Path,
    requeue_on_sigusr2: None,
    uninterrupted_fit: _Recorded,
) -> None:
    """Accumulation 4, a micro-batch takes 0.25 s. The signal arrives as micro-batch 6 of epoch 0 starts (the
    window of batches 4-7), or micro-batch 2 of epoch 1 (the epoch's first window, after epoch 0's validation).
    The run stops when that micro-batch ends, not after the rest of its window: its checkpoint holds the last
    optimizer step's weights and the window's start (the step; for the data, the epoch and batches before the
    window). Resumed, the run replays the window and ends with the uninterrupted run's weights, having validated
    at the same steps, none twice."""
    step, data = window_start
    delay = 0.25
    signal_at = SignalAt(*at, signal="SIGUSR2")
    interrupted, stop, stopped = _fit_accumulating(tmp_path, signal_at=signal_at, delay=delay)
    assert stop is not None and stop.checkpoint == tmp_path / "last.ckpt" and stop.step == step
    assert interrupted.trained[-1][:2] == at  # no micro-batch after the one the signal arrived in
    assert stopped - signal_at.sent_at < 2 * delay  # one micro-batch; the window's rest would take 2 or 3 more
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == step and saved["_Rows"] == data
    assert _position(saved)["processed"] == data["batches"]

    resumed, stop, _ = _fit_accumulating(tmp_path, ckpt_path=tmp_path / "last.ckpt")
    assert stop is None and resumed.trained[0] == (at[0], at[1] - at[1] % 4, step)  # the window, from its start
    for got, expected in zip(resumed.parameters(), uninterrupted_fit.parameters(), strict=True):
        assert torch.equal(got, expected)
    assert interrupted.validated + resumed.validated == uninterrupted_fit.validated


def test_a_signal_before_the_first_optimizer_step_writes_no_checkpoint(
    tmp_path: Path, requeue_on_sigusr2: None
) -> None:
    """The window's start is the run's own start: nothing to save, and the message says the same command starts
    again there."""
    _, stop, _ = _fit_accumulating(tmp_path, signal_at=SignalAt(0, 2, signal="SIGUSR2"))
    assert stop is not None and stop.checkpoint is None and stop.step == 0
    assert "nothing new to save" in str(stop) and "ckpt_path=auto" in str(stop)
    assert not (tmp_path / "last.ckpt").exists()


class _MinutePerMicroBatch(pl.Callback):
    """A clock for bmc.timed_checkpoint on which every training micro-batch takes a minute; ``saves`` records
    the micro-batches of the epoch done at every full checkpoint, whoever writes it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.minutes, self.saves = 0, []
        monkeypatch.setattr(timed_checkpoint, "time", SimpleNamespace(monotonic=lambda: 60.0 * self.minutes))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self.minutes += 1

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self.saves.append(_position(checkpoint)["processed"])


def test_a_timed_checkpoint_waits_for_the_optimizer_step_and_any_checkpoint_restarts_its_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every 3 minutes, a minute per micro-batch, 2 micro-batches per step, and a ModelCheckpoint every 3 steps:
    the 3 minutes are up at step 2 (minute 4: written), and at step 5 (minute 10), the step-3 checkpoint of
    minute 6 having restarted the clock (not at step 4, minute 8). Every checkpoint is written as an optimizer
    step ends (an even count of micro-batches), never inside a window."""
    clock = _MinutePerMicroBatch(monkeypatch)
    checkpoint = tmp_path / "last.ckpt"
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=12, accumulate_grad_batches=2, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[clock, TimedCheckpoint(str(checkpoint), every_minutes=3),
                   ModelCheckpoint(dirpath=tmp_path, filename="every3", every_n_train_steps=3, save_top_k=-1)],
    )  # fmt: skip
    with caplog.at_level("INFO", logger="bmc.timed_checkpoint"):
        trainer.fit(_Recorded())
    timed = [record.args[1] for record in caplog.records if record.name == "bmc.timed_checkpoint"]
    assert timed == [2, 5]
    assert clock.saves == [4, 6, 10, 12] and all(done % 2 == 0 for done in clock.saves)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 5 and saved["optimizer_states"]  # resumable


def test_model_hf_writes_last_ckpt_every_15_minutes_and_the_tiny_default_only_after_validations(make_config) -> None:
    presets = (["callbacks=default"], ["callbacks=default", "model=hf", "model.path=/ckpts/m"])
    timed = [instantiate(make_config(*overrides).callbacks.timed_checkpoint) for overrides in presets]
    assert [callback.every_s for callback in timed] == [None, 15 * 60]
    assert timed[0].checkpoint == timed[1].checkpoint == Path(make_config().paths.output_dir) / "checkpoints/last.ckpt"


def test_ddp_ranks_checkpoint_the_window_start_together_when_one_rank_is_signalled(tmp_path: Path) -> None:
    """Two DDP processes (gloo), 2 micro-batches per step: SIGTERM reaches rank 1 alone, as micro-batch 3 of
    epoch 0 starts. The decision is reduced across the ranks at the end of every micro-batch: both stop there
    and write last.ckpt at the window's start (step 1), and the run resumed with ckpt_path=auto ends with the
    metrics of the uninterrupted DDP run."""
    common = ["debug=default", "callbacks=default", "trainer.max_steps=-1", "trainer.max_epochs=2", "optim.lr=2e-3",
              "optim.warmup_ratio=0", "logger=none", "eval.enabled=false", "trainer=ddp", "trainer.accelerator=cpu",
              "trainer.devices=2", "batch_size=2", "trainer.accumulate_grad_batches=2", "ckpt_path=auto",
              f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    run_cli([*common, f"hydra.run.dir={tmp_path / 'uninterrupted'}"], cwd=tmp_path)
    run_dir = tmp_path / "preempted"
    signal_rank_1 = "+callbacks.signal_at={_target_:tests.doubles.signal_at.SignalAt,epoch:0,batch:2,rank:1}"
    assert start_train([*common, f"hydra.run.dir={run_dir}", signal_rank_1], tmp_path).wait(timeout=300) != 0
    logs = [(run_dir / name).read_text() for name in ("train.log", "train_ddp_process_1.log")]
    assert "received SIGTERM" not in logs[0] and "received SIGTERM" in logs[1]
    assert all("wrote " in log and "at step 1 (the start of its accumulation window" in log for log in logs)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"

    run_cli([*common, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    expected = json.loads((tmp_path / "uninterrupted" / "summary.json").read_text())["metrics"]
    _assert_same_metrics(json.loads((run_dir / "summary.json").read_text()), expected)
