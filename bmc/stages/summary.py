"""The last stage, the summary: ``summary.json`` in the run folder (status, metrics, the essential config with
the preset chosen in each config group, the data report, the exported model's folder, the Hub repo and commit
``export.push_to_hub`` made, what completion kept of each checkpoint, versions), attached to the W&B run, and
the headline metrics printed. Written when the run ends (completed, preempted or failed), by rank 0 only."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger

from bmc.distributed import is_global_zero
from bmc.loggers import finish_wandb
from bmc.preemption import Preempted
from bmc.stages.common import container
from bmc.stages.products import HubPush
from bmc.summary_file import results_table, write_summary

#: the config groups whose chosen preset summary.json records, and the config nodes it keeps
PRESET_GROUPS = ("task", "data", "judge", "editor", "loss", "token_weighting", "regularizer", "model", "eval")
ESSENTIALS = (*PRESET_GROUPS, "optim", "sft")
HEADLINE = (
    "eval/accuracy",
    "eval/score",
    "eval/sft_accuracy",
    "eval/winrate",
    "eval/winrate_lc",
    "eval/winrate_lc_phi",
    "eval/winrate_lc_extrapolated",
    "eval/tie_rate",
    "val/rewards/accuracies",
    "val/rewards/margins",
    "val/loss",
)


@dataclass
class RunResults:
    """What the run has produced so far. ``reports`` is False on the ranks other than 0 of a multi-process
    run (known from the launcher's environment at first, from the Trainer after training)."""

    metrics: dict[str, float] = field(default_factory=dict)
    data_report: dict[str, Any] = field(default_factory=dict)
    loggers: list[Logger] = field(default_factory=list)
    reports: bool = field(default_factory=lambda: is_global_zero(None))
    exported: Path | None = None
    pushed: HubPush | None = None
    checkpoints: dict[str, str] = field(default_factory=dict)  # what completion made of each checkpoint
    rounds: list[dict[str, Any]] = field(default_factory=list)  # each iterative round's record (bmc.stages.rounds)

    def add(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)

    def add_data_report(self, report: dict[str, Any]) -> None:
        """The data stages' report, kept whole and with its numbers as ``data/*`` metrics."""
        self.data_report = report
        self.add({f"data/{k}": float(v) for k, v in report.items() if isinstance(v, (int, float))})


def preset_names() -> dict[str, str]:
    """The preset chosen in each config group (``loss=bmc`` -> ``{"loss": "bmc"}``; a group's ``name`` field
    names what runs, which for ``loss=bmc`` is the DPO loss), when Hydra composed the config."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    groups = (*PRESET_GROUPS, "method", "experiment")
    return {group: str(choices[group]) for group in groups if choices.get(group) is not None}


@contextmanager
def summarized(cfg: DictConfig) -> Iterator[RunResults]:
    """Collect the run's results in the block; write ``summary.json`` when it ends: ``preempted`` (with where
    its checkpoint is) if a preemption signal stopped it, ``failed`` with the error if it raised (either is
    raised on), else ``completed``, and print the headline table."""
    started = time.time()
    config = {key: container(cfg[key]) for key in ESSENTIALS}
    config["seed"] = cfg.seed
    config["rounds"] = cfg.get("rounds", 1)
    config["iterative"] = container(cfg.iterative) if cfg.get("iterative") else None
    config["presets"] = preset_names()
    results = RunResults()

    def write(status: str, error: str | None = None) -> Path:
        path = write_summary(
            cfg.paths.output_dir,
            status=status,
            metrics=results.metrics,
            config=config,
            started=started,
            error=error,
            extra={
                "data_report": results.data_report,
                "model_dir": results.exported and str(results.exported),
                "checkpoints": results.checkpoints,
                **(results.pushed.summary() if results.pushed else {}),
                **({"rounds": results.rounds} if results.rounds else {}),
            },
        )
        finish_wandb(results.loggers, path, failed=status != "completed")
        return path

    try:
        yield results
    except Preempted as stop:
        if results.reports:
            write("preempted", str(stop))
        raise
    except BaseException as error:
        if results.reports:
            write("failed", f"{type(error).__name__}: {error}")
        raise
    if not results.reports:
        return
    path = write("completed")
    presets = config["presets"]
    print(
        f"\nResults ({cfg.task.name}, data={cfg.data.name}, loss={presets.get('loss', cfg.loss.name)}, "
        f"token_weighting={cfg.token_weighting.name}, regularizer={cfg.regularizer.name}, seed={cfg.seed})"
    )
    print(results_table(results.metrics, HEADLINE))
    print(f"summary: {path}")
