"""The ``vllm`` sampler backend: an in-process ``vllm.LLM`` (the optional ``vllm`` package; GPU)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from transformers import PreTrainedTokenizerBase

from bmc.cache import checkpoint_fingerprint
from bmc.data.tokenize import encode_prompts
from bmc.generation import stop_token_ids
from bmc.synthesis._common import build_from_options
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.sampler.base import ModelSampler, PromptSamples, SamplingSettings, require_options


def _import_vllm() -> ModuleType:
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(
            "data.sampler.backend kind 'vllm' needs the optional package `vllm` (pip install vllm; a CUDA GPU), "
            f"which cannot be imported here ({err}); use sampler_backend@data.sampler.backend=openai with a served "
            "model, or =hf"
        ) from None


class VLLMSampler(ModelSampler):
    """An in-process ``vllm.LLM`` of the checkpoint ``model``, built at the first batch that is not cached.

    It is given the prompts' token ids as the ``hf`` backend encodes them (:func:`bmc.data.tokenize.encode_prompts`,
    BOS exactly once) and the same end tokens, with one seeded ``SamplingParams`` per prompt; a completion
    with ``finish_reason == "length"`` is truncated. The other arguments go to ``vllm.LLM``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: str,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
    ) -> None:
        self.vllm = _import_vllm()  # at construction: a missing package fails before any stage runs
        self.tokenizer, self.model, self.dtype = tokenizer, model, dtype
        self.engine_options = {
            "tensor_parallel_size": tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "trust_remote_code": trust_remote_code,
            "revision": revision,
        }
        self._engine: Any = None

    @classmethod
    def from_options(cls, options: dict[str, Any], ctx: SynthesisContext) -> VLLMSampler:
        require_options(options, ["model"], "vllm", "data.sampler.backend.model=/ckpts/policy")
        return build_from_options(cls, options, "data.sampler.backend kind 'vllm'", tokenizer=ctx.tokenizer)

    def identity(self) -> Any:
        model = checkpoint_fingerprint(self.model, self.engine_options["revision"])  # a hub id: at its revision
        return {"backend": "vllm", "model": model, "dtype": self.dtype}

    def sample_batch(self, prompts: Sequence[str], first_index: int, settings: SamplingSettings) -> list[PromptSamples]:
        if self._engine is None:
            self._engine = self.vllm.LLM(model=self.model, dtype=self.dtype, **self.engine_options)
        stops = stop_token_ids(None, self.tokenizer)
        params = [
            self.vllm.SamplingParams(
                n=settings.n,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                seed=settings.prompt_seed(first_index + i),
                stop_token_ids=stops,
            )
            for i in range(len(prompts))
        ]
        requests = [{"prompt_token_ids": ids} for ids in encode_prompts(self.tokenizer, list(prompts))]
        outputs = self._engine.generate(requests, params, use_tqdm=False)
        return [
            [(c.text, c.finish_reason == "length") for c in sorted(output.outputs, key=lambda c: c.index)]
            for output in outputs
        ]
