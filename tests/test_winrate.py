"""eval=winrate: the both-order rule, the length-controlled win rate on cases with a closed-form answer, seeded
bootstrap intervals, the baselines and their errors, and a tiny train.py run judged by the fake chat server
whose rerun is a cache hit."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from bmc.data.sources import TaskData
from bmc.generation import Completion
from bmc.pipeline import run
from bmc.stages.evaluation import evaluation_kind
from bmc.stages.products import JudgeSetup, PreferencePairs
from bmc.stages.warm_start import SFT_EVAL_KEYS
from bmc.stages.winrate import EVAL_WINRATE, judge_both_orders, judge_failures, pairwise_judge
from bmc.stages.winrate_baseline import Baseline, HeldOut, baseline_answers, held_out_prompts
from bmc.synthesis.failures import ReplyFailureError, check_failure_share
from bmc.synthesis.judges import build_judge
from bmc.winrate_stats import (
    LOSS,
    TIE,
    WIN,
    both_order_outcome,
    extrapolates,
    length_controlled_winrate,
    winrate_summary,
)
from tests.conftest import compose_config, run_cli
from tests.fake_chat_server import FakeChatServer, chat_completion
from tests.test_ipr import AlwaysFirst, OrderJudge


def test_the_eval_group_selects_the_kind_and_winrate_shares_the_sft_checkpoint() -> None:
    def kind(*overrides: str) -> str:
        return evaluation_kind(compose_config(list(overrides)))

    assert kind() == "verifier" and kind("eval=winrate") == "winrate"
    assert kind("eval=none") == kind("eval.enabled=false") == kind("eval=winrate", "eval.enabled=false") == "none"
    with pytest.raises(ValueError, match=r"eval.kind must be one of \['none', 'verifier', 'winrate'\]"):
        kind("eval.kind=accuracy")
    # the SFT cache key holds the evaluation settings of the SFT's own check, as before the eval group existed
    sft_key = [{k: compose_config(o).eval.get(k) for k in SFT_EVAL_KEYS} for o in ([], ["eval=winrate"])]
    assert sft_key[0] == sft_key[1] == {"enabled": True, "batch_size": 128, "max_new_tokens": None}


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _two_lengths(d1: float, n1: int, wins1: int, d2: float, n2: int, wins2: int) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes at two length differences: the logistic fit is saturated, so it reproduces both win shares."""
    outcomes = [WIN] * wins1 + [LOSS] * (n1 - wins1) + [WIN] * wins2 + [LOSS] * (n2 - wins2)
    return np.array(outcomes), np.array([d1] * n1 + [d2] * n2)


def _saturated(d: np.ndarray, p1: float, p2: float) -> tuple[float, float]:
    """(LC, φ) of a two-length design by hand: the fit passes through (x_k, logit p_k), x_k = tanh(d_k / s)
    with s the std (ddof 1) of all the differences, so θ is that line's value at x = 0."""
    s = float(np.std(d, ddof=1))
    x1, x2 = math.tanh(d[0] / s), math.tanh(d[-1] / s)
    theta = (x2 * _logit(p1) - x1 * _logit(p2)) / (x2 - x1)
    return 1 / (1 + math.exp(-theta)), (_logit(p1) - _logit(p2)) / (x1 - x2)


def test_length_controlled_winrate_has_the_closed_form_of_a_saturated_fit() -> None:
    # Judged by length alone: the longer answer wins 7 of 8 games, and the policy is longer on 32 of 40 prompts.
    # logit p = θ + φ tanh(d/s) through (+x, 7/8) and (−x, 1/8), tanh odd: θ = (logit 7/8 + logit 1/8) / 2 = 0.
    y, d = _two_lengths(10, 32, 28, -10, 8, 1)
    assert y.mean() == pytest.approx(0.725)
    lc = length_controlled_winrate(y, d)
    assert lc.winrate == pytest.approx(0.5, abs=1e-3) and lc.phi > 0 and not lc.extrapolated
    # No length effect: 3/4 wins at both lengths, so φ = 0 and LC = W.
    y, d = _two_lengths(10, 32, 24, -10, 8, 6)
    lc = length_controlled_winrate(y, d)
    assert lc.winrate == pytest.approx(y.mean(), abs=1e-3) == pytest.approx(0.75, abs=1e-3)
    assert lc.phi == pytest.approx(0.0, abs=1e-3)
    # Equal lengths everywhere: nothing to control for, and nothing extrapolated.
    lc = length_controlled_winrate(np.array([1, 1, 0, 0.5]), np.zeros(4))
    assert lc.winrate == pytest.approx(0.625, abs=1e-3) and not lc.extrapolated


def test_the_tanh_length_term_against_a_hand_computed_fit() -> None:
    # p = 0.8 at d = +30, 0.3 at d = −10 (10 prompts each): s = 20·sqrt(20/19) = 20.5196,
    # x = tanh(30/s) = 0.89804 and tanh(−10/s) = −0.45210, so φ = (logit 0.8 − logit 0.3) / 1.35014 = 1.6543 and
    # θ = (−0.45210 logit 0.8 − 0.89804 logit 0.3) / (−1.35014) = −0.09937: LC = σ(θ) = 0.4752.
    y, d = _two_lengths(30, 10, 8, -10, 10, 3)
    lc = length_controlled_winrate(y, d)
    assert (lc.winrate, lc.phi) == pytest.approx(_saturated(d, 0.8, 0.3), abs=1e-3)
    assert (lc.winrate, lc.phi) == pytest.approx((0.4752, 1.6543), abs=1e-3)
    assert not lc.extrapolated  # the differences straddle 0: LC is read between them


def test_a_one_sided_length_difference_flags_lc_as_extrapolated_and_reports_phi() -> None:
    # Every policy answer shorter (d = −10 on 20 prompts, 4 won; d = −60 on 20, 1 won): W = 0.125, but the curve
    # through both, carried on to d = 0, says 0.396 (s = 25.318, x = −0.37564 and −0.98267, φ = 2.5668).
    y, d = _two_lengths(-10, 20, 4, -60, 20, 1)
    lc = length_controlled_winrate(y, d)  # the ridge pulls φ by about 1e-3 here
    assert (lc.winrate, lc.phi) == pytest.approx(_saturated(d, 0.2, 0.05), abs=2e-3)
    assert (lc.winrate, lc.phi) == pytest.approx((0.396, 2.567), abs=2e-3) and lc.extrapolated
    summary = winrate_summary(y, d, samples=200)
    assert summary["winrate"] == 0.125 and summary["winrate_lc_extrapolated"] == 1.0
    assert summary["winrate_lc_phi"] == pytest.approx(lc.phi) and summary["winrate_lc"] == lc.winrate
    # one-sided counts ties at 0 in (every d ≥ 0), equal lengths everywhere do not, a single opposite sign does
    assert extrapolates(np.array([0.0, 5.0, 12.0])) and extrapolates(np.array([-3.0, 0.0]))
    assert not extrapolates(np.zeros(3)) and not extrapolates(np.array([-1.0, 40.0, 90.0]))


def test_length_controlled_winrate_stays_finite_on_separable_outcomes() -> None:
    y, d = _two_lengths(10, 30, 30, -10, 10, 0)  # the longer answer always wins
    assert 0.0 < length_controlled_winrate(y, d).winrate < 1.0
    assert length_controlled_winrate(np.ones(20), np.arange(20.0)).winrate > 0.99  # every game won


def test_bootstrap_intervals_hold_the_estimate_and_are_seeded() -> None:
    rng = np.random.default_rng(3)
    y, d = rng.choice([WIN, TIE, LOSS], size=60), rng.normal(0, 40, size=60)
    summary = winrate_summary(y, d, samples=300, seed=7)
    assert summary["winrate"] == pytest.approx(y.mean()) and summary["tie_rate"] == pytest.approx(np.mean(y == TIE))
    for name in ("winrate", "winrate_lc"):
        assert summary[f"{name}_ci_low"] <= summary[name] <= summary[f"{name}_ci_high"]
        assert summary[f"{name}_ci_low"] < summary[f"{name}_ci_high"]
    assert winrate_summary(y, d, samples=300, seed=7) == summary
    assert winrate_summary(y, d, samples=300, seed=8) != summary


def test_a_win_needs_both_orders_and_a_position_bias_ties_everything() -> None:
    assert [both_order_outcome(a, b) for a, b in [(1, -1), (-1, 1), (1, 1), (-1, -1), (1, 0), (0, -1), (0, 0)]] == [
        WIN, LOSS, TIE, TIE, TIE, TIE, TIE
    ]  # fmt: skip
    biased = AlwaysFirst()
    assert {judge_both_orders(biased, "Q?", p, b)["outcome"] for p, b in [("x", "y"), ("y", "x"), ("a", "bb")]} == {TIE}
    fair = OrderJudge({"good": 2.0, "bad": 1.0}, slot_a_bonus=0.5)  # a bias too small to flip a verdict
    assert judge_both_orders(fair, "Q?", "good", "bad")["outcome"] == WIN
    assert judge_both_orders(fair, "Q?", "bad", "good")["outcome"] == LOSS
    calls = fair.calls
    assert judge_both_orders(fair, "Q?", "same", "same") == {
        "policy_first": 0, "baseline_first": 0, "outcome": TIE, "unparseable": 0, "judge_truncated": 0,
        "judge_reply": None,
    }  # fmt: skip
    assert fair.calls == calls  # identical answers tie without asking


def _llm_judge_options(server: FakeChatServer) -> dict:
    options = OmegaConf.to_container(compose_config(["judge=llm"]).judge)
    options["backend"].update(base_url=server.base_url, model="judge", api_key_env=None, backoff_s=0.0)
    return options


def test_unparseable_and_cut_off_judge_replies_are_counted_and_quoted() -> None:
    with FakeChatServer(lambda body: "Both are fine.") as server:
        judge = build_judge(_llm_judge_options(server))
        judged = judge_both_orders(judge, "Q?", "x", "y")
    assert judged["outcome"] == TIE and judged["unparseable"] == 2 and judged["judge_reply"] == "Both are fine."
    # a verdict in a reply the budget cut off is no verdict: the explanation may be quoting the format
    with FakeChatServer(lambda body: chat_completion("Answer with [[A]] or [[B]]. Here A is", "length")) as server:
        judged = judge_both_orders(build_judge(_llm_judge_options(server)), "Q?", "x", "y")
    assert (judged["outcome"], judged["unparseable"], judged["judge_truncated"]) == (TIE, 0, 2)


def test_one_reply_without_a_verdict_in_ten_is_reported_as_its_share(caplog) -> None:
    rows = [{"policy": f"p{i}", "baseline": "b", "unparseable": int(i == 3), "judge_truncated": 0,
             "judge_reply": "Hmm." if i == 3 else None} for i in range(5)]  # fmt: skip
    rows.append({"policy": "b", "baseline": "b", "unparseable": 0, "judge_truncated": 0, "judge_reply": None})
    failures, replies = judge_failures(rows)
    assert (failures.counts["unparseable"], failures.example, replies) == (1, "Hmm.", 10)  # identical: unasked
    with caplog.at_level("WARNING"):
        share = check_failure_share(failures, replies, 0.2, stage="eval=winrate", backend="judge", what="verdict",
                                    setting="judge.max_failure_share")  # fmt: skip
    assert share == 0.1 and "1 of 10 replies (10%) of judge gave no verdict (unparseable 1)" in caplog.text


def _setup(baseline: str, task_data: TaskData, judge: dict | None = None, pairs: list | None = None) -> SimpleNamespace:
    cfg = OmegaConf.create({"eval": {"baseline": baseline}, "data": {"val_fraction": 0.5}, "task": {"seed": 0},
                            "trainer": {"accelerator": "cpu", "precision": "32-true"}})  # fmt: skip
    return SimpleNamespace(
        cfg=cfg, task_data=task_data, judge=JudgeSetup(judge or {}), pairs=PreferencePairs(pairs or [], {})
    )


PAIRS = [{"prompt": f"Q{i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(6)]
DATASET = TaskData(name="prefs", sft_train=[], sft_val=[], pairs=PAIRS)


def test_a_dataset_holds_out_its_validation_prompts_with_their_chosen_responses() -> None:
    held_out = held_out_prompts(_setup("chosen", DATASET, pairs=PAIRS))
    assert len(held_out) == 3 and all(h.chosen == f" good {h.prompt[1]}" for h in held_out)


def test_baselines_and_the_settings_they_cannot_work_with(tmp_path: Path) -> None:
    held_out = [HeldOut("Q0?", " good 0"), HeldOut("Q1?", None)]
    with pytest.raises(ValueError, match=r"eval.baseline=chosen needs .* 1 of 2 have none"):
        baseline_answers(_setup("chosen", DATASET), held_out, budget=8)
    answers = tmp_path / "gpt4.jsonl"
    answers.write_text(json.dumps({"prompt": "Q0?", "answer": " theirs"}) + "\n")
    with pytest.raises(ValueError, match=r"gpt4.jsonl has no answer text for 1 of 2 held-out prompts"):
        baseline_answers(_setup(str(answers), DATASET), held_out, budget=8)
    assert baseline_answers(_setup(str(answers), DATASET), held_out[:1], budget=8).answers == {"Q0?": " theirs"}
    with pytest.raises(ValueError, match=r"eval.baseline must be reference, chosen or a JSONL file"):
        baseline_answers(_setup("refrence", DATASET), held_out, budget=8)
    # no verifier to judge by, and an LLM judge without its served model
    with pytest.raises(ValueError, match=r"eval=winrate .* judge=verifier .* needs a built-in task"):
        pairwise_judge(_setup("chosen", DATASET, judge={"kind": "verifier"}))
    llm = OmegaConf.to_container(compose_config(["judge=llm"]).judge)
    with pytest.raises(ValueError, match=r"eval=winrate .* judge=llm .* needs `model`"):
        pairwise_judge(_setup("chosen", DATASET, judge=llm))


def test_the_reference_answers_are_generated_and_cached_in_the_trainers_precision(tmp_path: Path, monkeypatch) -> None:
    asked: list[str] = []

    def generate(model, tokenizer, prompts, budget, **kwargs) -> list[Completion]:
        asked.append(kwargs["precision"].name)
        return [Completion(f" in {kwargs['precision'].name}", truncated=p == "Q1?") for p in prompts]

    monkeypatch.setattr("bmc.stages.winrate_baseline.generate", generate)

    def answers(precision: str) -> Baseline:
        setup = _setup("reference", DATASET)
        setup.cfg.trainer.precision, setup.cfg.eval.batch_size = precision, 4
        setup.cfg.paths = {"cache_dir": str(tmp_path)}
        setup.policy = SimpleNamespace(fingerprint=lambda: {"checkpoint": "sft"}, model=None, tokenizer=None)
        return baseline_answers(setup, [HeldOut("Q0?", None), HeldOut("Q1?", None)], budget=8)

    bf16 = answers("bf16")
    assert bf16 == answers("bf16-mixed")
    assert bf16.answers == {"Q0?": " in bf16-mixed", "Q1?": " in bf16-mixed"}
    assert bf16.truncated == {"Q1?"}  # the answer the budget cut off, also when read from the cache
    assert answers("32-true").answers == {"Q0?": " in 32-true", "Q1?": " in 32-true"}
    assert asked == ["bf16-mixed", "32-true"]  # bf16 and bf16-mixed: one cache entry


def _judged_dataset_run(make_config, tmp_path: Path, server: FakeChatServer) -> dict[str, float]:
    """A tiny run on a dataset of 30 rows, judged against the reference answers by the LLM judge at ``server``."""
    rows = [{"prompt": f"What is {i} plus one?", "chosen": f" It is {i + 1}.", "rejected": f" It is {i + 2}."}
            for i in range(30)]  # fmt: skip
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = [f"judge.backend.base_url={server.base_url}", "judge.backend.model=judge", "judge.backend.api_key_env=null"]
    winrate = ["eval=winrate", "eval.baseline=reference", "eval.max_new_tokens=8"]
    task = ["task=hf_prefs", f"task.path={path}", "task.sizes.sft_val=4"]
    return run(make_config("debug=default", *task, "judge=llm", *judge, *winrate, "optim.lr=1e-2"))


def test_a_dataset_is_judged_against_the_reference_answers_on_its_validation_prompts(make_config, tmp_path) -> None:
    with FakeChatServer(lambda body: "Slot B, always. [[B]]") as server:  # a position bias: every game a tie
        metrics = _judged_dataset_run(make_config, tmp_path, server)
    judged = [json.loads(line) for line in (tmp_path / "run" / EVAL_WINRATE).read_text().splitlines()]
    assert metrics["eval/num_prompts"] == len(judged) == 2  # the 2 validation pairs of debug's 24 rows
    assert metrics["eval/winrate"] == metrics["eval/winrate_lc"] == 0.5 and metrics["eval/tie_rate"] == 1.0
    (reference,) = (tmp_path / "cache" / "reference_answers").glob("*/results.jsonl")
    assert [json.loads(line)["answer"] for line in reference.read_text().splitlines()] == [
        r["baseline"] for r in judged
    ]
    assert len(server.requests) == 2 * sum(r["policy"] != r["baseline"] for r in judged)
    assert metrics["eval/judge_failure_share"] == 0.0
    truncated = [json.loads(line)["truncated"] for line in reference.read_text().splitlines()]
    assert [r["baseline_truncated"] for r in judged] == truncated  # the reference answers' own finish
    assert metrics["eval/baseline_truncated"] == sum(truncated) / 2


def test_a_judge_that_never_gives_a_verdict_stops_the_winrate(make_config, tmp_path) -> None:
    with FakeChatServer(lambda body: "Both answers have merit; it is hard to say.") as server:
        with pytest.raises(ReplyFailureError) as failed:
            _judged_dataset_run(make_config, tmp_path, server)
    replies = len(server.requests)
    assert replies > 0 and str(failed.value).startswith(
        f"eval=winrate: {replies} of {replies} replies (100%) of LLMJudge(backend=OpenAIChat(base_url="
        f"'{server.base_url}', model='judge', api_key_env=None)) gave no verdict (unparseable {replies}), more than "
        "judge.max_failure_share=0.2. For example: 'Both answers have merit; it is hard to say.'"
    )
    assert not (tmp_path / "run" / EVAL_WINRATE).exists()  # no win rate of ties


def _question(body: dict) -> str:
    return body["messages"][-1]["content"].split("[User Question]\n")[1].split("\n\n[The Start")[0]


def _slot(body: dict, name: str) -> str:
    text = body["messages"][-1]["content"]
    return text.split(f"[The Start of Assistant {name}'s Answer]\n")[1].split(f"\n[The End of Assistant {name}'s")[0]


def test_train_with_eval_winrate_writes_the_verdicts_and_reuses_them(tmp_path: Path, shared_cache: Path) -> None:
    unparseable_prompt: list[str] = []
    lock = threading.Lock()  # the judge asks for several prompts at once

    def longer_wins(body: dict) -> str:
        """A consistent judge (the longer answer), except on the first question it sees: no verdict."""
        with lock:
            unparseable_prompt[:] = unparseable_prompt or [_question(body)]
        if _question(body) == unparseable_prompt[0]:
            return "I cannot decide."
        a, b = len(_slot(body, "A")), len(_slot(body, "B"))
        return "[[A]]" if a > b else "[[B]]" if b > a else "[[C]]"

    with FakeChatServer(longer_wins) as server:
        judge = [f"judge.backend.{k}={v}" for k, v in (("base_url", server.base_url), ("model", "judge"))]
        args = ["debug=default", "eval=winrate", "eval.baseline=chosen", "eval.bootstrap.samples=200", "judge=llm",
                *judge, "judge.backend.api_key_env=null", f"paths.cache_dir={shared_cache}"]  # fmt: skip
        # the first with the wandb logger (offline), which gets the rows as a table
        run_cli(
            [*args, "logger=wandb", f"hydra.run.dir={tmp_path / 'first'}"], cwd=tmp_path, env={"WANDB_MODE": "offline"}
        )
        requests = len(server.requests)
        run_cli([*args, f"hydra.run.dir={tmp_path / 'second'}"], cwd=tmp_path)
        assert len(server.requests) == requests  # the second run read the cache: no judge request

    rows = [json.loads(line) for line in (tmp_path / "first" / EVAL_WINRATE).read_text().splitlines()]
    (table,) = (tmp_path / "first" / "wandb").glob("offline-run-*/files/media/table/eval/winrate_answers_*.table.json")
    assert len(json.loads(table.read_text())["data"]) == 8
    assert len(rows) == 8 and requests == 2 * sum(r["policy"] != r["baseline"] for r in rows) > 0
    for row in rows:
        expected = both_order_outcome(row["policy_first"], row["baseline_first"])
        assert row["outcome"] == expected and set(row) >= {"prompt", "policy", "baseline", "policy_tokens"}
    assert [r["unparseable"] for r in rows if r["prompt"] == unparseable_prompt[0]] == [2]
    metrics = json.loads((tmp_path / "first" / "summary.json").read_text())["metrics"]
    assert metrics["eval/num_prompts"] == 8 and metrics["eval/judge_unparseable"] == 2
    assert metrics["eval/judge_failure_share"] == 2 / requests <= 0.2  # reported, below the threshold
    assert [r["judge_reply"] for r in rows if r["unparseable"]] == ["I cannot decide."]
    assert metrics["eval/winrate"] == pytest.approx(np.mean([r["outcome"] for r in rows]))
    assert metrics["eval/tie_rate"] >= 1 / 8  # at least the unparseable prompt
    assert metrics["eval/winrate_ci_low"] <= metrics["eval/winrate"] <= metrics["eval/winrate_ci_high"]
    assert 0.0 <= metrics["eval/winrate_lc_ci_low"] <= metrics["eval/winrate_lc"] <= metrics["eval/winrate_lc_ci_high"]
    lengths = np.array([r["policy_tokens"] - r["baseline_tokens"] for r in rows])
    assert metrics["eval/winrate_lc_extrapolated"] == float(extrapolates(lengths))
    assert metrics["eval/winrate_lc_phi"] == length_controlled_winrate([r["outcome"] for r in rows], lengths).phi
    second = json.loads((tmp_path / "second" / "summary.json").read_text())["metrics"]
    assert {k: v for k, v in second.items() if k.startswith("eval/")} == {
        k: v for k, v in metrics.items() if k.startswith("eval/")
    }
    assert (tmp_path / "second" / EVAL_WINRATE).read_text() == (tmp_path / "first" / EVAL_WINRATE).read_text()
