"""The ``hf`` sampler backend: the starting policy in this process with HF ``generate``, batched on the
training device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.generation import generate
from bmc.plugins import SAMPLER_BACKENDS, construct
from bmc.precision import DEFAULT_PRECISION, Precision
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.sampler.backend import ModelSampler, PromptSamples, SamplingSettings


@SAMPLER_BACKENDS.register("hf")
class HFSampler(ModelSampler):
    """The starting policy in this process: HF ``generate`` on ``n`` copies of each prompt of a batch, the
    batch seeded from its position, in the trainer's ``precision`` (:mod:`bmc.precision`)."""

    needs_policy_model = True

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        model_key: Any,
        precision: Precision = DEFAULT_PRECISION,
    ) -> None:
        self.model, self.tokenizer, self.model_key, self.precision = model, tokenizer, model_key, precision

    @classmethod
    def from_options(cls, options: dict[str, Any], ctx: SynthesisContext) -> HFSampler:
        if ctx.model is None:
            raise ValueError(
                "sampling needs the starting policy's model; this run's data stages were set up without it"
            )
        # the SFT checkpoint's fingerprint, as before the backends existed: earlier cached samples stay valid
        return construct(
            cls, options, "data.sampler.backend kind 'hf'", model=ctx.model, tokenizer=ctx.tokenizer,
            model_key=ctx.model_key, precision=ctx.precision,
        )  # fmt: skip

    def identity(self) -> Any:
        # the checkpoint's fingerprint and the precision, none for 32-true: earlier samples keep their entries
        return {**self.model_key, **self.precision.key_fields()}

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
            precision=self.precision,
        )
        return [outputs[i * n : (i + 1) * n] for i in range(len(prompts))]
