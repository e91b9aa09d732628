"""``train.py`` started as a background process, for the tests that kill or signal a run and read its files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, THREADS


def start_train(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``train.py`` with ``args`` (and ``env`` added to the environment) in the background, its output discarded
    (the tests read the run's files). Its processes import ``bmc`` from this checkout: a submitit job, started
    by ``python -m submitit...``, would otherwise import the installed one, which may be another checkout."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env={**os.environ, **THREADS, "WANDB_SILENT": "true", "PYTHONPATH": path, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
