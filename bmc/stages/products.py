"""What the stages hand each other: each stage's product, in one module that the stages depend on instead of on
one another. In the order the pipeline (:mod:`bmc.pipeline`) makes them:

:class:`StartingPolicy` (warm start) -> :class:`JudgeSetup` (judge) -> :class:`PreferencePairs` (pairs) ->
:data:`Evaluation`, prepared from an :class:`EvalSetup` -> :class:`TrainedPolicy` (preference training) ->
:class:`HubPush` (export).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.cache import checkpoint_fingerprint
from bmc.data.sources import TaskData, split_pairs
from bmc.models import ModelSource


@dataclass
class StartingPolicy:
    """The warm start's product. ``checkpoint`` is the folder the model was loaded from (None when a data-only
    run needed its tokenizer alone, :func:`bmc.stages.warm_start.tokenizer_only`); ``metrics`` are the SFT
    model's ``eval/sft_*``."""

    source: ModelSource
    tokenizer: PreTrainedTokenizerBase
    checkpoint: Path | None = None
    model: PreTrainedModel | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the starting policy in the cache keys of later stages (samples, judgments of a
        reward model trained from it, reference log-probs): the checkpoint's files, not its path alone, so a
        checkpoint rewritten in place is a new key."""
        revision = getattr(self.source, "revision", None)  # a hub id's branch, tag or commit
        return {"checkpoint": checkpoint_fingerprint(self.checkpoint, revision), "spec": self.source.spec()}


@dataclass
class JudgeSetup:
    """``options``: ``cfg.judge`` as the data stages build the judge from, with a ``train`` block replaced by
    the ``path`` of the reward model it trained; ``report``: that model's held-out accuracy, for the data
    report."""

    options: dict[str, Any]
    report: dict[str, float] = field(default_factory=dict)


@dataclass
class PreferencePairs:
    """``pairs``: ``{prompt, chosen, rejected}`` texts (and the extra columns of the task's rows); ``report``:
    what METHODS.md asks of every synthesized dataset (pairs in and out, drops by reason, judge and editor
    calls, edit distances, verifier acceptance) and what loading the task found. ``val_pairs``: the validation
    pairs where the task gives them (the eval split of ``data=original``), else empty: held out of ``pairs``."""

    pairs: list[dict[str, Any]]
    report: dict[str, Any]
    val_pairs: list[dict[str, Any]] = field(default_factory=list)


def train_val_pairs(cfg: DictConfig, data: PreferencePairs) -> tuple[list, list]:
    """The preference stage's training and validation pairs: the data's own ``val_pairs`` (a dataset's eval
    split), else ``data.val_fraction`` held out by prompt. The validation prompts are also the held-out prompts
    of an evaluation on a dataset without an eval split."""
    if data.val_pairs:
        return data.pairs, data.val_pairs
    return split_pairs(data.pairs, cfg.data.val_fraction, cfg.task.get("seed", 0))


@dataclass
class TrainedPolicy:
    """The preference stage's product: the trained ``model`` (the policy, LoRA-wrapped where trained so), the
    final ``val/*`` and ``train/steps`` metrics, and the Trainer (its rank says who reports).

    ``on_every_rank``: every process holds the whole policy (one process, DDP), so the stages after training
    may split work across the ranks. Under FSDP on several devices it is False, and ``model`` is, on rank 0,
    a plain copy with the gathered weights (:func:`bmc.stages.preference.train_preference`)."""

    model: PreTrainedModel
    metrics: dict[str, float]
    trainer: pl.Trainer
    on_every_rank: bool = True

    @property
    def is_global_zero(self) -> bool:
        return self.trainer.is_global_zero


#: a prepared evaluation: the ``eval/*`` metrics of the trained policy, also logged to the loggers
Evaluation = Callable[[TrainedPolicy, list[Logger]], dict[str, float]]


@dataclass
class EvalSetup:
    """What an evaluation may draw on before training: the config, the task's data, the starting policy (the
    reference), the judge and the preference pairs (whose validation prompts are a dataset's held-out ones)."""

    cfg: DictConfig
    task_data: TaskData
    policy: StartingPolicy
    judge: JudgeSetup
    pairs: PreferencePairs


@dataclass(frozen=True)
class HubPush:
    """Where ``export.push_to_hub`` put the exported folder: the repo and the commit it made."""

    repo_id: str
    commit: str
    commit_url: str

    def summary(self) -> dict[str, str]:
        """Its ``summary.json`` entries."""
        return {
            "export/hub_repo": self.repo_id,
            "export/hub_commit": self.commit,
            "export/hub_commit_url": self.commit_url,
        }
