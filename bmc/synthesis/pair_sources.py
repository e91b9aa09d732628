"""Builds a run's preference pairs from ``conf/data/*.yaml`` (METHODS.md 1.1 and 2.1).

``data.pairs`` names where the pairs come from, a function ``(SynthesisContext) -> pairs`` registered in
:data:`bmc.plugins.PAIR_SOURCES`:
- ``original``: the task's given pairs;
- ``sampled``: the BMC paper's QA/math setup: chosen = the gold response, rejected = a wrong completion
  sampled from the SFT policy (the first of N that the verifier rejects; prompts without one are dropped);
- ``ipr``: N completions per prompt sampled from the SFT policy, ranked by a pairwise judge with
  iterative pairwise ranking (chosen = best, rejected = worst);
- ``rm_score``: the same completions, chosen/rejected = max/min of a scalar reward model's score.
With ``data.ranking=full`` these two give ranked lists of all the samples instead (:mod:`bmc.synthesis.ranked_lists`).
``data.bridge`` (the BMC Bridging phase) then optionally replaces each chosen response by a
pseudo-winning one: the rejected response after the smallest edit that fixes it, made by an editor.

A sample the token budget cut off (``truncated``) stops mid-way: it is never a chosen response, and with
``data.drop_truncated_rejected`` (the default) not a rejected one either. IPR and ``rm_score`` rank only the
complete samples (all of them with the setting off, a cut-off best then dropping its prompt), and ``sampled``
takes the first complete wrong one. A prompt left without a pair by this is dropped and counted in the data
report: ``truncated chosen`` (no complete sample to choose), ``truncated rejected`` (none to reject).

Every expensive stage (samples, judgments, edits) is cached and resumable (:mod:`bmc.synthesis.store`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bmc.cache import cache_key
from bmc.data.tokenize import encode_texts
from bmc.generation import generation_budget
from bmc.plugins import PAIR_SOURCES, construct
from bmc.synthesis.bridging import bridge, bridge_options, mean_token_edit_distance
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.editors import check_editor
from bmc.synthesis.failures import SETTING, ReplyFailures, check_failure_share, split_limit
from bmc.synthesis.ipr import FullRanking, IPRResult, rank_many, rm_pairs, score_blocks
from bmc.synthesis.judges import build_judge
from bmc.synthesis.local_models import with_model_dtypes
from bmc.synthesis.model_keys import model_config_key
from bmc.synthesis.ranked_lists import list_rows, list_sizes
from bmc.synthesis.sampler import SamplingSettings, build_sampler_backend, sampler_backend_class
from bmc.synthesis.store import resumable_map

log = logging.getLogger(__name__)


def _samples(ctx: SynthesisContext) -> list[dict[str, Any]]:
    """N completions per prompt from ``data.sampler.backend`` (:mod:`bmc.synthesis.sampler`)."""
    sampler = dict(ctx.cfg.get("sampler") or {})
    backend = build_sampler_backend(sampler.pop("backend", None), ctx)
    if sampler.get("max_new_tokens") is None:
        if not ctx.task_data.pref_examples:
            raise ValueError("data.sampler.max_new_tokens must be set for tasks without gold responses")
        sampler["max_new_tokens"] = generation_budget(ctx.tokenizer, ctx.task_data.pref_examples)
    settings = construct(SamplingSettings, sampler, "data.sampler")
    prompts = list(dict.fromkeys(p["prompt"] for p in ctx.task_data.pairs))
    started = time.perf_counter()
    samples = backend.sample(prompts, settings, ctx.cache_root)
    _log_throughput(ctx, samples, time.perf_counter() - started)
    ctx.report["prompts_in"] = len(prompts)
    ctx.report["completions"] = sum(len(s["completions"]) for s in samples)
    ctx.report["truncated_completions"] = sum(sum(s["truncated"]) for s in samples)
    return samples


def _log_throughput(ctx: SynthesisContext, samples: list[dict[str, Any]], seconds: float) -> None:
    """How fast the backend sampled: completions and their tokens (the policy's tokenizer) per second."""
    completions = [c for s in samples for c in s["completions"]]
    tokens = sum(map(len, encode_texts(ctx.tokenizer, completions))) if completions else 0
    log.info("sampling: %d completions of %d prompts, %d tokens in %.1f s: %.2f completions/s, %.1f tokens/s "
             "(entries already cached are read, not drawn)", len(completions), len(samples), tokens, seconds,
             len(completions) / max(seconds, 1e-9), tokens / max(seconds, 1e-9))  # fmt: skip


def samples_from_policy(data_cfg: dict[str, Any]) -> bool:
    """Whether the pairs of ``data_cfg`` are built from completions sampled from the starting policy in this
    process (the ``hf`` sampler backend; a served or vLLM model is loaded elsewhere)."""
    sampled = data_cfg.get("pairs", "original") in PAIR_SOURCES.keys() - {"original"}
    return sampled and sampler_backend_class((data_cfg.get("sampler") or {}).get("backend")).needs_policy_model


@PAIR_SOURCES.register("original")
def original_pairs(ctx: SynthesisContext) -> list[dict[str, str]]:
    """The task's own pairs, as they are."""
    return list(ctx.task_data.pairs)


def _drops_truncated_rejected(ctx: SynthesisContext) -> bool:
    """``data.drop_truncated_rejected``: whether a cut-off sample may not be a rejected response either (the
    default, as in ``conf/data/ipr.yaml``)."""
    return bool(ctx.cfg.get("drop_truncated_rejected", True))


@PAIR_SOURCES.register("sampled")
def sampled_pairs(ctx: SynthesisContext) -> list[dict[str, str]]:
    """(gold, a wrong on-policy sample) pairs; needs a task with gold responses and a verifier."""
    if ctx.verifier is None:
        raise ValueError("data.pairs=sampled needs a built-in task with a verifier (task=math|qa|instruct)")
    drop_truncated = _drops_truncated_rejected(ctx)
    pairs = []
    for sample in _samples(ctx):
        example = ctx.examples[sample["prompt"]]
        wrong = [(c, cut) for c, cut in zip(sample["completions"], sample["truncated"])
                 if ctx.verifier.score(example, c) < 1.0]  # fmt: skip
        usable = [c for c, cut in wrong if not (cut and drop_truncated)]
        if not usable:
            ctx.report["dropped"]["truncated rejected" if wrong else "no wrong sample"] += 1
            continue
        pairs.append({"prompt": sample["prompt"], "chosen": example.gold, "rejected": usable[0]})
    return pairs


def _ranked(ctx: SynthesisContext, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What IPR and ``rm_score`` rank: each prompt's samples restricted to the complete ones (with
    ``data.drop_truncated_rejected=false``, all of them). A prompt without a complete sample, or (by default)
    with only one, is dropped and counted: it can give no pair."""
    drop_truncated = _drops_truncated_rejected(ctx)
    ranked = []
    for sample in samples:
        complete = [i for i, cut in enumerate(sample["truncated"]) if not cut]
        if not complete:
            ctx.report["dropped"]["truncated chosen"] += 1
        elif drop_truncated and len(complete) < 2:
            ctx.report["dropped"]["truncated rejected"] += 1
        else:
            kept = complete if drop_truncated else range(len(sample["truncated"]))
            ranked.append({"prompt": sample["prompt"], "completions": [sample["completions"][i] for i in kept],
                           "truncated": [sample["truncated"][i] for i in kept]})  # fmt: skip
    return ranked


def _judge_payload(samples: list[dict[str, Any]], judge_cfg: dict[str, Any], kind: str) -> dict[str, Any]:
    # the judge's model by what it holds (bmc.synthesis.model_keys), not by its path or served name alone
    return {"samples": cache_key(samples), "judge": model_config_key(judge_cfg, "judge"), "kind": kind}


def _full_ranking(ctx: SynthesisContext) -> bool:
    """``data.ranking``: ``best_worst`` (IPR's best/worst search, rm_score's max/min: pairs) or ``full`` (every
    sample ranked: lists, :mod:`bmc.synthesis.ranked_lists`). The stage resolves ``null`` from the loss."""
    ranking = ctx.cfg.get("ranking") or "best_worst"
    if ranking not in ("best_worst", "full"):
        raise ValueError(f"data.ranking must be best_worst or full, got {ranking!r}")
    if ranking == "full" and ctx.cfg.get("bridge"):
        raise ValueError("data.bridge edits pairs: it cannot take the ranked lists of data.ranking=full")
    return ranking == "full"


def _entry(result: IPRResult | FullRanking) -> dict[str, Any]:
    if isinstance(result, FullRanking):
        return {"blocks": result.blocks, "comparisons": result.comparisons, "judge_calls": result.judge_calls}
    return {"best": result.best_index, "worst": result.worst_index, "tied": result.tied,
            "comparisons": result.comparisons, "judge_calls": result.judge_calls}  # fmt: skip


@PAIR_SOURCES.register("ipr")
def ipr_pairs(ctx: SynthesisContext) -> list[dict[str, Any]]:
    """Iterative pairwise ranking with the configured judge, both orders per comparison (pairs, or with
    ``data.ranking=full`` ranked lists); past ``judge.max_failure_share`` of replies without a verdict (ties),
    the stage stops."""
    samples = _ranked(ctx, _samples(ctx))
    full = _full_ranking(ctx)
    max_failure_share, judge_cfg = split_limit(ctx.judge_cfg, "judge")
    judge = build_judge(judge_cfg, task=ctx.verifier, examples=ctx.task_data.pref_examples,
                        precision=ctx.precision, device=ctx.device)  # fmt: skip

    def process(batch: list[dict[str, Any]], first_index: int) -> list[dict[str, Any]]:
        return [
            {**_entry(result), **judge.take_failures(sample["prompt"]).entry()}
            for sample, result in zip(batch, rank_many(judge, batch, full))
        ]

    # "entry": entries hold the judge's replies without a verdict by reason (a cut-off reply is one, whatever it
    # says) and quote one, and best/worst entries whether every comparison tied; older ones, without, are not read
    payload = {**_judge_payload(samples, judge_cfg, "ipr_full" if full else "ipr"), "entry": "failures, tied"}
    rankings = resumable_map(ctx.cache_root, "judgments", payload, samples, process, batch_size=16)
    ctx.report["judge_calls"] = sum(r["judge_calls"] for r in rankings)
    failures = ReplyFailures.from_entries(rankings)
    ctx.report["judge_failure_share"] = check_failure_share(
        failures, ctx.report["judge_calls"], max_failure_share, stage="data=ipr", backend=repr(judge),
        what="verdict", setting=f"judge.{SETTING}",
    )  # fmt: skip
    ctx.report["judge_unparseable"] = failures.counts["unparseable"]
    ctx.report["judge_truncated"] = failures.counts["truncated"]
    ctx.report["comparisons_per_prompt"] = sum(r["comparisons"] for r in rankings) / max(len(rankings), 1)
    choices = [(r["blocks"][0][0], r["blocks"][-1][-1]) if full else (r["best"], r["worst"]) for r in rankings]
    if ctx.cfg.get("agreement_judge"):
        # the second paper's check: how often a scalar reward model picks the same pair on the same completions
        rm_choices = [rm_pairs(s) for s in _rm_scores(ctx, samples, ctx.cfg["agreement_judge"])]
        ctx.report["ipr_rm_agreement"] = sum(a == b for a, b in zip(choices, rm_choices)) / max(len(choices), 1)
    if full:
        return _lists(ctx, list_rows(samples, [r["blocks"] for r in rankings], ctx.report["dropped"]))
    return _pairs_from_choices(ctx, samples, choices, [r["tied"] for r in rankings])


def _lists(ctx: SynthesisContext, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ctx.report["ranking"] = "full"
    ctx.report["list_sizes"] = list_sizes(rows)
    return rows


def _rm_scores(ctx: SynthesisContext, samples: list[dict[str, Any]], judge_cfg: dict[str, Any]) -> list[list]:
    """A reward model's score of each sample's completions, cached (keyed by the dtype it loads in) and
    resumable."""
    if judge_cfg.get("kind") != "reward_model":
        raise ValueError(
            f"rm_score pairs need a scalar reward model: use judge=reward_model judge.path=<checkpoint>, "
            f"not judge kind {judge_cfg.get('kind')!r}"
        )
    judge_cfg = with_model_dtypes(judge_cfg, ctx.precision)  # data.agreement_judge comes unresolved
    judge = build_judge(judge_cfg, precision=ctx.precision, device=ctx.device)

    def process(batch: list[dict[str, Any]], first_index: int) -> list[dict[str, Any]]:
        # one call for the batch's prompts: the reward model fills its batches across prompts
        scores = iter(judge.score([s["prompt"] for s in batch for _ in s["completions"]],
                                  [c for s in batch for c in s["completions"]]))  # fmt: skip
        return [{"scores": [next(scores) for _ in s["completions"]]} for s in batch]

    payload = _judge_payload(samples, judge_cfg, "rm_score")
    scored = resumable_map(ctx.cache_root, "judgments", payload, samples, process, batch_size=16)
    ctx.report["rm_calls"] = sum(len(s["scores"]) for s in scored)
    return [s["scores"] for s in scored]


@PAIR_SOURCES.register("rm_score")
def rm_score_pairs(ctx: SynthesisContext) -> list[dict[str, Any]]:
    """The baseline IPR replaces: chosen/rejected = max/min of a scalar reward model's scores; with
    ``data.ranking=full``, lists ranked by the scores, which are their grades ψ."""
    samples = _ranked(ctx, _samples(ctx))
    scores = _rm_scores(ctx, samples, ctx.judge_cfg)
    ctx.report["judge_calls"] = ctx.report.pop("rm_calls")
    if _full_ranking(ctx):
        return _lists(ctx, list_rows(samples, [score_blocks(s) for s in scores], ctx.report["dropped"], scores))
    return _pairs_from_choices(ctx, samples, [rm_pairs(s) for s in scores])


def _pairs_from_choices(
    ctx: SynthesisContext, samples: list[dict[str, Any]], choices: list[tuple[int, int]], tied: list[bool] | None = None
) -> list[dict[str, str]]:
    """The (best, worst) pair of each sample; a prompt whose best and worst tie (``tied``: IPR's comparisons were
    all ties; rm_score: all scores equal, so best == worst) gives none."""
    pairs = []
    for index, (sample, (best, worst)) in enumerate(zip(samples, choices)):
        chosen, rejected = sample["completions"][best], sample["completions"][worst]
        if best == worst or (tied is not None and tied[index]):
            ctx.report["dropped"]["all tied after ranking"] += 1
            continue
        if sample["truncated"][best]:  # ranked with the cut-off ones (data.drop_truncated_rejected=false)
            ctx.report["dropped"]["truncated chosen"] += 1
            continue
        if chosen == rejected:
            ctx.report["dropped"]["chosen == rejected after ranking"] += 1
            continue
        pairs.append({"prompt": sample["prompt"], "chosen": chosen, "rejected": rejected})
    return pairs


def _chosen_accept_rate(ctx: SynthesisContext, pairs: list[dict[str, str]]) -> float | None:
    if ctx.verifier is None or not pairs:
        return None
    return sum(ctx.verifier.score(ctx.examples[p["prompt"]], p["chosen"]) == 1.0 for p in pairs) / len(pairs)


def build_pairs(ctx: SynthesisContext) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The pairs of ``data`` and the report METHODS.md asks for every synthesized dataset."""
    source = ctx.cfg.get("pairs", "original")
    pairs = PAIR_SOURCES.entry(source).target(ctx)
    ctx.report.setdefault("prompts_in", len({p["prompt"] for p in ctx.task_data.pairs}))
    ctx.report["edit_distance_before"] = mean_token_edit_distance(ctx.tokenizer, pairs)
    if ctx.cfg.get("bridge"):
        pairs = bridge(ctx, pairs)
        ctx.report["edit_distance_after"] = mean_token_edit_distance(ctx.tokenizer, pairs)
    ctx.report["pairs_out"] = len(pairs)
    ctx.report["chosen_verifier_accept"] = _chosen_accept_rate(ctx, pairs)
    ctx.report["first_pair"] = pairs[0] if pairs else None  # as rendered: the text the model reads
    ctx.report["dropped"] = dict(ctx.report["dropped"])
    return pairs, ctx.report


def check_data(data_cfg: dict[str, Any], editor_cfg: dict[str, Any]) -> None:
    """``data.pairs``, the sampler backend's kind and ``data.bridge`` with the editor it uses, checked before any
    stage runs."""
    PAIR_SOURCES.entry(data_cfg.get("pairs", "original"))
    if data_cfg.get("sampler"):
        sampler_backend_class(data_cfg["sampler"].get("backend"))
    if data_cfg.get("bridge"):
        bridge_options(data_cfg["bridge"])
        check_editor(editor_cfg)
