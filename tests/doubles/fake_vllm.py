"""A stand-in for the optional ``vllm`` package, for the sampler backend's tests on machines without it."""

from __future__ import annotations

from types import ModuleType, SimpleNamespace
from typing import Any


def fake_vllm(calls: dict[str, list]) -> ModuleType:
    """A stand-in ``vllm`` module: records the engine's construction and each ``generate`` call, and answers
    like vLLM (``outputs`` of CompletionOutput-likes, here in reverse index order)."""

    class SamplingParams:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs: Any) -> None:
            calls["LLM"].append(kwargs)

        def generate(self, requests: list[dict], params: list[SamplingParams], use_tqdm: bool = True) -> list:
            calls["generate"].append((requests, [p.kwargs for p in params]))
            return [
                SimpleNamespace(
                    outputs=[
                        SimpleNamespace(
                            index=k, text=f"{p.kwargs['seed']}|{k}", finish_reason="length" if k else "stop"
                        )
                        for k in reversed(range(p.kwargs["n"]))
                    ]
                )
                for p in params
            ]

    module = ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module
