"""The main job, as its stages in order (one module each under :mod:`bmc.stages`):

render the task's data -> warm start (SFT) -> judge (reward model) -> preference pairs -> (evaluation prepared)
-> preference training -> evaluation -> export (and push to the Hub) -> completion (each set of weights once in
the run folder) -> summary.

``train.py`` only composes the Hydra config and calls :func:`run`; ``python -m bmc.synthesize`` runs the data
stages alone.
"""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from bmc.loggers import build_loggers
from bmc.losses import build_objective
from bmc.preemption import handed_back_signals
from bmc.stages.common import container, truncation
from bmc.stages.completion import tidy_checkpoints
from bmc.stages.eval_setup import EvalSetup
from bmc.stages.evaluation import evaluation_kind, prepare_evaluation
from bmc.stages.export import check_push, export_policy, push_to_hub
from bmc.stages.pairs import data_ranking, preference_pairs
from bmc.stages.preference import resume_checkpoint, train_preference
from bmc.stages.reward_model import judge_setup
from bmc.stages.summary import summarized
from bmc.stages.task_data import load_task
from bmc.stages.warm_start import warm_start


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the whole job for a composed config; returns the final metrics (also in ``summary.json``)."""
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    with handed_back_signals(), summarized(cfg) as results:
        ckpt_path = check_config(cfg)
        results.loggers = build_loggers(cfg)
        source = instantiate(cfg.model)
        task_data = load_task(cfg, source)
        policy = warm_start(cfg, task_data, source)
        results.add(policy.metrics)
        judge = judge_setup(cfg, task_data, policy)
        data = preference_pairs(cfg, task_data, policy, judge)
        results.add_data_report(data.report)
        evaluation = prepare_evaluation(EvalSetup(cfg, task_data, policy, judge, data))
        trained = train_preference(cfg, data, policy, results.loggers, ckpt_path)
        results.add(trained.metrics)
        results.reports = trained.is_global_zero
        results.add(evaluation(trained, results.loggers))  # every rank: DDP ranks generate shares of the answers
        if trained.is_global_zero:
            results.exported = export_policy(cfg, trained, policy.tokenizer)
            results.pushed = push_to_hub(cfg, results.exported)
            results.checkpoints = tidy_checkpoints(trained, results.exported is not None, cfg.checkpoint.keep_optimizer)
    return results.metrics


def check_config(cfg: DictConfig) -> str | None:
    """Fail in seconds, before any model is built or data stage runs, on out-of-range loss, weighting,
    regularizer or truncation options, a listwise loss on data without ranked lists, an unknown ``eval.kind``, an
    ``export.push_to_hub`` that cannot upload (no ``HF_TOKEN``) and on a ``ckpt_path`` with no checkpoint; returns
    the checkpoint to resume from."""
    build_objective(container(cfg.loss), container(cfg.token_weighting), container(cfg.regularizer))
    data_ranking(cfg)
    truncation(cfg)
    evaluation_kind(cfg)
    check_push(cfg)
    return resume_checkpoint(cfg)
