"""Stage 2, the reward model: the judge the data stages use, with a reward model trained here where the
judge config asks for one (``judge=tiny_rm``, a ``train`` block).

The trained model is the SFT checkpoint with a one-output score head, fitted with the Bradley-Terry loss on
the task's ``reward_pairs`` (prompts disjoint from the preference and evaluation prompts). Cached:
``<cache>/reward_model/<key>`` holds it (loadable with ``from_pretrained``) and ``rm_eval.json`` (pairwise
accuracy on held-out reward pairs), keyed by the SFT checkpoint, the reward pairs, the training options, the
truncation and the trainer settings that change what it learns. Other judges pass through unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bmc.cache import cache_key, cached_dir
from bmc.data.datamodule import PreferenceDataModule
from bmc.data.sources import TaskData, split_pairs
from bmc.reward_module import RewardModule
from bmc.stages.common import container, stage_steps, stage_trainer, stage_trainer_key, truncation, truncation_key
from bmc.stages.products import JudgeSetup, StartingPolicy


def judge_options(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(``cfg.judge`` without its ``train`` block, the block): the block is this stage's, the rest the judge's."""
    judge = container(cfg.judge)
    return judge, judge.pop("train", None)


def judge_setup(cfg: DictConfig, task_data: TaskData, policy: StartingPolicy) -> JudgeSetup:
    """The judge of ``cfg.judge``, training (or reusing from the cache) the reward model it asks for."""
    judge, train = judge_options(cfg)
    if not train:
        return JudgeSetup(judge)
    path = train_reward_model(cfg, task_data, policy, train)
    judge["path"] = str(path)
    return JudgeSetup(judge, {"reward_model_accuracy": json.loads((path / "rm_eval.json").read_text())["accuracy"]})


def train_reward_model(
    cfg: DictConfig, task_data: TaskData, policy: StartingPolicy, options: dict[str, Any]
) -> Path:
    """The cached reward model trained from the starting policy's checkpoint with ``options`` (``judge.train``)."""
    if not task_data.reward_pairs:
        raise ValueError(f"judge.train needs a task with reward pairs (a built-in task); {task_data.name} has none")
    options = {**options, "steps": stage_steps(cfg, options["steps"])}
    payload = {
        "sft": policy.fingerprint(),
        "pairs": cache_key(task_data.reward_pairs),
        "train": options,
        "truncation": truncation_key(cfg),
        "trainer": stage_trainer_key(cfg),
    }

    sft_dir = policy.checkpoint

    def build(folder: Path) -> None:
        pl.seed_everything(options["seed"], workers=True)
        tokenizer = AutoTokenizer.from_pretrained(sft_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            sft_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id
        )
        train, val = split_pairs(task_data.reward_pairs, options["val_fraction"], options["seed"])
        data = PreferenceDataModule(
            train=train,
            val=val,
            tokenizer=tokenizer,
            truncation=truncation(cfg),
            batch_size=options["batch_size"],
            seed=options["seed"],
        )
        module = RewardModule(model, dict(options["optim"]))
        trainer = stage_trainer(cfg, folder, options["steps"], limit_val_batches=1.0)
        trainer.fit(module, datamodule=data)
        accuracy = trainer.validate(module, datamodule=data, verbose=False)[0]["val/accuracy"]
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "rm_eval.json").write_text(json.dumps({"accuracy": accuracy, "val_pairs": len(val)}))

    return cached_dir(cfg.paths.cache_dir, "reward_model", payload, build)
