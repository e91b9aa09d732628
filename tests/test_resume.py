"""Crash and resume: atomic checkpoint writes, ``ckpt_path`` resolution, and a run killed by a real signal
that, resumed, ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.demos.boring_classes import BoringModel

from bmc.checkpointing import AtomicCheckpointIO, resolve_ckpt_path
from bmc.pipeline import run
from bmc.preemption import Preempted, PreemptionCheckpoint, handed_back_signals
from tests.conftest import ROOT, THREADS, run_cli

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


def test_resuming_a_run_without_checkpoints_fails_before_the_data_stages(make_config) -> None:
    cfg = make_config(*RESUMABLE, "ckpt_path=last")
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no checkpoint"):
        run(cfg)
    assert not Path(cfg.paths.cache_dir).exists()  # no SFT, no sampling: the error comes first
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["status"] == "failed" and "ckpt_path=last" in summary["error"]


def _start_train(args: list[str], cwd: Path) -> subprocess.Popen:
    """``train.py`` with ``args`` in the background, its output discarded (the tests read the run's files)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env={**os.environ, **THREADS, "WANDB_SILENT": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_at_first_checkpoint(args: list[str], run_dir: Path, cwd: Path) -> dict:
    """Start ``train.py`` in ``run_dir``, SIGKILL it as soon as ``last.ckpt`` is in place, and return that
    checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = _start_train([*args, f"hydra.run.dir={run_dir}"], cwd)
    try:
        while not last.exists() and proc.poll() is None:
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
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


def test_a_preempted_run_saves_at_the_next_step_and_resumes_with_ckpt_path_auto_to_the_same_final_metrics(
    tmp_path: Path, shared_cache: Path, uninterrupted: dict[str, float]
) -> None:
    """SIGTERM (SLURM's preemption signal) as soon as training has started, with no periodic checkpoints: the
    run writes last.ckpt at the next optimizer step, says `preempted`, and ends by the signal (no handler was
    there before training). The same command with ckpt_path=auto ends where the uninterrupted run ends; on a
    folder without a checkpoint, ckpt_path=auto starts afresh."""
    args = [*RESUMABLE, "logger=none", f"paths.cache_dir={shared_cache}", "ckpt_path=auto"]
    run_dir = tmp_path / "preempted"
    proc = _start_train([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    log_file = run_dir / "train.log"
    try:
        while proc.poll() is None and "preemption (pid" not in (log_file.read_text() if log_file.exists() else ""):
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before training started"
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGTERM
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and "preempted by SIGTERM" in summary["error"]
    assert "ckpt_path=auto" in summary["error"]
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 1 <= saved["global_step"] < uninterrupted["train/steps"]
    assert "ckpt_path=auto: no " in log_file.read_text()  # the first start found no checkpoint

    output = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert "ckpt_path=auto: resuming from" in output
    _assert_same_metrics(json.loads((run_dir / "summary.json").read_text()), uninterrupted)


def test_a_job_preempted_under_the_submitit_launcher_is_requeued_and_resumes_to_the_same_final_metrics(
    tmp_path: Path, shared_cache: Path, uninterrupted: dict[str, float]
) -> None:
    """The submitit launcher, run locally (hydra/launcher=submitit_local): SIGUSR2, submitit's preemption signal,
    to the training job. The job writes last.ckpt at the next optimizer step and hands the signal to submitit,
    which checkpoints the submission and requeues it; the requeued job (ckpt_path=auto) resumes from that
    checkpoint and ends with the uninterrupted run's metrics."""
    sweep = tmp_path / "sweep"
    args = ["-m", *RESUMABLE, "logger=none", f"paths.cache_dir={shared_cache}", "ckpt_path=auto",
            "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=job"]  # fmt: skip
    proc = _start_train(args, tmp_path)
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


@pytest.mark.parametrize("exits", [False, True], ids=["handler-returns", "handler-exits"])
def test_a_preemption_signal_waits_for_the_optimizer_step_then_the_handler_from_before_decides(
    exits: bool, tmp_path: Path
) -> None:
    """SIGUSR2 at the first batch of an accumulation pair: the checkpoint is written after the pair's optimizer
    step (step 2), not inside it, and the handler installed before training gets the signal once. One that
    returns (submitit's SIGTERM handler only logs) lets training go on to its end (step 4); one that exits
    (submitit's requeue, sys.exit(144)) stops the run, and the process leaves with that exit."""
    received: list[int] = []

    def previous(signum: int, frame: object) -> None:
        received.append(signum)
        if exits:
            sys.exit(144)

    class SignalAtThirdBatch(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
            if batch_idx == 2 and trainer.current_epoch == 0:
                os.kill(os.getpid(), signal.SIGUSR2)

    checkpoint = tmp_path / "last.ckpt"
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=8, accumulate_grad_batches=2, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[SignalAtThirdBatch(), PreemptionCheckpoint(str(checkpoint))],
    )  # fmt: skip
    before = signal.signal(signal.SIGUSR2, previous)
    try:
        if exits:
            with pytest.raises(SystemExit) as stop, handed_back_signals():
                trainer.fit(BoringModel())
            assert stop.value.code == 144 and not isinstance(stop.value, Preempted)
            assert isinstance(stop.value.__context__, Preempted) and stop.value.__context__.step == 2
        else:
            with handed_back_signals():
                trainer.fit(BoringModel())
            assert trainer.global_step == 4
        assert signal.getsignal(signal.SIGUSR2) is previous
    finally:
        signal.signal(signal.SIGUSR2, before)
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == 2
    assert received == [signal.SIGUSR2]
