"""Concurrency across prompts for the LLM judge (IPR) and the LLM editor against the fake server: results in
input order and identical to the sequential ones, and one ``max_concurrency`` bounding every request."""

from __future__ import annotations

import re
import time
from typing import Any

from bmc.synthesis.chat import OpenAIChat
from bmc.synthesis.editors import Edit, LLMEditor
from bmc.synthesis.ipr import rank_many
from bmc.synthesis.judges import LLMJudge
from tests.doubles.fake_chat_server import FakeChatServer

TEMPLATE = "Q: {prompt}\nA: {a}\nB: {b}"
_SLOTS = re.compile(r"Q: (.*)\nA: (.*)\nB: (.*)", re.S)


def _judge_reply(body: dict[str, Any]) -> str:
    """Prefers the response with more '+' (a known quality); prompts with 'odd' get a reply with no verdict."""
    prompt, a, b = _SLOTS.fullmatch(body["messages"][-1]["content"]).groups()
    if "odd" in prompt:
        return "I cannot decide."
    return "[[A]]" if a.count("+") > b.count("+") else "[[B]]" if b.count("+") > a.count("+") else "[[C]]"


def _samples(count: int) -> list[dict[str, Any]]:
    """Prompt i's completions have qualities rotated by i, so every prompt has its own best and worst."""
    samples = []
    for i in range(count):
        qualities = [(i + k) % 4 for k in range(4)]
        prompt = f"prompt {i}" + (" odd" if i % 5 == 3 else "")
        samples.append({"prompt": prompt, "completions": [f"r{k}" + "+" * q for k, q in enumerate(qualities)]})
    return samples


def _client(base_url: str, limit: int) -> OpenAIChat:
    return OpenAIChat(base_url, "judge", api_key_env=None, backoff_s=0.0, max_concurrency=limit)


def test_ipr_judges_prompts_concurrently_in_order_and_like_the_sequential_run() -> None:
    samples = _samples(12)
    runs = {}
    for limit in (1, 6):
        with FakeChatServer(_judge_reply, delay_s=0.02) as server:
            judge = LLMJudge(_client(server.base_url, limit), TEMPLATE)
            results = rank_many(judge, samples)
        failures = {s["prompt"]: judge.take_failures(s["prompt"]).counts for s in samples}
        runs[limit] = (results, judge.calls, {p: dict(c) for p, c in failures.items() if c}, server.max_in_flight)
    (sequential, calls_1, unparseable_1, peak_1), (concurrent, calls_6, unparseable_6, peak_6) = runs[1], runs[6]
    assert concurrent == sequential and calls_6 == calls_1 == 12 * 10
    assert unparseable_6 == unparseable_1 == {s["prompt"]: {"unparseable": 10} for s in samples if "odd" in s["prompt"]}
    for sample, result in zip(samples, concurrent):
        if "odd" not in sample["prompt"]:  # every verdict a tie: the incumbents stay
            quality = [c.count("+") for c in sample["completions"]]
            assert (result.best_index, result.worst_index) == (quality.index(3), quality.index(0))
    # one prompt asks 2 judgments at a time: more in flight means prompts ran at once, never past the cap
    assert peak_1 == 1 and 2 < peak_6 <= 6


def _editor_reply(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    losing = text.split("[Response to revise]\n", 1)[1].split("\n", 1)[0]
    return "no tags here" if "7" in losing else f"<revised>{losing.upper()}</revised>"


def test_llm_editor_edits_prompts_concurrently_in_order_and_like_the_sequential_run() -> None:
    templates = {"default": "[Prompt]\n{prompt}\n{reference}[Response to revise]\n{losing}\nRevise it."}
    prompts = [f"x{i}" for i in range(16)]
    winning = [f"good {i}" for i in range(16)]
    losing = [f" bad answer {i}" for i in range(16)]
    edits, walls = {}, {}
    for limit in (1, 8):
        with FakeChatServer(_editor_reply, delay_s=0.05) as server:
            editor = LLMEditor(_client(server.base_url, limit), templates)
            start = time.perf_counter()
            edits[limit] = editor.edit_many(prompts, winning, losing)
            walls[limit] = time.perf_counter() - start
        assert server.max_in_flight == limit
    assert edits[8] == edits[1]
    assert edits[1] == [
        Edit(None, "unparseable", "no tags here") if "7" in y_l else Edit(" " + y_l.strip().upper()) for y_l in losing
    ]  # in input order; the reply without the format is counted as unparseable, never accepted
    assert walls[8] < 0.5 * walls[1]  # 16 x 50 ms in sequence vs 2 rounds of 8
