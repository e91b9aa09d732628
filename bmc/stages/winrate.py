"""The ``winrate`` evaluation (``eval=winrate``): the trained policy's greedy answer to each held-out prompt,
compared with a baseline answer by the ``judge`` group's pairwise judge in both orders; win rate, tie rate,
length-controlled win rate and bootstrap intervals by :mod:`bmc.winrate_stats` (the rule and the formulas).

The held-out prompts and the baseline's answers (``eval.baseline``: ``reference``, ``chosen`` or a JSONL file)
come from :mod:`bmc.stages.winrate_baseline`, before training. The judge is built before training too, so that
a setting that cannot work fails in seconds (a local judge model stays loaded meanwhile, on the trainer's
device).

Answers identical to the baseline's are ties without asking the judge: at temperature 0 the two orders of
identical answers are the same request twice, which the both-order rule makes a tie whatever the verdict.

A judge reply without a verdict (or cut off by its token budget) is a tie; when more than
``judge.max_failure_share`` of the replies are, the stage stops with an error that names the judge's backend
and quotes one (:mod:`bmc.synthesis.failures`) instead of reporting a win rate of ties; below it,
``eval/judge_failure_share`` reports their share.

Cached item by item under ``<cache>/winrate`` (:func:`bmc.synthesis.store.resumable_map`), keyed by the
trained weights' contents, the starting checkpoint (the tokenizer), the prompts, the baseline's answers, the
judge config, the answer budget and the trainer's precision, which the answers are generated in
(:mod:`bmc.precision`; a local judge model loads in it unless its ``dtype`` is set): a rerun with the same
policy generates and judges nothing. Every prompt's answers and verdicts go to ``<run>/eval_winrate.jsonl``
and, with the wandb logger, to the table ``eval/winrate_answers``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger, WandbLogger

from bmc.cache import weights_fingerprint
from bmc.data.tokenize import encode_texts
from bmc.devices import accelerator_device
from bmc.generation import generate
from bmc.plugins import EVALUATIONS
from bmc.precision import resolve_precision
from bmc.stages.products import EvalSetup, Evaluation, TrainedPolicy
from bmc.stages.winrate_baseline import answer_budget, baseline_answers, held_out_prompts
from bmc.synthesis._common import ordered_map
from bmc.synthesis.failures import SETTING, ReplyFailures, check_failure_share, split_limit
from bmc.synthesis.judges import Judge, build_judge
from bmc.synthesis.local_models import with_model_dtypes
from bmc.synthesis.model_keys import model_config_key
from bmc.synthesis.store import resumable_map
from bmc.winrate_stats import TIE, both_order_outcome, winrate_summary

#: the run folder's file of judged answers, one JSON line per held-out prompt
EVAL_WINRATE = "eval_winrate.jsonl"
#: the columns of a row (and of the W&B table), in order
COLUMNS = (
    "prompt",
    "policy",
    "baseline",
    "policy_tokens",
    "baseline_tokens",
    "truncated",
    "baseline_truncated",
    "policy_first",
    "baseline_first",
    "outcome",
    "unparseable",
    "judge_truncated",
    "judge_reply",
)


def judge_options(setup: EvalSetup) -> dict[str, Any]:
    """The ``judge`` group's options with the dtype of a model it loads here set by the trainer's precision
    (:func:`bmc.synthesis.local_models.with_model_dtypes`): what the judge is built from and keyed by."""
    return with_model_dtypes(setup.judge.options, resolve_precision(setup.cfg.trainer.precision))


def pairwise_judge(setup: EvalSetup) -> Judge:
    """The ``judge`` group's judge, a model of its own on the trainer's device of this rank; a setting it cannot
    be built with raises naming ``eval=winrate``."""
    options, cfg = judge_options(setup), setup.cfg
    try:
        return build_judge(options, task=setup.task_data.verifier, examples=setup.task_data.eval_examples or None,
                           precision=resolve_precision(cfg.trainer.precision),
                           device=accelerator_device(cfg.trainer.accelerator))  # fmt: skip
    except ValueError as error:
        raise ValueError(
            f"eval=winrate compares answers with the judge group's pairwise judge, and judge={options.get('kind')} "
            f"cannot serve here: {error}. An LLM judge: judge=llm judge.backend.model=<served name>"
        ) from error


def judge_both_orders(judge: Judge, prompt: str, policy: str, baseline: str) -> dict[str, Any]:
    """Both orders' verdicts (from slot A's view) and the outcome, with the judge's replies that gave no verdict
    (``unparseable``, ``judge_truncated``: cut off) and the first of them quoted (``judge_reply``); identical
    answers tie unasked."""
    if policy == baseline:
        return {"policy_first": 0, "baseline_first": 0, "outcome": TIE, **_failure_fields(ReplyFailures())}
    policy_first, baseline_first = judge.prefer_many(prompt, [(policy, baseline), (baseline, policy)])
    return {
        "policy_first": policy_first,
        "baseline_first": baseline_first,
        "outcome": both_order_outcome(policy_first, baseline_first),
        **_failure_fields(judge.take_failures(prompt)),
    }


def _failure_fields(failures: ReplyFailures) -> dict[str, Any]:
    return {
        "unparseable": failures.counts["unparseable"],
        "judge_truncated": failures.counts["truncated"],
        "judge_reply": failures.example,
    }


def judge_failures(rows: list[dict[str, Any]]) -> tuple[ReplyFailures, int]:
    """The judge's replies without a verdict over ``rows`` and how many replies there were (two per prompt
    whose answers differ)."""
    failures = ReplyFailures()
    for row in rows:
        failures.counts.update({"unparseable": row["unparseable"], "truncated": row["judge_truncated"]})
        failures.example = failures.example or row["judge_reply"]
    return failures, 2 * sum(row["policy"] != row["baseline"] for row in rows)


def _metrics(rows: list[dict[str, Any]], cfg: DictConfig, judge_failure_share: float) -> dict[str, float]:
    n = len(rows)
    stats = winrate_summary(
        [r["outcome"] for r in rows],
        [r["policy_tokens"] - r["baseline_tokens"] for r in rows],
        samples=cfg.eval.bootstrap.samples,
        seed=cfg.eval.bootstrap.seed,
    )
    return {
        **stats,
        "num_prompts": float(n),
        "truncated": sum(bool(r["truncated"]) for r in rows) / n,
        "baseline_truncated": sum(bool(r["baseline_truncated"]) for r in rows) / n,
        "identical": sum(r["policy"] == r["baseline"] for r in rows) / n,
        "judge_unparseable": float(sum(r["unparseable"] for r in rows)),
        "judge_truncated": float(sum(r["judge_truncated"] for r in rows)),
        "judge_failure_share": judge_failure_share,
        "policy_tokens": sum(r["policy_tokens"] for r in rows) / n,
        "baseline_tokens": sum(r["baseline_tokens"] for r in rows) / n,
    }


@EVALUATIONS.register("winrate")
def prepare_winrate(setup: EvalSetup) -> Evaluation:
    """Resolve the held-out prompts, the baseline's answers and the judge now (errors before training); the
    returned evaluation answers, judges (or reads the cache), writes the rows and returns ``eval/*``."""
    cfg, tokenizer = setup.cfg, setup.policy.tokenizer
    held_out = held_out_prompts(setup)
    if not held_out:
        raise ValueError(f"eval=winrate: task {setup.task_data.name} has no held-out prompts")
    budget = answer_budget(cfg, tokenizer, held_out)
    baseline = baseline_answers(setup, held_out, budget)
    judge = pairwise_judge(setup)
    # the threshold is no part of the key: changing it re-reads the same verdicts
    max_failure_share, judge_key = split_limit(judge_options(setup), "judge")
    prompts = [h.prompt for h in held_out]
    precision = resolve_precision(cfg.trainer.precision)

    def run(trained: TrainedPolicy, loggers: list[Logger]) -> dict[str, float]:
        if not trained.is_global_zero:  # rank 0 alone: the judge's requests and its cache once
            return {}
        model = trained.model.to(accelerator_device(cfg.trainer.accelerator))  # fit leaves it on the CPU

        def answer_and_judge(batch: list[str], start: int) -> list[dict[str, Any]]:
            outputs = generate(model, tokenizer, batch, budget, batch_size=len(batch), desc="winrate",
                               precision=precision)  # fmt: skip
            theirs = [baseline.answers[p] for p in batch]
            lengths = [len(ids) for ids in encode_texts(tokenizer, [text for text, _ in outputs] + theirs)]
            items = list(zip(batch, [text for text, _ in outputs], theirs))
            judge.prepare([(p, answer) for p, *answers in items for answer in answers])
            verdicts = ordered_map(lambda item: judge_both_orders(judge, *item), items, judge.max_concurrency)
            return [
                {
                    "prompt": p,
                    "policy": text,
                    "baseline": base,
                    "policy_tokens": lengths[i],
                    "baseline_tokens": lengths[len(batch) + i],
                    "truncated": truncated,
                    "baseline_truncated": p in baseline.truncated,
                    **verdict,
                }
                for i, (p, (text, truncated), base, verdict) in enumerate(zip(batch, outputs, theirs, verdicts))
            ]

        payload = {
            "policy": weights_fingerprint(trained.model),
            "start": setup.policy.fingerprint(),
            "baseline": baseline.key(),
            "judge": model_config_key(judge_key, "judge"),
            # rows since then hold the judge's replies without a verdict by reason (a cut-off one is no verdict)
            "entry": "failures",
            "max_new_tokens": budget,
            "batch_size": cfg.eval.batch_size,
            **precision.key_fields(),
        }
        rows = resumable_map(cfg.paths.cache_dir, "winrate", payload, prompts, answer_and_judge, cfg.eval.batch_size)
        failures, replies = judge_failures(rows)
        # before anything is written: a win rate of ties from a judge that gave no verdicts is no result
        share = check_failure_share(failures, replies, max_failure_share, stage="eval=winrate", backend=repr(judge),
                                    what="verdict", setting=f"judge.{SETTING}")  # fmt: skip
        _write_rows(cfg, rows, loggers, trained.trainer.global_step)
        metrics = {f"eval/{k}": v for k, v in _metrics(rows, cfg, share).items()}
        for logger in loggers:
            logger.log_metrics(metrics, step=trained.trainer.global_step)
        return metrics

    return run


def _write_rows(cfg: DictConfig, rows: list[dict[str, Any]], loggers: list[Logger], step: int) -> None:
    """The rows to ``<run>/eval_winrate.jsonl`` and to a W&B table where the wandb logger runs."""
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / EVAL_WINRATE).open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            table = [[row[c] for c in COLUMNS] for row in rows]
            logger.log_table("eval/winrate_answers", columns=list(COLUMNS), data=table, step=step)
