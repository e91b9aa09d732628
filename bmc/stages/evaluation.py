"""Stage 5, evaluation, of the kind ``eval.kind`` names (``conf/eval/``; ``eval.enabled=false`` is ``none``):

- ``verifier``: greedy answers of the trained policy to the task's held-out prompts, scored by its verifier
  (``eval/accuracy``, ``eval/score``, ``eval/truncated``), logged to every logger; each answer and its score
  go to ``<run>/eval_answers.jsonl`` (what ``bmc.report`` bootstraps its intervals over). Not cached: it is
  the run's result. Tasks without a verifier (``task=hf_prefs``) report the validation metrics only.
- ``winrate``: judged win rates against a baseline answer (:mod:`bmc.stages.winrate`).
- ``none``: no evaluation.

Each kind is a function ``(EvalSetup) -> Evaluation`` registered in :data:`bmc.plugins.EVALUATIONS` where it
is defined; it reads its settings from ``cfg.eval``.

An evaluation is prepared before training (:func:`prepare_evaluation`), so that a setting it cannot work with
fails in seconds, and run on the trained policy afterwards, on every rank of a multi-process run: the verifier's
answers are generated in shares across the ranks that hold the whole policy (DDP), the win rate on rank 0.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.data.sources import TaskData
from bmc.distributed import is_global_zero
from bmc.generation import score_summary
from bmc.plugins import EVALUATIONS
from bmc.stages.common import verifier_answers
from bmc.stages.products import EvalSetup, Evaluation, TrainedPolicy
from bmc.summary_file import EVAL_ANSWERS


def evaluate(
    cfg: DictConfig,
    task_data: TaskData,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    loggers: list[Logger],
    step: int,
    across_ranks: bool = False,
) -> dict[str, float]:
    """The verifier's ``eval/*`` metrics of ``model``, also logged at training step ``step``; with
    ``across_ranks``, every process generates its share and rank 0 alone writes, logs and returns them."""
    answers = verifier_answers(cfg, task_data, model, tokenizer, across_ranks)
    if not answers or not is_global_zero(None):
        return {}
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / EVAL_ANSWERS).open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in answers)
    metrics = {f"eval/{k}": v for k, v in score_summary(answers).items()}
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
    return metrics


@EVALUATIONS.register("verifier")
def _verifier(setup: EvalSetup) -> Evaluation:
    def run(trained: TrainedPolicy, loggers: list[Logger]) -> dict[str, float]:
        if not (trained.is_global_zero or trained.on_every_rank):
            return {}
        return evaluate(setup.cfg, setup.task_data, trained.model, setup.policy.tokenizer, loggers,
                        trained.trainer.global_step, across_ranks=trained.on_every_rank)  # fmt: skip

    return run


@EVALUATIONS.register("none")
def _none(setup: EvalSetup) -> Evaluation:
    return lambda trained, loggers: {}


def evaluation_kind(cfg: DictConfig) -> str:
    """``eval.kind``, ``none`` with ``eval.enabled=false``; an unknown kind raises (checked before any stage)."""
    kind = cfg.eval.kind if cfg.eval.enabled else "none"
    EVALUATIONS.entry(kind)
    return kind


def prepare_evaluation(setup: EvalSetup) -> Evaluation:
    """The evaluation of :func:`evaluation_kind`, ready to run after training."""
    return EVALUATIONS.entry(evaluation_kind(setup.cfg)).target(setup)
