"""The ``task`` sampler backend: a built-in task's gold response and realistic errors, no model."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bmc.plugins import SAMPLER_BACKENDS, construct
from bmc.synthesis._common import ExampleIndex
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.sampler.backend import SamplerBackend, SamplingSettings
from bmc.tasks import Example, Task


@SAMPLER_BACKENDS.register("task")
class TaskSampler(SamplerBackend):
    """A built-in task's own generator instead of a model (:func:`task_completions`): instant and
    deterministic, so it is not cached."""

    def __init__(self, task: Task, examples: ExampleIndex) -> None:
        self.task, self.examples = task, examples

    @classmethod
    def from_options(cls, options: dict[str, Any], ctx: SynthesisContext) -> TaskSampler:
        if ctx.verifier is None:
            raise ValueError("data.sampler.backend=task needs a built-in task (task=math|qa|instruct)")
        return construct(
            cls, options, "data.sampler.backend kind 'task'", task=ctx.verifier, examples=ctx.examples
        )

    def sample(
        self, prompts: Sequence[str], settings: SamplingSettings, cache_root: str | Path
    ) -> list[dict[str, Any]]:
        return task_completions(self.task, [self.examples[p] for p in prompts], n=settings.n, seed=settings.seed)


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
