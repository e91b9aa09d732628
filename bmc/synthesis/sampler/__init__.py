"""Completions to build pairs from: N per prompt, from a sampler backend (``data.sampler.backend``,
``conf/sampler_backend/*.yaml``), looked up by its ``kind`` in :data:`bmc.plugins.SAMPLER_BACKENDS`, one
module a kind, each class registered where it is defined:

- ``hf``: the starting policy in this process with HF ``generate``, batched on the training device;
- ``openai``: an OpenAI-compatible completions endpoint serving the checkpoint (vLLM, llama.cpp server, TGI),
  ``n`` samples per request, up to ``max_concurrency`` prompts in flight, retries and backoff of
  :class:`~bmc.synthesis.endpoint.OpenAIEndpoint`;
- ``vllm``: an in-process ``vllm.LLM`` (the optional ``vllm`` package; GPU);
- ``task``: a built-in task's gold response and realistic errors, no model (:func:`task_completions`).

What the backends share, the settings, the interface and the cache of the model backends, is in
:mod:`bmc.synthesis.sampler.backend`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bmc.plugins import SAMPLER_BACKENDS
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.sampler.backend import SamplerBackend, SamplingSettings
from bmc.synthesis.sampler.hf import HFSampler
from bmc.synthesis.sampler.openai import OpenAISampler
from bmc.synthesis.sampler.task import TaskSampler, task_completions
from bmc.synthesis.sampler.vllm import VLLMSampler


def sampler_backend_class(cfg: str | Mapping[str, Any] | None) -> type[SamplerBackend]:
    """The backend class of a ``data.sampler.backend`` block, or of a bare name (``data.sampler.backend=hf``:
    that backend with its defaults); None is ``hf``."""
    kind = cfg if cfg is None or isinstance(cfg, str) else cfg.get("kind")
    return SAMPLER_BACKENDS.entry("hf" if kind is None else kind).target


def build_sampler_backend(cfg: str | Mapping[str, Any] | None, ctx: SynthesisContext) -> SamplerBackend:
    """The backend of a ``data.sampler.backend`` block (see :func:`sampler_backend_class`)."""
    options = {k: v for k, v in cfg.items() if k != "kind"} if isinstance(cfg, Mapping) else {}
    return sampler_backend_class(cfg).from_options(options, ctx)


__all__ = [
    "SAMPLER_BACKENDS",
    "HFSampler",
    "OpenAISampler",
    "SamplerBackend",
    "SamplingSettings",
    "TaskSampler",
    "VLLMSampler",
    "build_sampler_backend",
    "sampler_backend_class",
    "task_completions",
]
