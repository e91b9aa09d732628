"""The ``openai`` sampler backend: an OpenAI-compatible completions endpoint serving the checkpoint (vLLM,
llama.cpp server, TGI), with the retries and backoff of :class:`~bmc.synthesis.endpoint.OpenAIEndpoint`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from bmc.data.tokenize import served_prompt
from bmc.generation import Completion
from bmc.plugins import SAMPLER_BACKENDS, construct
from bmc.synthesis._common import ordered_map
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.endpoint import OpenAIEndpoint
from bmc.synthesis.model_keys import SERVED_KEY_OPTIONS, served_model_key
from bmc.synthesis.sampler.backend import ModelSampler, PromptSamples, SamplingSettings, require_options


@SAMPLER_BACKENDS.register("openai")
class OpenAISampler(ModelSampler):
    """``POST {base_url}/completions`` per prompt with the rendered prompt text and ``n``, ``temperature``,
    ``top_p``, ``max_tokens`` and a per-prompt ``seed``; up to the endpoint's ``max_concurrency`` prompts in
    flight. A choice with ``finish_reason == "length"`` is truncated. With the policy's ``tokenizer``, a
    prompt that begins with the BOS the server will add itself is sent without it (:func:`served_prompt`).

    ``max_n_per_request`` splits a prompt's ``n`` samples over several requests of at most that many, request
    ``j`` seeded ``seed + j * REQUEST_SEED_STRIDE``: for servers that return one choice whatever ``n`` asks for
    (llama-cpp-python's) set it to 1. None: all ``n`` in one request.

    The samples are cached by the served model's :func:`~bmc.synthesis.model_keys.served_model_key`:
    ``weights``, the folder the server serves, by its contents; else the served name and ``revision``.
    """

    #: seed offset between the requests of one prompt: far above the prompt seeds of one run's prompts
    REQUEST_SEED_STRIDE = 1 << 24

    def __init__(
        self,
        endpoint: OpenAIEndpoint,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_n_per_request: int | None = None,
        revision: str | None = None,
        weights: str | None = None,
    ) -> None:
        if max_n_per_request is not None and max_n_per_request < 1:
            raise ValueError(f"data.sampler.backend.max_n_per_request must be >= 1 or null, got {max_n_per_request}")
        self.endpoint = endpoint
        self.tokenizer = tokenizer
        self.max_n_per_request = max_n_per_request
        self.revision, self.weights = revision, weights

    @classmethod
    def from_options(cls, options: dict[str, Any], ctx: SynthesisContext) -> OpenAISampler:
        require_options(
            options, ["base_url", "model"], "openai",
            "data.sampler.backend.base_url=http://127.0.0.1:8000/v1 data.sampler.backend.model=served-name",
        )  # fmt: skip
        own = ("max_n_per_request", *SERVED_KEY_OPTIONS)
        endpoint_options = {k: v for k, v in options.items() if k not in own}
        endpoint = construct(OpenAIEndpoint, endpoint_options, "data.sampler.backend kind 'openai'")
        return cls(endpoint, ctx.tokenizer, **{k: options.get(k) for k in own})

    def identity(self) -> Any:
        # the served model, not the URL: the same checkpoint behind another port is the same samples
        served = served_model_key(self.endpoint.model, self.revision, self.weights, "data.sampler.backend")
        identity = {"backend": "openai", **served}
        # split requests draw with other seeds: other samples (None keeps the keys of entries made before it)
        return identity if self.max_n_per_request is None else {**identity, "n_per_request": self.max_n_per_request}

    def sample_batch(self, prompts: Sequence[str], first_index: int, settings: SamplingSettings) -> list[PromptSamples]:
        per_request = self.max_n_per_request or settings.n
        counts = [min(per_request, settings.n - start) for start in range(0, settings.n, per_request)]

        def one(index: int) -> PromptSamples:
            prompt = prompts[index] if self.tokenizer is None else served_prompt(self.tokenizer, prompts[index])
            samples: PromptSamples = []
            for request, n in enumerate(counts):
                body = {
                    "prompt": prompt,
                    "n": n,
                    "temperature": settings.temperature,
                    "top_p": settings.top_p,
                    "max_tokens": settings.max_new_tokens,
                    "seed": settings.prompt_seed(first_index + index) + request * self.REQUEST_SEED_STRIDE,
                }
                what = f"{n} completions (choices with text and finish_reason) for prompt {first_index + index}"
                samples += self.endpoint.post("completions", body, lambda reply, n=n: _choices(reply, n), what)
            return samples

        return ordered_map(one, range(len(prompts)), self.endpoint.max_concurrency)


def _choices(reply: Mapping[str, Any], n: int) -> PromptSamples:
    """The ``n`` choices of a completions reply in ``index`` order; ValueError/TypeError/KeyError if it has
    another number of them or one without text."""
    choices = sorted(reply["choices"], key=lambda c: c["index"])
    if len(choices) == 1 and n > 1:
        raise ValueError(
            f"expected {n} choices, got 1: a server that ignores `n` (llama-cpp-python's) needs "
            "data.sampler.backend.max_n_per_request=1"
        )
    if len(choices) != n or any(not isinstance(c["text"], str) for c in choices):
        raise ValueError(f"expected {n} choices with text")
    return [Completion.from_finish_reason(c["text"], c.get("finish_reason")) for c in choices]
