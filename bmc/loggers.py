"""Experiment loggers. W&B runs offline unless the user opts in, and every run of a sweep is grouped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger


def wandb_mode() -> str:
    """``WANDB_MODE`` if the user set it; online only with an API key in the environment; else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def sweep_group() -> str | None:
    """The multirun's folder name, so all jobs of one sweep share a W&B group."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None


def wandb_logger(
    project: str,
    save_dir: str,
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    tags: list[str] | None = None,
    **kwargs: Any,
) -> WandbLogger:
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        group=group or sweep_group(),
        name=name,
        tags=list(tags or []),
        save_dir=save_dir,
        offline=wandb_mode() == "offline",
        mode=wandb_mode(),
        **kwargs,
    )


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The loggers of ``cfg.logger`` (none for ``logger=none``), each given the resolved config."""
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


def finish_wandb(loggers: list[Logger], summary_path: Path, failed: bool) -> None:
    """Attach ``summary.json`` to the W&B run and end it, also on failure, so that the next multirun job
    starts a separate run."""
    if not any(isinstance(lg, WandbLogger) for lg in loggers):
        return
    import wandb

    if wandb.run is not None:
        shutil.copy(summary_path, Path(wandb.run.dir) / summary_path.name)
        wandb.finish(exit_code=1 if failed else 0)


def log_round(loggers: list[Logger], t: int, metrics: dict[str, float]) -> None:
    """An iterative round's metrics as ``round/*`` with the round as their step: on W&B against a ``round``
    axis (``define_metric``: each round's training restarts Lightning's step at 0), elsewhere at step ``t``."""
    named = {f"round/{k}": v for k, v in metrics.items()}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.define_metric("round")
            logger.experiment.define_metric("round/*", step_metric="round")
            logger.experiment.log({"round": t, **named})
        else:
            logger.log_metrics(named, step=t)
