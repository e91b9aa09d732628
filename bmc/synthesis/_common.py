"""Helpers shared by the judges, editors, samplers and their factories: verdict signs, the unset-value marker
``MISSING``, template placeholders, prompt -> Example lookup, a bounded concurrent map that
keeps input order."""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bmc.tasks import Example

T = TypeVar("T")
R = TypeVar("R")
#: an unset mandatory value (``???``) as it reads after OmegaConf.to_container
MISSING = "???"


def sign(x: float) -> int:
    """+1, 0 or -1: a verdict from a score difference or a sum of verdicts."""
    return (x > 0) - (x < 0)


def ordered_map(fn: Callable[[T], R], items: Sequence[T], max_concurrency: int) -> list[R]:
    """``[fn(item) for item in items]``, with up to ``max_concurrency`` calls running at once in threads (for
    calls that wait on a server); 1 runs them in this thread. The first exception raised is re-raised."""
    if max_concurrency <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(max_concurrency, len(items))) as pool:
        return list(pool.map(fn, items))


def require_builtin_task(task: Any, examples: Any, option: str, alternatives: str) -> None:
    """The verifier-based judge and editor need a built-in task and its examples."""
    if task is None or examples is None:
        raise ValueError(
            f"{option} needs a built-in task with a verifier (task=math|qa|instruct); "
            f"with other data use {alternatives}"
        )


def check_template_fields(template: str, fields: set[str], name: str) -> None:
    """Fail at construction, not mid-run, on a template whose placeholders are not exactly ``fields``."""
    found = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if found != fields:
        raise ValueError(
            f"{name} must use exactly the placeholders {sorted(fields)}, found {sorted(found)}; "
            "write literal braces as {{ and }}"
        )


class ExampleIndex:
    """Finds a built-in task's Example by its prompt text (what the synthesis stages carry around)."""

    def __init__(self, examples: Sequence[Example], owner: str) -> None:
        self._by_prompt = {e.prompt: e for e in examples}
        self._owner = owner

    def __getitem__(self, prompt: str) -> Example:
        try:
            return self._by_prompt[prompt]
        except KeyError:
            # Usually a prompt rewritten on the way (e.g. by a chat template), so the verifier cannot check it.
            raise KeyError(
                f"{self._owner}: no task example has the prompt {prompt[:80]!r}"
                f"{'...' if len(prompt) > 80 else ''} ({len(self._by_prompt)} examples known)"
            ) from None
