"""``train.py`` started as a background process, for the tests that kill or signal a run and read its files."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, THREADS


def start_train(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, new_session: bool = False
) -> subprocess.Popen:
    """``train.py`` with ``args`` (and ``env`` added to the environment) in the background, its output discarded
    (the tests read the run's files). Its processes import ``bmc`` from this checkout: a submitit job, started
    by ``python -m submitit...``, would otherwise import the installed one, which may be another checkout.
    ``new_session``: in a process group of its own, which the ranks it starts join."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env={**os.environ, **THREADS, "WANDB_SILENT": "true", "PYTHONPATH": path, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=new_session,
    )


def kill_once_written(args: list[str], path: Path, cwd: Path, timeout_s: float | None = None) -> None:
    """Start ``train.py`` with ``args`` and SIGKILL it, with every rank it started, as soon as ``path`` exists
    (or after ``timeout_s``); the run must not have ended by itself first."""
    proc = start_train(args, cwd, new_session=True)
    deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
    try:
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone when the run ended by itself
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before {path} was written"
