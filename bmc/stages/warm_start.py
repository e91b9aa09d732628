"""Stage 1, the warm start: the policy the preference stage starts from, which is also its reference.

With ``sft.enabled`` (the default for the tiny model) the model source is fine-tuned on the task's SFT examples;
on tasks with a verifier it stops once greedy accuracy on the SFT validation prompts reaches
``sft.target_accuracy``. Cached: ``<cache>/sft/<key>`` holds the checkpoint (model and tokenizer, loadable with
``from_pretrained``) and ``sft_eval.json`` (its greedy evaluation and where it stopped), keyed by the model spec,
the task config, the rendered SFT data, the SFT, truncation and evaluation settings and the trainer settings
that change what it learns; every later run and sweep job with the same key reuses it. A pretrained checkpoint
with ``sft.enabled=false`` is used as it is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.cache import cache_key, cached_dir
from bmc.callbacks import StopAtAccuracy
from bmc.data.datamodule import SFTDataModule
from bmc.data.sources import TaskData
from bmc.devices import accelerator_device
from bmc.models import ModelSource, PretrainedLM, add_lora
from bmc.module import SFTModule
from bmc.stages.common import (
    container,
    stage_steps,
    stage_trainer,
    stage_trainer_key,
    truncation,
    truncation_key,
    verifier_metrics,
)
from bmc.stages.products import StartingPolicy

log = logging.getLogger(__name__)

#: the keys of ``cfg.eval`` that change the SFT stage (its stopping check and ``sft_eval.json``)
SFT_EVAL_KEYS = ("enabled", "batch_size", "max_new_tokens")


def warm_start(cfg: DictConfig, task_data: TaskData, source: ModelSource) -> StartingPolicy:
    """The (cached) SFT checkpoint of ``source`` on ``task_data``'s rendered SFT examples, loaded."""
    pretrained = isinstance(source, PretrainedLM)
    if pretrained and not cfg.sft.enabled:
        checkpoint = Path(source.path)
    else:
        if pretrained:
            log.warning(
                "sft.enabled=true: the pretrained checkpoint %s is fine-tuned on the task's SFT examples (lr %s, up to "
                "%d steps) before preference training, and that model is the policy and the reference",
                source.path,
                cfg.sft.optim.lr,
                stage_steps(cfg, cfg.sft.steps),
            )
        checkpoint = _sft_checkpoint(cfg, task_data, source)
    model, tokenizer = source.load(checkpoint)
    model.to(accelerator_device(cfg.trainer.accelerator))  # the data stages sample on the training device
    sft_eval = checkpoint / "sft_eval.json"
    metrics = {f"eval/sft_{k}": v for k, v in json.loads(sft_eval.read_text()).items()} if sft_eval.exists() else {}
    return StartingPolicy(source, tokenizer, checkpoint, model, metrics)


def tokenizer_only(task_data: TaskData, source: ModelSource) -> StartingPolicy:
    """The starting policy as data stages that run no model see it (``data=original``): its tokenizer alone,
    the one the warm start would save; nothing is trained or loaded."""
    return StartingPolicy(source, source.tokenizer(task_data.corpus()))


def _sft_checkpoint(cfg: DictConfig, task_data: TaskData, source: ModelSource) -> Path:
    payload = {
        "model": source.spec(),
        "task": container(cfg.task),
        "data": cache_key([task_data.sft_train, task_data.sft_val]),
        "sft": {**container(cfg.sft), "steps": stage_steps(cfg, cfg.sft.steps)},
        "logprob_chunk": cfg.logprob_chunk,
        "truncation": truncation_key(cfg),
        # the evaluation settings the SFT's own check uses, not the kind of the final evaluation: eval=winrate
        # and eval=verifier share one SFT checkpoint
        "eval": {k: cfg.eval.get(k) for k in SFT_EVAL_KEYS},
        "trainer": stage_trainer_key(cfg),
    }

    def build(folder: Path) -> None:
        pl.seed_everything(cfg.sft.seed, workers=True)
        model, tokenizer = source.build(task_data.corpus())
        model = source.prepare_for_training(model)
        trained = add_lora(model, source.lora) if getattr(source, "lora", None) else model
        stage = _fine_tune(cfg, task_data, trained, tokenizer, folder) if cfg.sft.enabled else {"steps": 0}
        model = trained.merge_and_unload() if trained is not model else model
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        evaluation = verifier_metrics(cfg, task_data, model, tokenizer)
        (folder / "sft_eval.json").write_text(json.dumps({**evaluation, **stage}))

    return cached_dir(cfg.paths.cache_dir, "sft", payload, build)


def _fine_tune(
    cfg: DictConfig, task_data: TaskData, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path
) -> dict[str, Any]:
    """SFT of ``model`` in place; returns where it stopped (``steps``, and ``stop_accuracy`` after a check)."""
    data = SFTDataModule(
        train=task_data.sft_train,
        val=task_data.sft_val,
        tokenizer=tokenizer,
        truncation=truncation(cfg),
        batch_size=cfg.sft.batch_size,
        seed=cfg.sft.seed,
    )
    stopper = _sft_stopper(cfg, task_data, tokenizer)
    trainer = stage_trainer(cfg, folder, stage_steps(cfg, cfg.sft.steps), callbacks=[stopper] if stopper else None)
    trainer.fit(SFTModule(model, dict(cfg.sft.optim), cfg.logprob_chunk), datamodule=data)
    stage: dict[str, Any] = {"steps": trainer.global_step}
    if stopper and stopper.history:
        stage["stop_accuracy"] = stopper.history[-1][1]
    if stopper and not stopper.reached:
        log.warning(
            "SFT ran all %d steps without reaching sft.target_accuracy=%s (checks as (step, accuracy): %s); "
            "raise sft.steps or lower the target",
            cfg.sft.steps,
            cfg.sft.target_accuracy,
            stopper.history[-3:],
        )
    return stage


def _sft_stopper(cfg: DictConfig, task_data: TaskData, tokenizer: PreTrainedTokenizerBase) -> StopAtAccuracy | None:
    """The callback that ends SFT at ``sft.target_accuracy`` on the SFT validation prompts (tasks with a
    verifier), or None when no target is set or the task cannot be scored."""
    target = cfg.sft.get("target_accuracy")
    if target is None:
        return None
    if task_data.verifier is None or not task_data.sft_val_examples:
        log.info(
            "sft.target_accuracy=%s ignored: task %s has no verifier; SFT runs %d steps",
            target,
            task_data.name,
            cfg.sft.steps,
        )
        return None
    return StopAtAccuracy(
        task_data.verifier,
        task_data.sft_val_examples,
        tokenizer,
        target=target,
        check_every=cfg.sft.check_every,
        batch_size=cfg.eval.batch_size,
    )
