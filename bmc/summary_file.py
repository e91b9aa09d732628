"""``summary.json``: what a run produced, in a form later tools read without W&B or network."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

#: the run folder's file of held-out answers, one JSON line per prompt (prompt, response, truncated, score):
#: written by the evaluation stage, bootstrapped by ``bmc.report``
EVAL_ANSWERS = "eval_answers.jsonl"

_PACKAGES = ("bmc", "torch", "transformers", "pytorch-lightning", "hydra-core", "datasets", "wandb")


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_summary(
    output_dir: str | Path,
    *,
    status: str,
    metrics: dict[str, float],
    config: dict[str, Any],
    started: float,
    error: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``summary.json`` atomically (a reader never sees half a file)."""
    summary = {
        "status": status,
        "metrics": dict(sorted(metrics.items())),
        "config": config,
        "wall_time_s": round(time.time() - started, 2),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "error": error,
        **(extra or {}),
    }
    path = Path(output_dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(path)
    return path


def results_table(metrics: dict[str, float], keys: tuple[str, ...]) -> str:
    """A short two-column text table of the headline metrics that exist."""
    rows = [(k, metrics[k]) for k in keys if k in metrics]
    width = max((len(k) for k, _ in rows), default=10)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in rows]
    return "\n".join(lines)
