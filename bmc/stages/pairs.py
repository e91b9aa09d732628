"""Stage 3, the preference pairs of ``cfg.data`` (:func:`bmc.synthesis.pipeline.build_pairs`): the task's own,
sampled from the starting policy, ranked by a judge, and/or bridged by an editor, with the data report.

Samples, judgments and edits are cached item by item under ``<cache>/samples``, ``judgments`` and ``edits``
(:mod:`bmc.synthesis.store`), keyed by their inputs and config, so a killed run resumes where it stopped and
every run and sweep job with the same inputs reuses them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from bmc.data.sources import TaskData
from bmc.stages.common import container
from bmc.stages.reward_model import JudgeSetup
from bmc.stages.warm_start import StartingPolicy
from bmc.synthesis.pipeline import SynthesisContext, build_pairs, samples_from_policy

log = logging.getLogger(__name__)


@dataclass
class PreferencePairs:
    """``pairs``: ``{prompt, chosen, rejected}`` texts; ``report``: what METHODS.md asks of every synthesized
    dataset (pairs in and out, drops by reason, judge and editor calls, edit distances, verifier acceptance)."""

    pairs: list[dict[str, str]]
    report: dict[str, Any]


def needs_policy_model(cfg: DictConfig) -> bool:
    """Whether the data stages of ``cfg`` run the starting policy (to sample), so a data-only run must build
    it; a judge that trains a reward model needs the SFT checkpoint too."""
    return samples_from_policy(container(cfg.data)) or bool(cfg.judge.get("train"))


def preference_pairs(
    cfg: DictConfig, task_data: TaskData, policy: StartingPolicy, judge: JudgeSetup
) -> PreferencePairs:
    """The pairs of ``cfg.data``; fewer than two is an error that names the data config and the drops."""
    context = SynthesisContext(
        container(cfg.data),
        task_data,
        policy.model,
        policy.tokenizer,
        cfg.paths.cache_dir,
        model_key=policy.fingerprint() if policy.checkpoint is not None else None,
        judge_cfg=judge.options,
        editor_cfg=container(cfg.editor),
    )
    pairs, report = build_pairs(context)
    report.update(judge.report)
    log.info("data report: %s", json.dumps(report))
    if len(pairs) < 2:
        raise ValueError(
            f"data={cfg.data.name} (pairs={cfg.data.pairs}) produced {len(pairs)} preference pair(s) from "
            f"{report.get('prompts_in')} prompts; dropped: {report['dropped']}"
        )
    return PreferencePairs(pairs, report)
