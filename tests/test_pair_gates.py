"""The gates between sampled completions and preference pairs (bmc.synthesis.pipeline): a judge that gives no
verdicts stops IPR, and a sample the token budget cut off is never a chosen response (nor, by default, a
rejected one). One fake server plays the served policy (its completions, some cut off) and the LLM judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bmc.data.sources import TaskData
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.failures import ReplyFailureError
from bmc.synthesis.pipeline import ipr_pairs
from tests.fake_chat_server import FakeChatServer, Reply, completions
from tests.test_bridging import CharTokenizer

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


def _ctx(tmp_path: Path, server: FakeChatServer, samples: Samples, **data: Any) -> SynthesisContext:
    """IPR's data stage over ``samples``, sampled from and judged by ``server``."""
    endpoint = {"base_url": server.base_url, "api_key_env": None, "backoff_s": 0.0}
    n = len(next(iter(samples.values())))
    sampler = {"backend": {"kind": "openai", "model": "policy", "revision": "test", **endpoint}, "n": n,
               "max_new_tokens": 8}  # fmt: skip
    judge = {"kind": "llm", "template": TEMPLATE, "backend": {"kind": "openai", "model": "judge", **endpoint}}
    pairs = [{"prompt": prompt, "chosen": "c", "rejected": "r"} for prompt in samples]
    return SynthesisContext({"name": "ipr", "pairs": "ipr", "sampler": sampler, **data},
                            TaskData("prefs", [], [], pairs), None, CharTokenizer(), tmp_path / "cache",
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
