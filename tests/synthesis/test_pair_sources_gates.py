"""The gates between sampled completions and preference pairs (bmc.synthesis.pair_sources): a judge that gives no
verdicts stops IPR, and a sample the token budget cut off is never a chosen response (nor, by default, a
rejected one). One fake server plays the served policy (its completions, some cut off) and the LLM judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bmc.data.sources import TaskData
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.failures import ReplyFailureError
from bmc.synthesis.judges import RewardModelJudge
from bmc.synthesis.pair_sources import ipr_pairs, rm_score_pairs, sampled_pairs
from bmc.tasks import MathTask
from tests.doubles.char_tokenizer import CharTokenizer
from tests.doubles.fake_chat_server import FakeChatServer, Reply, completions

#: prompt -> its completions as the served policy samples them: (text, finish_reason)
Samples = dict[str, list[tuple[str, str]]]
TEMPLATE = "{prompt}\x00{a}\x00{b}"


def longer_wins(prompt: str, a: str, b: str) -> str:
    """A consistent judge: the longer response is better."""
    return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


class PolicyAndJudge(FakeChatServer):
    """Serves ``samples`` on ``/completions`` and answers ``/chat/completions`` with ``judge(prompt, a, b)``."""

    def __init__(self, samples: Samples, judge: Any = longer_wins) -> None:
        def reply(body: dict[str, Any]) -> Reply:
            if "messages" not in body:
                texts, reasons = zip(*samples[body["prompt"]])
                return completions(list(texts), list(reasons))
            return judge(*body["messages"][-1]["content"].split("\x00"))

        super().__init__(reply)


def _ctx(
    tmp_path: Path, server: FakeChatServer, samples: Samples, judge: dict | None = None, task: TaskData | None = None,
    **data: Any,
) -> SynthesisContext:
    """A data stage over ``samples`` (of ``task``'s prompts), sampled from ``server`` and judged by ``judge``
    (default: the LLM judge at ``server``)."""
    endpoint = {"base_url": server.base_url, "api_key_env": None, "backoff_s": 0.0}
    n = len(next(iter(samples.values())))
    sampler = {"backend": {"kind": "openai", "model": "policy", "revision": "test", **endpoint}, "n": n,
               "max_new_tokens": 8}  # fmt: skip
    judge = judge or {"kind": "llm", "template": TEMPLATE,
                      "backend": {"kind": "openai", "model": "judge", "revision": "test", **endpoint}}  # fmt: skip
    task = task or TaskData("prefs", [], [], [{"prompt": prompt, "chosen": "c", "rejected": "r"} for prompt in samples])
    return SynthesisContext({"sampler": sampler, **data}, task, None, CharTokenizer(), tmp_path / "cache",
                            model_key=None, judge_cfg=judge)  # fmt: skip


FIVE_PROMPTS: Samples = {f"q{i}": [("short", "stop"), ("longer one", "stop")] for i in range(5)}


def test_a_judge_that_never_gives_a_verdict_stops_ipr(tmp_path: Path) -> None:
    with PolicyAndJudge(FIVE_PROMPTS, judge=lambda *_: "Both responses have their merits.") as server:
        with pytest.raises(ReplyFailureError) as failed:
            ipr_pairs(_ctx(tmp_path, server, FIVE_PROMPTS))
    backend = f"OpenAIChat(base_url={server.base_url!r}, model='judge', api_key_env=None)"
    assert str(failed.value).startswith(
        f"data=ipr: 10 of 10 replies (100%) of LLMJudge(backend={backend}) gave no verdict (unparseable 10), more "
        "than judge.max_failure_share=0.2. For example: 'Both responses have their merits.'"
    )


def test_one_reply_without_a_verdict_in_ten_is_reported_as_its_share(tmp_path: Path) -> None:
    def once_undecided(prompt: str, a: str, b: str) -> str:
        return "Hard to say." if (prompt, a) == ("q3", "short") else longer_wins(prompt, a, b)

    with PolicyAndJudge(FIVE_PROMPTS, judge=once_undecided) as server:
        ctx = _ctx(tmp_path, server, FIVE_PROMPTS)
        pairs = ipr_pairs(ctx)
    # q3's one reply without a verdict is a tie, which the other order's verdict still decides
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("longer one", "short")] * 5
    assert (ctx.report["judge_calls"], ctx.report["judge_unparseable"], ctx.report["judge_truncated"]) == (10, 1, 0)
    assert ctx.report["judge_failure_share"] == 0.1


# the longest completion, which the judge prefers, is cut off; so is every completion of "c"
CUT_OFF: Samples = {
    "a": [("short", "stop"), ("the longest one, cut off", "length"), ("medium one", "stop")],
    "b": [("a complete answer", "stop"), ("cut", "length"), ("cut too", "length")],
    "c": [("cut one", "length"), ("cut two", "length"), ("cut three", "length")],
}


def test_ipr_never_chooses_a_truncated_sample_nor_by_default_rejects_one(tmp_path: Path) -> None:
    with PolicyAndJudge(CUT_OFF) as server:
        ctx = _ctx(tmp_path, server, CUT_OFF)
        pairs = ipr_pairs(ctx)
    # "a" ranks its two complete samples alone; "b" has one, nothing to reject it against; "c" none
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "medium one", "short")]
    assert dict(ctx.report["dropped"]) == {"truncated rejected": 1, "truncated chosen": 1}
    assert ctx.report["truncated_completions"] == 6 and ctx.report["judge_calls"] == 2
    asked = [r.json["messages"][-1]["content"] for r in server.requests if "messages" in r.json]
    assert len(asked) == 2 and not any("the longest one, cut off" in text for text in asked)  # never judged


def test_with_drop_truncated_rejected_off_a_truncated_sample_may_be_rejected_but_never_chosen(tmp_path: Path) -> None:
    with PolicyAndJudge(CUT_OFF) as server:
        ctx = _ctx(tmp_path, server, CUT_OFF, drop_truncated_rejected=False)
        pairs = ipr_pairs(ctx)
    # "a": the judge prefers the cut-off sample, which may not be chosen: the prompt goes
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("b", "a complete answer", "cut")]
    assert dict(ctx.report["dropped"]) == {"truncated chosen": 2}
    assert ctx.report["judge_calls"] == 2 * (2 * 2 + 2 * 1)  # a and b, all three samples each: 2(N-1) + 2(N-2)


@pytest.mark.parametrize("drop_truncated_rejected", [True, False])
def test_rm_score_never_chooses_a_truncated_sample(drop_truncated_rejected: bool, reward_model_dir: Path, tmp_path):
    judge = {"kind": "reward_model", "path": str(reward_model_dir)}
    with PolicyAndJudge(CUT_OFF) as server:
        ctx = _ctx(tmp_path, server, CUT_OFF, judge, drop_truncated_rejected=drop_truncated_rejected)
        pairs = rm_score_pairs(ctx)
    scorer = RewardModelJudge(str(reward_model_dir))
    expected, dropped = [], {"truncated chosen": 1}  # "c": nothing complete
    for prompt in ("a", "b"):
        ranked = [(text, reason) for text, reason in CUT_OFF[prompt] if reason == "stop" or not drop_truncated_rejected]
        if len(ranked) < 2:  # "b" has one complete sample: nothing to reject it against
            dropped["truncated rejected"] = 1
            continue
        scores = scorer.score([prompt] * len(ranked), [text for text, _ in ranked])
        best, worst = ranked[scores.index(max(scores))], ranked[scores.index(min(scores))]
        if best[1] == "length":
            dropped["truncated chosen"] += 1
        else:
            expected.append((prompt, best[0], worst[0]))
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == expected
    assert dict(ctx.report["dropped"]) == dropped
    assert ctx.report["judge_calls"] == (2 if drop_truncated_rejected else 6)


def test_sampled_pairs_reject_the_first_complete_wrong_sample(tmp_path: Path) -> None:
    task = MathTask()
    first, second, third = task.examples("pref", 3, seed=0)
    cut = first.gold[: len(first.gold) // 2]  # a wrong answer: it never gets to the end
    samples = {
        first.prompt: [(cut, "length"), (" The answer is -1.", "stop"), (first.gold, "stop")],
        second.prompt: [(second.gold, "stop"), (" The answer", "length"), (second.gold, "stop")],
        third.prompt: [(third.gold, "stop")] * 3,
    }
    pairs = [{"prompt": e.prompt, "chosen": e.gold, "rejected": "-"} for e in (first, second, third)]
    data = TaskData("math", [], [], pairs, verifier=task, pref_examples=[first, second, third])
    found = {}
    for drop in (True, False):
        with PolicyAndJudge(samples) as server:
            ctx = _ctx(tmp_path / str(drop), server, samples, task=data, drop_truncated_rejected=drop)
            found[drop] = ([(p["prompt"], p["rejected"]) for p in sampled_pairs(ctx)], dict(ctx.report["dropped"]))
    assert found[True] == ([(first.prompt, " The answer is -1.")], {"truncated rejected": 1, "no wrong sample": 1})
    assert found[False] == ([(first.prompt, cut), (second.prompt, " The answer")], {"no wrong sample": 1})
