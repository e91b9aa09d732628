"""Stage 5, evaluation: greedy answers of the trained policy to the task's held-out prompts, scored by its
verifier (``eval/accuracy``, ``eval/score``, ``eval/truncated``), logged to every logger; each answer and its
score go to ``<run>/eval_answers.jsonl`` (what ``bmc.report`` bootstraps its intervals over). Not cached: it
is the run's result. Tasks without a verifier (``task=hf_prefs``) report the validation metrics only."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.data.sources import TaskData
from bmc.generation import score_summary
from bmc.stages.common import verifier_answers
from bmc.summary import EVAL_ANSWERS


def evaluate(
    cfg: DictConfig,
    task_data: TaskData,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    loggers: list[Logger],
    step: int,
) -> dict[str, float]:
    """The ``eval/*`` metrics of ``model``, also logged at training step ``step``."""
    answers = verifier_answers(cfg, task_data, model, tokenizer)
    if not answers:
        return {}
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / EVAL_ANSWERS).open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in answers)
    metrics = {f"eval/{k}": v for k, v in score_summary(answers).items()}
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
    return metrics
