"""The ``vllm`` sampler backend: an in-process ``vllm.LLM`` (the optional ``vllm`` package; GPU)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from bmc.cache import checkpoint_fingerprint
from bmc.data.tokenize import encode_prompts
from bmc.generation import Completion, stop_token_ids
from bmc.plugins import SAMPLER_BACKENDS, construct
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.sampler.backend import ModelSampler, PromptSamples, SamplingSettings, require_options

log = logging.getLogger(__name__)

#: bytes of GPU memory left free beside a vLLM engine sized by :func:`free_memory_share`: the CUDA context of
#: vLLM's engine process, created after the measurement, and allocator slack
MEMORY_MARGIN = 1 << 30


def _import_vllm() -> ModuleType:
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise ImportError(
            "data.sampler.backend kind 'vllm' needs the optional package `vllm` (pip install vllm; a CUDA GPU), "
            f"which cannot be imported here ({err}); use sampler_backend@data.sampler.backend=openai with a served "
            "model, or =hf"
        ) from None


def free_memory_share(device: torch.device, margin: int = MEMORY_MARGIN) -> float:
    """The share of ``device``'s memory free now, less ``margin`` bytes: the largest ``gpu_memory_utilization``
    a vLLM engine started now can have, since vLLM reserves that share of the device's total memory and
    refuses to start when less is free. Memory PyTorch's allocator caches without using goes back first."""
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    share = (free - margin) / total
    if share <= 0:
        raise RuntimeError(
            f"data.sampler.backend kind 'vllm': {free / 2**30:.1f} GiB of {device}'s {total / 2**30:.1f} GiB are "
            f"free, less than the {margin / 2**30:.1f} GiB margin; free the GPU or set "
            "data.sampler.backend.gpu_memory_utilization"
        )
    return share


@SAMPLER_BACKENDS.register("vllm")
class VLLMSampler(ModelSampler):
    """An in-process ``vllm.LLM`` of the checkpoint ``model``, built at the first batch that is not cached.

    It is given the prompts' token ids as the ``hf`` backend encodes them (:func:`bmc.data.tokenize.encode_prompts`,
    BOS exactly once) and the same end tokens, with one seeded ``SamplingParams`` per prompt; a completion
    with ``finish_reason == "length"`` is truncated. The other arguments go to ``vllm.LLM``.

    ``gpu_memory_utilization`` left unset (null) on a CUDA ``device`` (the trainer's of this rank, where the
    starting policy and any local judge already sit) is sized when the engine starts to what they leave free
    (:func:`free_memory_share`), so that the engine fits beside them; on any other device (a CPU-trained
    policy leaves the GPU free) vLLM keeps its own default. Set explicitly, it is used as it is.

    Sizing was chosen over moving the policy to the CPU while vLLM samples: the engine samples a checkpoint by
    path and never holds the policy (which a data-only run with this backend does not even build); the free
    memory counts everything already on the device, the policy, a judge's model, other processes; and moving
    the policy off and back copies its weights twice, the memory it frees staying in PyTorch's cache, out of
    vLLM's reach, unless emptied.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: str,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.vllm = _import_vllm()  # at construction: a missing package fails before any stage runs
        self.tokenizer, self.model, self.dtype, self.device = tokenizer, model, dtype, device
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
        return construct(
            cls, options, "data.sampler.backend kind 'vllm'", tokenizer=ctx.tokenizer, device=ctx.device
        )

    def _sized(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` with ``gpu_memory_utilization`` as the class docstring says: as set, sized to the free
        memory of a CUDA device, else left to vLLM (the key dropped)."""
        if options["gpu_memory_utilization"] is not None:
            return options
        if self.device is None or self.device.type != "cuda":
            return {k: v for k, v in options.items() if k != "gpu_memory_utilization"}
        share = free_memory_share(self.device)
        log.info("vllm: gpu_memory_utilization %.3f, the share of %s's memory the policy leaves free", share,
                 self.device)  # fmt: skip
        return {**options, "gpu_memory_utilization": share}

    def identity(self) -> Any:
        model = checkpoint_fingerprint(self.model, self.engine_options["revision"])  # a hub id: at its revision
        return {"backend": "vllm", "model": model, "dtype": self.dtype}

    def sample_batch(self, prompts: Sequence[str], first_index: int, settings: SamplingSettings) -> list[PromptSamples]:
        if self._engine is None:
            self._engine = self.vllm.LLM(model=self.model, dtype=self.dtype, **self._sized(self.engine_options))
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
            [Completion.from_finish_reason(c.text, c.finish_reason) for c in sorted(output.outputs, key=_index)]
            for output in outputs
        ]


def _index(choice: Any) -> int:
    """A vLLM ``CompletionOutput``'s position among its prompt's ``n`` samples."""
    return choice.index
