"""Stage 3, the preference pairs of ``cfg.data`` (:func:`bmc.synthesis.pair_sources.build_pairs`): the task's own,
sampled from the starting policy, ranked by a judge, and/or bridged by an editor, with the data report.

Samples, judgments and edits are cached item by item under ``<cache>/samples``, ``judgments`` and ``edits``
(:mod:`bmc.synthesis.store`), keyed by their inputs and config, so a killed run resumes where it stopped and
every run and sweep job with the same inputs reuses them. The pairs themselves, with the extra columns of
their rows (ids, scores, ``task_source``), are written to ``<cache>/pairs/<key>/pairs.jsonl``, one entry per
distinct set of pairs, and the data report names that file (``pairs_file``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bmc.cache import cache_key, cached_dir
from bmc.data.sources import TaskData
from bmc.devices import accelerator_device
from bmc.losses import is_listwise
from bmc.precision import resolve_precision
from bmc.stages.common import container
from bmc.stages.products import JudgeSetup, PreferencePairs, StartingPolicy
from bmc.synthesis.pair_sources import SynthesisContext, build_pairs, samples_from_policy

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"


def needs_policy_model(cfg: DictConfig) -> bool:
    """Whether the data stages of ``cfg`` run the starting policy (to sample), so a data-only run must build
    it; a judge that trains a reward model needs the SFT checkpoint too."""
    return samples_from_policy(container(cfg.data)) or bool(cfg.judge.get("train"))


#: the data sources that can rank all their samples (``data.ranking=full``: ranked lists)
RANKING_SOURCES = ("ipr", "rm_score")


def data_ranking(cfg: DictConfig) -> str | None:
    """``data.ranking`` of a source that ranks its samples, resolved: ``null`` is ``full`` (ranked lists) for a
    listwise loss, ``best_worst`` (pairs) otherwise; None for other sources. A listwise loss on data that gives
    pairs is an error naming the loss and the data."""
    source, ranking = cfg.data.get("pairs", "original"), cfg.data.get("ranking")
    listwise = is_listwise(**container(cfg.loss))
    if source in RANKING_SOURCES:
        ranking = ranking or ("full" if listwise else "best_worst")
    elif ranking is not None:
        raise ValueError(f"data.ranking={ranking} applies to data.pairs in {RANKING_SOURCES}, not {source!r}")
    # a dataset of ranked completions read as lists (task.pairing=lists, bmc.data.ranked) gives them as they are
    given_lists = source == "original" and cfg.task.get("pairing") == "lists"
    if listwise and ranking != "full" and not given_lists:
        given = f"pairs={source}" + (f", ranking={ranking}" if ranking else "")
        raise ValueError(
            f"loss={cfg.loss.name} is listwise and trains on ranked lists, but data={cfg.data.name} ({given}) gives "
            f"pairs; use data=ipr or data=rm_score with data.ranking=full (or null), or ranked completions read with "
            f"task.pairing=lists"
        )
    return ranking


def preference_pairs(
    cfg: DictConfig, task_data: TaskData, policy: StartingPolicy, judge: JudgeSetup
) -> PreferencePairs:
    """The pairs of ``cfg.data``; fewer than two is an error that names the data config and the drops."""
    data_cfg = container(cfg.data)
    if ranking := data_ranking(cfg):
        data_cfg["ranking"] = ranking
    context = SynthesisContext(
        data_cfg,
        task_data,
        policy.model,
        policy.tokenizer,
        cfg.paths.cache_dir,
        model_key=policy.fingerprint() if policy.checkpoint is not None else None,
        judge_cfg=judge.options,
        editor_cfg=container(cfg.editor),
        precision=resolve_precision(cfg.trainer.precision),
        device=accelerator_device(cfg.trainer.accelerator),
    )
    pairs, report = build_pairs(context)
    report.update(judge.report)
    loaded = dict(task_data.report)
    report["dropped"] = {**loaded.pop("dropped", {}), **report["dropped"]}
    report.update(loaded)
    # the eval split's pairs validate the task's own pairs; synthesized pairs are validated on their own kind
    val_pairs = task_data.val_pairs if cfg.data.pairs == "original" else []
    if val_pairs:
        report["val_pairs"] = len(val_pairs)
    if len(pairs) < 2:
        raise ValueError(
            f"data={cfg.data.name} (pairs={cfg.data.pairs}) produced {len(pairs)} preference pair(s) from "
            f"{report.get('prompts_in')} prompts; dropped: {report['dropped']}"
        )
    report["pairs_file"] = str(cache_pairs(cfg.paths.cache_dir, pairs))
    log.info("data report: %s", json.dumps(report))
    return PreferencePairs(pairs, report, val_pairs)


def cache_pairs(cache_dir: str | Path, pairs: list[dict[str, Any]]) -> Path:
    """The JSON Lines file of ``pairs`` under ``<cache>/pairs/<key of the pairs>/``, written on first use."""

    def write(folder: Path) -> None:
        with (folder / PAIRS_FILE).open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)

    return cached_dir(cache_dir, "pairs", {"pairs": cache_key(pairs)}, write) / PAIRS_FILE
