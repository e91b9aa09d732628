"""Small helpers the stages share: config nodes as plain containers, the truncation rule, the Trainer of a
cached training stage, and verifier scoring of greedy answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.data.sources import TaskData
from bmc.data.tokenize import TRUNCATION_RULE, Truncation
from bmc.devices import accelerator_device
from bmc.distributed import split_across_ranks
from bmc.generation import answer_and_score, generation_budget, score_summary
from bmc.precision import resolve_precision


def container(node: DictConfig) -> Any:
    """A config node as plain dicts and lists, interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True)


def truncation(cfg: DictConfig) -> Truncation:
    """The truncation rule of ``cfg.truncation`` (raises on out-of-range lengths)."""
    return Truncation(cfg.truncation.max_length, cfg.truncation.max_prompt_length)


def truncation_key(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.truncation`` and the rule's revision, for the cache key of a stage that trains on cut rows."""
    return {**container(cfg.truncation), "rule": TRUNCATION_RULE}


def stage_trainer(cfg: DictConfig, folder: Path, max_steps: int, **overrides: Any) -> pl.Trainer:
    """The Trainer of a cached training stage (SFT, reward model): ``max_steps`` steps, no validation, no
    logger or checkpoints unless ``overrides`` say otherwise. One process: the ranks of a multi-process run
    wait on the cache lock while the first builds the stage."""
    settings = dict(
        strategy="auto",
        devices=1,
        num_nodes=1,
        max_steps=max_steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        callbacks=None,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(folder),
    )
    return instantiate(cfg.trainer, **{**settings, **overrides})


def stage_steps(cfg: DictConfig, steps: int) -> int:
    """A cached training stage's step budget: ``steps``, capped by ``stage_max_steps`` when a preset sets it
    (``debug=default``: every stage in seconds)."""
    cap = cfg.get("stage_max_steps")
    return steps if cap is None else min(steps, cap)


def stage_trainer_key(cfg: DictConfig) -> dict[str, Any]:
    """The trainer settings that change what a cached stage learns (not its output folder, which differs per
    run), for the stage's cache key."""
    return {k: cfg.trainer.get(k) for k in ("accelerator", "precision", "gradient_clip_val", "accumulate_grad_batches")}


def verifier_answers(
    cfg: DictConfig,
    task_data: TaskData,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    across_ranks: bool = False,
) -> list[dict[str, Any]]:
    """Greedy answers to the task's held-out prompts with their verifier scores (:func:`answer_and_score`), on
    the training device in the trainer's precision; empty for tasks without a verifier or with
    ``eval.enabled=false``. ``across_ranks``: every process of a multi-process run generates its share of the
    batches, and every one gets all answers (:func:`bmc.distributed.split_across_ranks`)."""
    examples = task_data.eval_examples
    if task_data.verifier is None or not examples or not cfg.eval.enabled:
        return []
    model.to(accelerator_device(cfg.trainer.accelerator))  # Lightning moves a model back to the CPU after fit
    # one budget for all shares: each share's own longest gold response would truncate differently
    budget = cfg.eval.get("max_new_tokens") or generation_budget(tokenizer, examples)
    precision = resolve_precision(cfg.trainer.precision)

    def answer(share: list) -> list[dict[str, Any]]:
        return answer_and_score(task_data.verifier, share, model, tokenizer, batch_size=cfg.eval.batch_size,
                                max_new_tokens=budget, precision=precision)  # fmt: skip

    return split_across_ranks(examples, answer, block=cfg.eval.batch_size) if across_ranks else answer(examples)


def verifier_metrics(
    cfg: DictConfig, task_data: TaskData, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> dict[str, float]:
    """Accuracy, score and truncation of :func:`verifier_answers` (empty when there are none)."""
    answers = verifier_answers(cfg, task_data, model, tokenizer)
    return score_summary(answers) if answers else {}
