"""The main job, as its stages in order (one module each under :mod:`bmc.stages`):

render the task's data -> warm start (SFT) -> judge (reward model) -> preference pairs -> (evaluation prepared)
-> preference training -> evaluation -> export (and push to the Hub) -> completion (each set of weights once in
the run folder) -> summary; with ``rounds > 1``, pairs to completion once per online round (:mod:`bmc.stages.rounds`).

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
from bmc.stages.evaluation import evaluation_kind, prepare_evaluation
from bmc.stages.export import check_export, check_push, export_policy, push_to_hub
from bmc.stages.pairs import data_ranking, preference_pairs
from bmc.stages.preference import resume_checkpoint, train_preference
from bmc.stages.products import EvalSetup
from bmc.stages.reward_model import judge_options, judge_setup
from bmc.stages.round_plan import IterativeSettings, check_rounds
from bmc.stages.rounds import train_in_rounds
from bmc.stages.summary import summarized
from bmc.stages.task_data import load_task
from bmc.stages.warm_start import warm_start
from bmc.stages.winrate_baseline import check_baseline
from bmc.synthesis.judges import check_judge
from bmc.synthesis.pair_sources import check_data


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the whole job for a composed config; returns the final metrics (also in ``summary.json``)."""
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    with handed_back_signals(), summarized(cfg) as results:
        ckpt_path, rounds = check_config(cfg)
        results.loggers = build_loggers(cfg)
        source = instantiate(cfg.model)
        task_data = load_task(cfg, source)
        policy = warm_start(cfg, task_data, source)
        results.add(policy.metrics)
        judge = judge_setup(cfg, task_data, policy)
        if rounds.rounds > 1:  # online iterative rounds (METHODS.md §7): stages 3-7 once per round
            train_in_rounds(cfg, rounds, task_data, policy, judge, results)
            return results.metrics
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


def check_config(cfg: DictConfig) -> tuple[str | None, IterativeSettings]:
    """Fail in seconds, before any model is built or data stage runs, on every enumerated or cross-field
    setting: unknown kinds and keys and out-of-range options of the loss, weighting, regularizer, judge,
    editor and their chat backends, ``data.pairs``, a listwise loss on data without ranked lists, the sampler
    backend, ``data.bridge``, truncation,
    ``eval.kind`` (and ``eval.baseline`` for a win rate), ``export.which`` (``best`` needs a monitored
    checkpoint), an ``export.push_to_hub`` that cannot upload (no ``HF_TOKEN``), a ``ckpt_path`` with no
    checkpoint and ``rounds`` settings that cannot run; returns the checkpoint to resume from (each round finds
    its own) and the rounds settings."""
    build_objective(container(cfg.loss), container(cfg.token_weighting), container(cfg.regularizer))
    check_judge(judge_options(cfg)[0])
    check_data(container(cfg.data), container(cfg.editor))
    data_ranking(cfg)
    truncation(cfg)
    if evaluation_kind(cfg) == "winrate":
        check_baseline(cfg)
    check_export(cfg)
    check_push(cfg)
    rounds = check_rounds(cfg)
    return (resume_checkpoint(cfg) if rounds.rounds == 1 else None), rounds
