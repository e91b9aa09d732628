"""Stage 5, evaluation: greedy answers of the trained policy to the task's held-out prompts, scored by its
verifier (``eval/accuracy``, ``eval/score``, ``eval/truncated``), logged to every logger. Not cached: it is
the run's result. Tasks without a verifier (``task=hf_prefs``) report the validation metrics only."""

from __future__ import annotations

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.data.sources import TaskData
from bmc.stages.common import verifier_metrics


def evaluate(
    cfg: DictConfig,
    task_data: TaskData,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    loggers: list[Logger],
    step: int,
) -> dict[str, float]:
    """The ``eval/*`` metrics of ``model``, also logged at training step ``step``."""
    metrics = {f"eval/{k}": v for k, v in verifier_metrics(cfg, task_data, model, tokenizer).items()}
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
    return metrics
