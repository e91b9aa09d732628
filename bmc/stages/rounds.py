"""Stages 3-7 repeated as online iterative rounds (METHODS.md §7), with ``rounds > 1``: round ``t`` samples
from π_{t−1} (π_0 the warm start) with the configured sampler backend, builds pairs with the configured source
and Bridging, trains π_t from π_{t−1} against the reference ``iterative.reference`` (``previous``: π_{t−1}, as
Self-Rewarding LMs; ``start``: π_0, as Xiong et al.), evaluates and exports π_t to ``rounds/<t>/model``, and
writes ``rounds/<t>/round.json``. Each round has a fresh Trainer: its optimizer and learning-rate schedule start
afresh; it trains on its own pairs unless ``iterative.accumulate_pairs``.

Resumable: a round with ``round.json`` is skipped; the unfinished one (``ckpt_path=last|auto``) resumes from its
``rounds/<t>/checkpoints/last.ckpt``, and its samples, pairs and reference log-probs are cache hits: they are
keyed by the contents of the weights that made them (``rounds/<t-1>/model``), not by the round's number.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bmc.checkpointing import resolve_ckpt_path
from bmc.data.sources import TaskData
from bmc.devices import accelerator_device
from bmc.loggers import log_round
from bmc.stages.completion import tidy_checkpoints
from bmc.stages.evaluation import prepare_evaluation
from bmc.stages.export import export_policy, push_to_hub
from bmc.stages.pairs import preference_pairs
from bmc.stages.preference import train_preference
from bmc.stages.products import EvalSetup, JudgeSetup, PreferencePairs, StartingPolicy
from bmc.stages.round_plan import (
    ROUND_FILE,
    IterativeSettings,
    finished_round,
    round_config,
    round_dir,
    round_task,
    write_round,
)
from bmc.stages.round_server import serving
from bmc.stages.summary import RunResults

log = logging.getLogger(__name__)


def train_in_rounds(
    cfg: DictConfig,
    settings: IterativeSettings,
    task_data: TaskData,
    start: StartingPolicy,
    judge: JudgeSetup,
    results: RunResults,
) -> None:
    """Run the rounds not yet finished; each round's record goes to ``results`` (summary.json's ``rounds``,
    ``round/<t>/*`` metrics, the loggers' round axis), the last round's metrics and export are the run's."""
    earlier_pairs: list[dict[str, Any]] = []
    policy_folder = Path(start.checkpoint)
    for t in range(1, settings.rounds + 1):
        record = finished_round(cfg, t)
        if record is not None:
            log.info("round %d: finished (%s), skipped", t, round_dir(cfg, t) / ROUND_FILE)
        else:
            record = _one_round(cfg, settings, t, policy_folder, task_data, start, judge, results, earlier_pairs)
        if settings.accumulate_pairs:
            earlier_pairs = [*earlier_pairs, *_read_pairs(record["data_report"]["pairs_file"])]
        _report(results, record)
        policy_folder = Path(record["model_dir"])
    results.exported = policy_folder
    results.pushed = push_to_hub(cfg, policy_folder)


def _one_round(
    cfg: DictConfig,
    settings: IterativeSettings,
    t: int,
    policy_folder: Path,
    task_data: TaskData,
    start: StartingPolicy,
    judge: JudgeSetup,
    results: RunResults,
    earlier_pairs: list[dict[str, Any]],
) -> dict[str, Any]:
    rc = round_config(cfg, t, policy_folder)
    policy = load_policy(rc, start, policy_folder)
    backend = rc.data.get("sampler", {}).get("backend")
    base_url = backend.get("base_url") if isinstance(backend, DictConfig) else None
    with serving(settings.serve_command, policy_folder, base_url, settings.serve_timeout_s):
        data = preference_pairs(rc, round_task(task_data, settings, t), policy, judge)
    trained_on = PreferencePairs([*earlier_pairs, *data.pairs], data.report, data.val_pairs)
    # the start's weights for the held-out answers an evaluation prepares (eval=winrate's baseline)
    evaluation = prepare_evaluation(EvalSetup(rc, task_data, start, judge, trained_on))
    reference = start if settings.reference == "start" and t > 1 else None
    reference = reference and load_policy(rc, start, Path(start.checkpoint))  # the start's weights, not trained ones
    resume = resolve_ckpt_path("auto", round_dir(cfg, t) / "checkpoints") if cfg.get("ckpt_path") else None
    log.info("round %d of %d: policy %s, reference %s, %d pairs (%d from earlier rounds)%s", t, settings.rounds,
             policy_folder, (reference or policy).checkpoint, len(trained_on.pairs), len(earlier_pairs),
             f", resuming from {resume}" if resume else "")  # fmt: skip
    trained = train_preference(rc, trained_on, policy, results.loggers, resume, reference=reference)
    metrics = {**trained.metrics, **evaluation(trained, results.loggers)}
    exported = export_policy(rc, trained, policy.tokenizer)
    record = {
        "round": t,
        "policy": str(policy_folder),
        "reference": str((reference or policy).checkpoint),
        "prompts": data.report.get("prompts_in"),
        "data_report": data.report,
        "metrics": metrics,
        "model_dir": str(exported),
        "checkpoints": tidy_checkpoints(trained, True, cfg.checkpoint.keep_optimizer),
    }
    write_round(round_dir(cfg, t), record)
    return record


def load_policy(cfg: DictConfig, start: StartingPolicy, folder: Path) -> StartingPolicy:
    """The weights of ``folder`` (a round's export, or the start's checkpoint), loaded afresh on the training
    device: a round trains its own copy, so the start's stay as they were."""
    model, tokenizer = start.source.load(folder)
    model.to(accelerator_device(cfg.trainer.accelerator))
    return StartingPolicy(start.source, tokenizer, folder, model)


def _read_pairs(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as rows:
        return [json.loads(line) for line in rows]


def _report(results: RunResults, record: dict[str, Any]) -> None:
    t, metrics = record["round"], record["metrics"]
    results.rounds.append(record)
    results.add_data_report(record["data_report"])
    results.add(metrics)
    data = {f"data/{k}": float(v) for k, v in record["data_report"].items() if isinstance(v, (int, float))}
    per_round = {**metrics, **data}
    results.add({f"round/{t}/{k}": v for k, v in per_round.items()})
    log_round(results.loggers, t, per_round)
