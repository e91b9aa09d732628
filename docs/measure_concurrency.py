"""Wall time of the data stages against the project's fake OpenAI-compatible server with a fixed per-request
latency, sequential (``max_concurrency=1``) vs concurrent: the measurement behind docs/concurrency.md.

    python docs/measure_concurrency.py [--prompts 32] [--latency 0.05] [--concurrency 8] [--n 5]

Runs the stages as a run does (each in a fresh cache, so nothing is reused): on-policy sampling with the
``openai`` sampler backend (``n`` samples per request), IPR with the LLM judge on those samples (2N-3
comparisons per prompt, each asked in both orders), and Bridging with the LLM editor on the resulting pairs.
Checks that every concurrent result equals the sequential one, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the checkout's bmc and its test double (tests/doubles/fake_chat_server.py), not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bmc.data.sources import TaskData  # noqa: E402
from bmc.synthesis.bridging import bridge  # noqa: E402
from bmc.synthesis.context import SynthesisContext  # noqa: E402
from bmc.synthesis.pair_sources import _samples, ipr_pairs  # noqa: E402
from bmc.tokenizer import train_bpe_tokenizer  # noqa: E402
from tests.doubles.fake_chat_server import FakeChatServer, completions  # noqa: E402

JUDGE_TEMPLATE = "Question: {prompt}\n[A]\n{a}\n[B]\n{b}\nWhich is better? Answer [[A]], [[B]] or [[C]]."
EDITOR_TEMPLATES = {"default": "{prompt}\n{reference}\n[Response to revise]\n{losing}\n[End]"}


def reply(body: dict[str, Any]) -> str | dict[str, Any]:
    """Deterministic answers: samples naming their prompt, seed and position; the judge prefers the longer
    response (ties to A); the editor appends "(fixed)" to the response it is given."""
    if "prompt" in body:
        return completions([f"answer {body['seed']} {'x' * (k + 1)}" for k in range(body["n"])])
    text = body["messages"][-1]["content"]
    if "[Response to revise]" in text:
        losing = text.split("[Response to revise]\n", 1)[1].split("\n[End]", 1)[0]
        return f"<revised>{losing} (fixed)</revised>"
    a, b = text.split("\n[A]\n", 1)[1].split("\n[B]\n", 1)
    return "[[A]]" if len(a) >= len(b.split("\nWhich is better?")[0]) else "[[B]]"


def run(server: FakeChatServer, limit: int, prompts: int, n: int) -> tuple[dict[str, float], list[Any]]:
    """Seconds per stage and what each produced, in a fresh cache."""
    endpoint = {"base_url": server.base_url, "model": "policy", "api_key_env": None, "max_concurrency": limit}
    questions = [f"Question number {i}: what is {i} + {i}?" for i in range(prompts)]
    task_data = TaskData("bench", [], [], [{"prompt": q, "chosen": "", "rejected": ""} for q in questions])
    tokenizer = train_bpe_tokenizer(questions + ["answer x (fixed)"], vocab_size=300)
    sampler = {"backend": {"kind": "openai", **endpoint}, "n": n, "max_new_tokens": 32, "prompts_per_batch": 16}
    ctx = SynthesisContext(
        {"sampler": sampler, "bridge": {"fraction": 1.0}},
        task_data,
        None,
        tokenizer,
        tempfile.mkdtemp(prefix="bmc-concurrency-"),
        None,
        judge_cfg={"kind": "llm", "backend": {"kind": "openai", **endpoint}, "template": JUDGE_TEMPLATE},
        editor_cfg={"kind": "llm", "backend": {"kind": "openai", **endpoint}, "templates": EDITOR_TEMPLATES},
    )
    seconds, outputs = {}, []
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("sampler (openai backend)", lambda: _samples(ctx)),
        ("judge (LLM, IPR)", lambda: ipr_pairs(ctx)),  # its samples are cached by the stage before
        ("editor (LLM, Bridging)", lambda: bridge(ctx, outputs[1])),
    ]
    for name, stage in stages:
        requests_before, start = len(server.requests), time.perf_counter()
        outputs.append(stage())
        seconds[name] = time.perf_counter() - start
        seconds[f"{name} requests"] = len(server.requests) - requests_before
    return seconds, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the fake server takes per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--n", type=int, default=5, help="samples per prompt")
    args = parser.parse_args()
    results = {}
    for limit in (1, args.concurrency):
        with FakeChatServer(reply, delay_s=args.latency) as server:
            results[limit] = run(server, limit, args.prompts, args.n)
            peak = server.max_in_flight
        print(f"max_concurrency={limit}: at most {peak} requests in flight", file=sys.stderr)
    (sequential, seq_out), (concurrent, conc_out) = results[1], results[args.concurrency]
    if seq_out != conc_out:
        raise SystemExit("the concurrent results differ from the sequential ones")
    print(
        f"{args.prompts} prompts, N={args.n}, {args.latency * 1000:.0f} ms per request; "
        "concurrent results identical to sequential: yes\n"
    )
    print(f"| stage | requests | max_concurrency=1 (s) | max_concurrency={args.concurrency} (s) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name in (k for k in sequential if not k.endswith(" requests")):
        requests = sequential[f"{name} requests"]
        print(
            f"| {name} | {requests} | {sequential[name]:.2f} | {concurrent[name]:.2f} | "
            f"{sequential[name] / concurrent[name]:.1f}x |"
        )


if __name__ == "__main__":
    main()
