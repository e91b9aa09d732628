"""What every sampler backend shares: :class:`SamplingSettings`, the :class:`SamplerBackend` interface and
:class:`ModelSampler`, the cached base of the backends that run a model.

The model backends sample from the same rendered prompt text (the data stages' prompts are already rendered
with the chat template, :mod:`bmc.data.render`), write the same cache entry, ``{prompt, completions: [n
strings], truncated: [n bools]}`` per prompt under ``<cache>/samples`` (keyed by the prompts, the model's
identity and :class:`SamplingSettings`), and resume the same way (:func:`bmc.synthesis.store.resumable_map`).
A sample is ``truncated`` when it ran out of ``max_new_tokens`` before its end token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from bmc.generation import Completion
from bmc.synthesis._common import MISSING
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.store import resumable_map

#: the n samples of one prompt
PromptSamples = list[Completion]


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


def require_options(options: Mapping[str, Any], keys: Sequence[str], kind: str, example: str) -> None:
    """ValueError naming the ``keys`` a ``kind`` backend's config block leaves unset, with an ``example``
    of the overrides that set them."""
    missing = [k for k in keys if options.get(k) in (None, "", MISSING)]
    if missing:
        raise ValueError(
            f"data.sampler.backend kind {kind!r} needs {missing} (conf/sampler_backend/{kind}.yaml), e.g. "
            f"sampler_backend@data.sampler.backend={kind} {example}"
        )
