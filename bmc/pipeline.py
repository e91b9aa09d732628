"""The main job: SFT warm start (cached) -> preference pairs -> preference training -> evaluation -> summary.

``train.py`` only composes the Hydra config and calls :func:`run`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from bmc.cache import cache_key, cached_dir
from bmc.callbacks import StopAtAccuracy
from bmc.checkpointing import resolve_ckpt_path
from bmc.data.datamodule import PreferenceDataModule, SFTDataModule
from bmc.data.hf_prefs import render_pairs
from bmc.data.sources import TaskData, split_pairs
from bmc.data.tokenize import Truncation
from bmc.distributed import check_launch, is_global_zero
from bmc.evaluate import evaluate_generations
from bmc.models import PretrainedLM, add_lora, frozen_copy
from bmc.module import PreferenceModule, RewardModule, SFTModule, build_objective, needs_reference
from bmc.reference import accelerator_device, attach_reference_logps, checkpoint_fingerprint
from bmc.summary import results_table, write_summary
from bmc.synthesis.pipeline import SynthesisContext, build_pairs

log = logging.getLogger(__name__)
# The frozen reference model is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

HEADLINE = (
    "eval/accuracy",
    "eval/score",
    "eval/sft_accuracy",
    "val/rewards/accuracies",
    "val/rewards/margins",
    "val/loss",
)


def _container(cfg: DictConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)


def _truncation(cfg: DictConfig) -> Truncation:
    return Truncation(cfg.truncation.max_length, cfg.truncation.max_prompt_length)


def _evaluate(task_data: TaskData, model: Any, tokenizer: Any, cfg: DictConfig) -> dict[str, float]:
    if task_data.verifier is None or not task_data.eval_examples or not cfg.eval.enabled:
        return {}
    return evaluate_generations(
        task_data.verifier, task_data.eval_examples, model, tokenizer, batch_size=cfg.eval.batch_size
    )


def _stage_trainer(cfg: DictConfig, folder: Path, max_steps: int, **overrides: Any) -> pl.Trainer:
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


def _stage_trainer_key(cfg: DictConfig) -> dict[str, Any]:
    # the trainer settings that change what a stage learns (not its output folder, which differs per run)
    return {k: cfg.trainer.get(k) for k in ("accelerator", "precision", "gradient_clip_val", "accumulate_grad_batches")}


def _sft_stopper(cfg: DictConfig, task_data: TaskData, tokenizer: Any) -> StopAtAccuracy | None:
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


def warm_start(cfg: DictConfig, task_data: TaskData, source: Any) -> Path:
    """The SFT checkpoint (model + tokenizer, loadable with ``from_pretrained``), trained once per
    (model, task, SFT settings) and reused by every later run and sweep job. Its greedy evaluation is
    stored beside it as ``sft_eval.json``."""
    if isinstance(source, PretrainedLM) and not cfg.sft.enabled:
        return Path(source.path)
    payload = {
        "model": source.spec(),
        "task": _container(cfg.task),
        "sft": _container(cfg.sft),
        "truncation": _container(cfg.truncation),
        "eval": _container(cfg.eval),
        "trainer": _stage_trainer_key(cfg),
    }

    def build(folder: Path) -> None:
        pl.seed_everything(cfg.sft.seed, workers=True)
        model, tokenizer = source.build(task_data.corpus())
        trained = add_lora(model, source.lora) if getattr(source, "lora", None) else model
        if cfg.sft.enabled:
            data = SFTDataModule(
                train=task_data.sft_train,
                val=task_data.sft_val,
                tokenizer=tokenizer,
                truncation=_truncation(cfg),
                batch_size=cfg.sft.batch_size,
                seed=cfg.sft.seed,
            )
            stopper = _sft_stopper(cfg, task_data, tokenizer)
            trainer = _stage_trainer(cfg, folder, cfg.sft.steps, callbacks=[stopper] if stopper else None)
            trainer.fit(SFTModule(trained, dict(cfg.sft.optim)), datamodule=data)
            stage = {"steps": trainer.global_step}
            if stopper and stopper.history:
                stage["stop_accuracy"] = stopper.history[-1][1]
            if stopper and not stopper.reached:
                log.warning(
                    "SFT ran all %d steps without reaching sft.target_accuracy=%s (checks as (step, accuracy): "
                    "%s); raise sft.steps or lower the target",
                    cfg.sft.steps,
                    cfg.sft.target_accuracy,
                    stopper.history[-3:],
                )
        else:
            stage = {"steps": 0}
        model = trained.merge_and_unload() if trained is not model else model
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "sft_eval.json").write_text(json.dumps({**_evaluate(task_data, model, tokenizer, cfg), **stage}))

    return cached_dir(cfg.paths.cache_dir, "sft", payload, build)


def train_reward_model(cfg: DictConfig, task_data: TaskData, sft_dir: Path, options: dict[str, Any]) -> Path:
    """A scalar reward model for ``judge=tiny_rm``: the SFT checkpoint with a one-output score head, trained
    with the Bradley-Terry loss on the task's ``reward_pairs`` (prompts disjoint from the preference and
    evaluation prompts). Cached; its pairwise accuracy on held-out reward pairs is stored as ``rm_eval.json``."""
    if not task_data.reward_pairs:
        raise ValueError(f"judge.train needs a task with reward pairs (a built-in task); {task_data.name} has none")
    payload = {
        "sft": str(sft_dir),
        "pairs": cache_key(task_data.reward_pairs),
        "train": options,
        "truncation": _container(cfg.truncation),
        "trainer": _stage_trainer_key(cfg),
    }

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
            truncation=_truncation(cfg),
            batch_size=options["batch_size"],
            seed=options["seed"],
        )
        module = RewardModule(model, dict(options["optim"]))
        trainer = _stage_trainer(cfg, folder, options["steps"], limit_val_batches=1.0)
        trainer.fit(module, datamodule=data)
        accuracy = trainer.validate(module, datamodule=data, verbose=False)[0]["val/accuracy"]
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "rm_eval.json").write_text(json.dumps({"accuracy": accuracy, "val_pairs": len(val)}))

    return cached_dir(cfg.paths.cache_dir, "reward_model", payload, build)


def _judge_config(cfg: DictConfig, task_data: TaskData, sft_dir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """``cfg.judge`` with a ``train`` block replaced by the ``path`` of the reward model it trains, and that
    model's held-out accuracy for the data report."""
    judge = _container(cfg.judge)
    if not judge.get("train"):
        return judge, {}
    path = train_reward_model(cfg, task_data, sft_dir, judge.pop("train"))
    judge["path"] = str(path)
    return judge, {"reward_model_accuracy": json.loads((path / "rm_eval.json").read_text())["accuracy"]}


def _loggers(cfg: DictConfig) -> list[Logger]:
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    for logger in loggers:
        logger.log_hyperparams(_container(cfg))
    return loggers


def _finish_wandb(loggers: list[Logger], summary_path: Path, failed: bool) -> None:
    """Attach ``summary.json`` to the W&B run and end it, also on failure, so that the next multirun job
    starts a separate run."""
    if not any(isinstance(lg, WandbLogger) for lg in loggers):
        return
    import wandb

    if wandb.run is not None:
        shutil.copy(summary_path, Path(wandb.run.dir) / summary_path.name)
        wandb.finish(exit_code=1 if failed else 0)


@dataclass
class PreparedData:
    """The data stages' products: the SFT policy (not yet trained further) and the preference pairs."""

    task_data: TaskData
    source: Any
    sft_dir: Path
    policy: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    pairs: list[dict[str, str]]
    report: dict[str, Any]
    sft_metrics: dict[str, float]


def prepare_data(cfg: DictConfig) -> PreparedData:
    """Task data -> SFT warm start (cached) -> preference pairs of ``data`` (synthesis stages cached)."""
    task_data: TaskData = instantiate(cfg.task)
    source = instantiate(cfg.model)
    sft_dir = warm_start(cfg, task_data, source)
    sft_eval = sft_dir / "sft_eval.json"
    sft_metrics = {f"eval/sft_{k}": v for k, v in json.loads(sft_eval.read_text()).items()} if sft_eval.exists() else {}
    policy, tokenizer = source.load(sft_dir)
    task_data.pairs = render_pairs(task_data.pairs, tokenizer if getattr(source, "use_chat_template", False) else None)
    judge_cfg, judge_report = _judge_config(cfg, task_data, sft_dir)
    context = SynthesisContext(
        _container(cfg.data),
        task_data,
        policy,
        tokenizer,
        cfg.paths.cache_dir,
        model_key=str(sft_dir),
        judge_cfg=judge_cfg,
        editor_cfg=_container(cfg.editor),
    )
    pairs, report = build_pairs(context)
    report.update(judge_report)
    log.info("data report: %s", json.dumps(report))
    if len(pairs) < 2:
        raise ValueError(
            f"data={cfg.data.name} (pairs={cfg.data.pairs}) produced {len(pairs)} preference pair(s) from "
            f"{report.get('prompts_in')} prompts; dropped: {report['dropped']}"
        )
    return PreparedData(task_data, source, sft_dir, policy, tokenizer, pairs, report, sft_metrics)


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the whole job for a composed config; returns the final metrics (also in ``summary.json``)."""
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    essentials = {
        k: _container(cfg[k])
        for k in ("task", "data", "judge", "editor", "loss", "token_weighting", "regularizer", "model", "optim", "sft")
    }
    essentials["seed"] = cfg.seed
    loggers: list[Logger] = []
    trainer: pl.Trainer | None = None
    metrics: dict[str, float] = {}
    data_report: dict[str, Any] = {}
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    try:
        # out-of-range loss, weighting, regularizer or truncation options and a wrong ckpt_path fail in
        # seconds, before any model is built or data stage runs
        build_objective(_container(cfg.loss), _container(cfg.token_weighting), _container(cfg.regularizer))
        _truncation(cfg)
        checkpoint_dir = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath") or output_dir / "checkpoints"
        ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), checkpoint_dir)
        loggers = _loggers(cfg)
        data = prepare_data(cfg)
        data_report = data.report
        metrics.update(data.sft_metrics)
        metrics.update({f"data/{k}": float(v) for k, v in data.report.items() if isinstance(v, (int, float))})
        policy, tokenizer = data.policy, data.tokenizer
        pl.seed_everything(cfg.seed, workers=True)
        reference = None
        lora = getattr(data.source, "lora", None)
        if lora:
            policy = add_lora(policy, lora)  # in-step, the reference is the adapter-disabled policy
        reference_based = needs_reference(_container(cfg.loss), _container(cfg.regularizer))
        precompute = reference_based and cfg.reference.precompute
        if reference_based and not precompute and not lora:
            reference = frozen_copy(policy)

        pairs = data.pairs
        train_pairs, val_pairs = split_pairs(pairs, cfg.data.val_fraction, cfg.task.get("seed", 0))
        datamodule = PreferenceDataModule(
            train=train_pairs,
            val=val_pairs,
            masks=_container(cfg.data.masks),
            length_grouping=cfg.length_grouping,
            tokenizer=tokenizer,
            truncation=_truncation(cfg),
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        if precompute:  # the policy still holds the reference (SFT) weights: no copy is built
            datamodule.setup("fit")
            attach_reference_logps(
                datamodule,
                policy,
                cfg.paths.cache_dir,
                model_key={"checkpoint": checkpoint_fingerprint(data.sft_dir), "spec": data.source.spec()},
                precision=str(cfg.trainer.precision),
                device=accelerator_device(cfg.trainer.accelerator),
                batch_size=cfg.reference.batch_size,
            )
        module = PreferenceModule(
            policy,
            reference,
            loss=_container(cfg.loss),
            token_weighting=_container(cfg.token_weighting),
            regularizer=_container(cfg.regularizer),
            optim=_container(cfg.optim),
            share_prompt=cfg.share_prompt,
        )
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
        trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        check_launch(trainer)
        # weights_only: a checkpoint is tensors and plain containers, never code to unpickle
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.interrupted:  # Lightning swallows Ctrl-C; the run must not be reported as completed
            raise KeyboardInterrupt("training was interrupted")
        # max_steps can end training between two validations: report the metrics of the final policy
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        metrics["train/steps"] = float(trainer.global_step)
        metrics["data/train_pairs"] = float(len(train_pairs))
        metrics["data/truncated_pairs"] = float(sum(datamodule.truncated_rows.values()))

        if not is_global_zero(trainer):
            log.info("rank %d of %d: training done; rank 0 evaluates and writes summary.json",
                     trainer.global_rank, trainer.world_size)  # fmt: skip
            return metrics
        evaluation = {f"eval/{k}": v for k, v in _evaluate(data.task_data, module.policy, tokenizer, cfg).items()}
        metrics.update(evaluation)
        for logger in loggers:
            logger.log_metrics(evaluation, step=trainer.global_step)
    except BaseException as error:
        if not is_global_zero(trainer):
            raise
        summary = write_summary(
            output_dir,
            status="failed",
            metrics=metrics,
            config=essentials,
            started=started,
            error=f"{type(error).__name__}: {error}",
            extra={"data_report": data_report},
        )
        _finish_wandb(loggers, summary, failed=True)
        raise
    summary = write_summary(
        output_dir,
        status="completed",
        metrics=metrics,
        config=essentials,
        started=started,
        extra={"data_report": data_report},
    )
    _finish_wandb(loggers, summary, failed=False)
    print(
        f"\nResults ({cfg.task.name}, data={cfg.data.name}, loss={cfg.loss.name}, "
        f"token_weighting={cfg.token_weighting.name}, regularizer={cfg.regularizer.name}, seed={cfg.seed})"
    )
    print(results_table(metrics, HEADLINE))
    print(f"summary: {summary}")
    return metrics
