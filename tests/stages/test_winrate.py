"""eval=winrate: the both-order rule, the judge's failures, and a tiny train.py run judged by the fake chat server whose
rerun is a cache hit."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from bmc.pipeline import run
from bmc.stages.winrate import EVAL_WINRATE, judge_both_orders, judge_failures
from bmc.synthesis.failures import ReplyFailureError, check_failure_share
from bmc.synthesis.judges import build_judge
from bmc.winrate_stats import (
    LOSS,
    TIE,
    WIN,
    both_order_outcome,
    extrapolates,
    length_controlled_winrate,
)
from tests.conftest import compose_config, run_cli
from tests.doubles.fake_chat_server import FakeChatServer, chat_completion
from tests.doubles.order_judges import AlwaysFirst, OrderJudge


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
