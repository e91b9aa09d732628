"""Completions to build pairs from: N per prompt, from a sampler backend (``data.sampler.backend``,
``conf/sampler_backend/*.yaml``), looked up by its ``kind`` in :data:`SAMPLER_BACKENDS`:

- ``hf``: the starting policy in this process with HF ``generate``, batched on the training device;
- ``openai``: an OpenAI-compatible completions endpoint serving the checkpoint (vLLM, llama.cpp server, TGI),
  ``n`` samples per request, up to ``max_concurrency`` prompts in flight, retries and backoff of
  :class:`~bmc.synthesis.chat.OpenAIEndpoint`;
- ``vllm``: an in-process ``vllm.LLM`` (the optional ``vllm`` package; GPU);
- ``task``: a built-in task's gold response and realistic errors, no model (:func:`task_completions`).

The model backends sample from the same rendered prompt text (the data stages' prompts are already rendered
with the chat template, :mod:`bmc.data.render`), write the same cache entry, ``{prompt, completions: [n
strings], truncated: [n bools]}`` per prompt under ``<cache>/samples`` (keyed by the prompts, the model's
identity and :class:`SamplingSettings`), and resume the same way (:func:`bmc.synthesis.store.resumable_map`).
A sample is ``truncated`` when it ran out of ``max_new_tokens`` before its end token.
"""

from __future__ import annotations

import importlib
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.cache import checkpoint_fingerprint
from bmc.data.tokenize import encode_prompts, served_prompt
from bmc.generation import generate, stop_token_ids
from bmc.synthesis._common import ExampleIndex, build_from_options, ordered_map
from bmc.synthesis.chat import MISSING, OpenAIEndpoint
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.store import resumable_map
from bmc.tasks import Example, Task

#: n (text, truncated) samples of one prompt
PromptSamples = list[tuple[str, bool]]


@dataclass(frozen=True)
class SamplingSettings:
    """``data.sampler`` besides its backend: ``n`` completions per prompt at ``temperature`` / ``top_p``, at
    most ``max_new_tokens`` each, ``prompts_per_batch`` prompts per cached batch, seeded from ``seed``."""

    n: int = 5
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 64
    prompts_per_batch: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or self.prompts_per_batch < 1:
            raise ValueError(
                "data.sampler needs n, max_new_tokens and prompts_per_batch >= 1, got "
                f"{self.n}, {self.max_new_tokens}, {self.prompts_per_batch}"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                f"data.sampler needs temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}"
            )

    def prompt_seed(self, index: int) -> int:
        """The seed of the prompt at ``index`` (of the batch starting at ``index`` for ``hf``): a resumed run
        samples exactly what an uninterrupted one would."""
        return self.seed * 1_000_003 + index


class SamplerBackend(ABC):
    """Draws ``n`` completions per prompt."""

    #: whether the data stages must build the starting policy in this process for it
    needs_policy_model: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_options(cls, options: dict[str, Any], ctx: SynthesisContext) -> SamplerBackend:
        """The backend from its config block (without ``kind``) and the run's synthesis context."""

    @abstractmethod
    def sample(
        self, prompts: Sequence[str], settings: SamplingSettings, cache_root: str | Path
    ) -> list[dict[str, Any]]:
        """``[{prompt, completions: [n strings], truncated: [n bools]}]`` in prompt order."""


class ModelSampler(SamplerBackend):
    """A backend that runs a model: :meth:`sample` caches its batches and resumes an interrupted run."""

    @abstractmethod
    def identity(self) -> Any:
        """What identifies the sampled model in the cache key (never a secret)."""

    @abstractmethod
    def sample_batch(self, prompts: Sequence[str], first_index: int, settings: SamplingSettings) -> list[PromptSamples]:
        """The samples of each prompt of one batch, in order; ``first_index`` is the batch's first prompt."""

    def sample(
        self, prompts: Sequence[str], settings: SamplingSettings, cache_root: str | Path
    ) -> list[dict[str, Any]]:
        def process(batch: list[str], first_index: int) -> list[dict[str, Any]]:
            drawn = self.sample_batch(batch, first_index, settings)
            return [
                {"prompt": p, "completions": [t for t, _ in s], "truncated": [c for _, c in s]}
                for p, s in zip(batch, drawn)
            ]

        payload = {"model": self.identity(), **{k: v for k, v in asdict(settings).items() if k != "prompts_per_batch"}}
        return resumable_map(
            cache_root, "samples", payload, list(prompts), process, batch_size=settings.prompts_per_batch
        )


class HFSampler(ModelSampler):
    """The starting policy in this process: HF ``generate`` on ``n`` copies of each prompt of a batch, the
    batch seeded from its position."""

    needs_policy_model = True

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_key: Any) -> None:
        self.model, self.tokenizer, self.model_key = model, tokenizer, model_key

    @classmethod
    def from_options(cls, options: dict[str, Any], ctx: SynthesisContext) -> HFSampler:
        if ctx.model is None:
            raise ValueError(
                "sampling needs the starting policy's model; this run's data stages were set up without it"
            )
        # the SFT checkpoint's fingerprint, as before the backends existed: earlier cached samples stay valid
        return build_from_options(
            cls, options, "data.sampler.backend kind 'hf'", model=ctx.model, tokenizer=ctx.tokenizer,
            model_key=ctx.model_key,
        )  # fmt: skip

    def identity(self) -> Any:
        return self.model_key

    def sample_batch(self, prompts: Sequence[str], first_index: int, settings: SamplingSettings) -> list[PromptSamples]:
        torch.manual_seed(settings.prompt_seed(first_index))
        n = settings.n
        outputs = generate(
            self.model,
            self.tokenizer,
            [p for p in prompts for _ in range(n)],
            settings.max_new_tokens,
            batch_size=len(prompts) * n,
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            desc="sample",
        )
        return [outputs[i * n : (i + 1) * n] for i in range(len(prompts))]


def _required(options: Mapping[str, Any], keys: Sequence[str], kind: str, example: str) -> None:
    missing = [k for k in keys if options.get(k) in (None, "", MISSING)]
    if missing:
        raise ValueError(
            f"data.sampler.backend kind {kind!r} needs {missing} (conf/sampler_backend/{kind}.yaml), e.g. "
            f"sampler_backend@data.sampler.backend={kind} {example}"
        )


class OpenAISampler(ModelSampler):
    """``POST {base_url}/completions`` per prompt with the rendered prompt text and ``n``, ``temperature``,
    ``top_p``, ``max_tokens`` and a per-prompt ``seed``; up to the endpoint's ``max_concurrency`` prompts in
    flight. A choice with ``finish_reason == "length"`` is truncated. With the policy's ``tokenizer``, a
    prompt that begins with the BOS the server will add itself is sent without it (:func:`served_prompt`).

    ``max_n_per_request`` splits a prompt's ``n`` samples over several requests of at most that many, request
    ``j`` seeded ``seed + j * REQUEST_SEED_STRIDE``: for servers that return one choice whatever ``n`` asks for
    (llama-cpp-python's) set it to 1. None: all ``n`` in one request.
    """

    #: seed offset between the requests of one prompt: far above the prompt seeds of one run's prompts
    REQUEST_SEED_STRIDE = 1 << 24

    def __init__(
        self,
        endpoint: OpenAIEndpoint,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_n_per_request: int | None = None,
    ) -> None:
        if max_n_per_request is not None and max_n_per_request < 1:
            raise ValueError(f"data.sampler.backend.max_n_per_request must be >= 1 or null, got {max_n_per_request}")
        self.endpoint = endpoint
        self.tokenizer = tokenizer
        self.max_n_per_request = max_n_per_request

    @classmethod
    def from_options(cls, options: dict[str, Any], ctx: SynthesisContext) -> OpenAISampler:
        _required(options, ["base_url", "model"], "openai", "data.sampler.backend.base_url=http://127.0.0.1:8000/v1 "
                  "data.sampler.backend.model=served-name")  # fmt: skip
        endpoint_options = {k: v for k, v in options.items() if k != "max_n_per_request"}
        endpoint = build_from_options(OpenAIEndpoint, endpoint_options, "data.sampler.backend kind 'openai'")
        return cls(endpoint, ctx.tokenizer, options.get("max_n_per_request"))

    def identity(self) -> Any:
        # the served model's name, not the URL: the same checkpoint behind another port is the same samples
        identity = {"backend": "openai", "model": self.endpoint.model}
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
    return [(c["text"], c.get("finish_reason") == "length") for c in choices]


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
        _required(options, ["model"], "vllm", "data.sampler.backend.model=/ckpts/policy")
        return build_from_options(cls, options, "data.sampler.backend kind 'vllm'", tokenizer=ctx.tokenizer)

    def identity(self) -> Any:
        return {"backend": "vllm", "model": checkpoint_fingerprint(self.model), "dtype": self.dtype}

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


class TaskSampler(SamplerBackend):
    """A built-in task's own generator instead of a model (:func:`task_completions`): instant and
    deterministic, so it is not cached."""

    def __init__(self, task: Task, examples: ExampleIndex) -> None:
        self.task, self.examples = task, examples

    @classmethod
    def from_options(cls, options: dict[str, Any], ctx: SynthesisContext) -> TaskSampler:
        if ctx.verifier is None:
            raise ValueError("data.sampler.backend=task needs a built-in task (task=math|qa|instruct)")
        return build_from_options(
            cls, options, "data.sampler.backend kind 'task'", task=ctx.verifier, examples=ctx.examples
        )

    def sample(
        self, prompts: Sequence[str], settings: SamplingSettings, cache_root: str | Path
    ) -> list[dict[str, Any]]:
        return task_completions(self.task, [self.examples[p] for p in prompts], n=settings.n, seed=settings.seed)


#: ``data.sampler.backend.kind`` -> its backend class
SAMPLER_BACKENDS: dict[str, type[SamplerBackend]] = {
    "hf": HFSampler,
    "openai": OpenAISampler,
    "vllm": VLLMSampler,
    "task": TaskSampler,
}


def sampler_backend_class(cfg: str | Mapping[str, Any] | None) -> type[SamplerBackend]:
    """The backend class of a ``data.sampler.backend`` block, or of a bare name (``data.sampler.backend=hf``:
    that backend with its defaults); None is ``hf``."""
    kind = cfg if cfg is None or isinstance(cfg, str) else cfg.get("kind")
    kind = "hf" if kind is None else kind
    if kind not in SAMPLER_BACKENDS:
        raise ValueError(f"data.sampler.backend kind must be one of {sorted(SAMPLER_BACKENDS)}, got {kind!r}")
    return SAMPLER_BACKENDS[kind]


def build_sampler_backend(cfg: str | Mapping[str, Any] | None, ctx: SynthesisContext) -> SamplerBackend:
    """The backend of a ``data.sampler.backend`` block (see :func:`sampler_backend_class`)."""
    options = {k: v for k, v in cfg.items() if k != "kind"} if isinstance(cfg, Mapping) else {}
    return sampler_backend_class(cfg).from_options(options, ctx)


def task_completions(task: Task, examples: Sequence[Example], n: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """``[{prompt, completions, truncated}]`` like :meth:`SamplerBackend.sample`, from the task instead of a
    model: each prompt's gold response and ``n - 1`` of the generator's realistic errors, in a seeded order.

    For runs whose model is too small to answer in the task's format at all (``debug=default``), where sampled
    completions would give the verifier, the judges and the task editor nothing to work on.
    """
    samples = []
    for example in examples:
        rng = random.Random(f"{seed}/{example.prompt}")
        completions = [example.gold] + [task.corrupt(example, rng) for _ in range(n - 1)]
        rng.shuffle(completions)
        samples.append({"prompt": example.prompt, "completions": completions, "truncated": [False] * n})
    return samples
