"""Editors for BMC's Bridging phase (Jiang et al., ICLR 2025, arXiv 2408.07471; METHODS.md 1.1).

An editor turns a pair (x, y_w, y_l) into a pseudo-winning response ỹ_w: the LOSING response y_l after the
smallest change that fixes what is wrong in it, with y_w as the reference. ỹ_w keeps y_l's wording and
structure wherever y_l is already fine, so ỹ_w and y_l differ in few, informative tokens (what BMC's
token weights then focus on).

- :class:`TaskEditor`: the built-in tasks' verifier-guided minimal correction (``task.minimal_fix``).
- :class:`LLMEditor`: the paper's method, an instruction-tuned LLM asked for the smallest fixing edit;
  ``use_reference=False`` is the published ablation without y_w in the instruction.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bmc.generation import Completion
from bmc.plugins import EDITORS
from bmc.precision import DEFAULT_PRECISION, Precision
from bmc.synthesis._common import ExampleIndex, check_template_fields, require_builtin_task
from bmc.synthesis.chat import ChatBackend, build_chat_backend, check_with_backend
from bmc.synthesis.failures import DEFAULT_MAX_FAILURE_SHARE, check_limit
from bmc.tasks import Example, Task

#: the problems of an LLM editor's reply that gave no edit at all (:mod:`bmc.synthesis.failures`)
REPLY_FAILURES = ("unparseable", "empty", "truncated")


@dataclass(frozen=True)
class Edit:
    """An editor's answer for one pair: ỹ_w, or no text and why (``problem``): ``unparseable`` (an LLM reply
    without a ``<revised>`` block), ``empty`` (an empty block or reply), ``truncated`` (an LLM reply the token
    budget cut off before its block closed), ``no fix`` (the task editor could not parse y_l). ``reply``: the
    LLM's reply where it gave no edit, quoted when too many fail."""

    text: str | None
    problem: str | None = None
    reply: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the editor's reply gave no edit (:data:`REPLY_FAILURES`), as opposed to an edit the gates
        turn down or a pair the task editor cannot fix."""
        return self.problem in REPLY_FAILURES


ON_REJECT = ("drop", "keep_original")


@dataclass(frozen=True)
class EditGates:
    """The quality gates on edits (:mod:`bmc.synthesis.bridging` applies them), set in ``conf/editor/*.yaml``
    beside the editor's own options: ``max_edit_ratio``, ``on_reject``, ``warn_drop_fraction`` and
    ``max_failure_share`` (:mod:`bmc.synthesis.failures`)."""

    max_edit_ratio: float | None = 2.0
    on_reject: str = "drop"
    warn_drop_fraction: float = 0.2
    max_failure_share: float = DEFAULT_MAX_FAILURE_SHARE

    def __post_init__(self) -> None:
        if self.max_edit_ratio is not None and self.max_edit_ratio <= 0:
            raise ValueError(f"editor.max_edit_ratio must be > 0 or null, got {self.max_edit_ratio}")
        if self.on_reject not in ON_REJECT:
            raise ValueError(f"editor.on_reject must be one of {ON_REJECT}, got {self.on_reject!r}")
        if not 0 <= self.warn_drop_fraction <= 1:
            raise ValueError(f"editor.warn_drop_fraction must be in [0, 1], got {self.warn_drop_fraction}")
        check_limit(self.max_failure_share, "editor")

    @classmethod
    def split(cls, editor_cfg: dict[str, Any]) -> tuple[EditGates, dict[str, Any]]:
        """(the gates, the editor's own options) of an editor config."""
        keys = cls.__dataclass_fields__
        gates = cls(**{k: v for k, v in editor_cfg.items() if k in keys})
        return gates, {k: v for k, v in editor_cfg.items() if k not in keys}


class Editor(ABC):
    """Makes pseudo-winning responses, or says why it could not."""

    @abstractmethod
    def edit_many(self, prompts: Sequence[str], winning: Sequence[str], losing: Sequence[str]) -> list[Edit]:
        """The edit of each (x, y_w, y_l), in order."""

    def edit(self, prompt: str, winning: str, losing: str) -> Edit:
        """The edit of one pair."""
        return self.edit_many([prompt], [winning], [losing])[0]


@EDITORS.register("task", supplied=("task", "examples"))
class TaskEditor(Editor):
    """``task.minimal_fix(example, y_l)``: fixes y_l's first error and what follows from it, keeping its correct
    text verbatim; the verifier knows the answer, so y_w is not needed. None where y_l cannot be parsed."""

    def __init__(self, task: Task | None, examples: Sequence[Example] | None) -> None:
        require_builtin_task(task, examples, "editor=task", "editor=llm")
        self.task = task
        self.examples = ExampleIndex(examples, "task editor")

    def edit_many(self, prompts: Sequence[str], winning: Sequence[str], losing: Sequence[str]) -> list[Edit]:
        fixes = [self.task.minimal_fix(self.examples[p], y_l) for p, y_l in zip(prompts, losing)]
        return [Edit(fix) if fix is not None else Edit(None, "no fix") for fix in fixes]


_OPEN_TAG = re.compile(r"<revised>", re.IGNORECASE)
_CLOSE_TAG = re.compile(r"</revised>", re.IGNORECASE)


def extract_revision(reply: Completion) -> Edit:
    """The revised response in an editor's reply: the text after the LAST ``<revised>`` up to ``</revised>``
    (or the end of a reply that finished without closing it), stripped.

    A reply the token budget cut off before its block closed is ``truncated``: its edit stops mid-way (an
    accepted one became a pseudo-winning response cut mid-sentence). A reply without ``<revised>`` is
    ``unparseable``: a model that ignores the answer format writes its own answer, not an edit (a real small
    instruct model did, and its whole replies became the pseudo-winning responses)."""
    text = reply.text
    opens = list(_OPEN_TAG.finditer(text))
    block = text[opens[-1].end() :] if opens else ""
    if reply.truncated and not _CLOSE_TAG.search(block):
        return Edit(None, "truncated", text)
    if not opens:
        return Edit(None, "unparseable", text) if text.strip() else Edit(None, "empty", text)
    revised = _CLOSE_TAG.split(block)[0].strip()
    return Edit(revised) if revised else Edit(None, "empty", text)


def _with_outer_whitespace(text: str, like: str) -> str:
    """``text`` with ``like``'s leading and trailing whitespace. Chat models drop a response's leading space,
    but responses are appended right after the prompt (the built-in tasks' start with one): without it the
    first token of ỹ_w would differ from y_l's for no reason and be marked by the diff masks."""
    stripped = like.strip()
    if not stripped:
        return text
    start = like.index(stripped)
    return like[:start] + text + like[start + len(stripped) :]


@EDITORS.register("llm", supplied=("task_type", "precision", "trainer_device"))
class LLMEditor(Editor):
    """The paper's editor: an LLM asked for the SMALLEST change to y_l that fixes it, at temperature 0.

    Args:
        backend: the chat backend, or its config block (:func:`~bmc.synthesis.chat.build_chat_backend`, given
            the trainer's ``precision`` and ``trainer_device``, which :func:`build_editor` supplies).
        templates: user-message templates by task type (``qa``, ``math``, ``instruct``, ``default``); the one
            for ``task_type`` is used, else ``default``. Each is formatted with ``{prompt}`` (x), ``{losing}``
            (y_l) and ``{reference}``, which becomes ``reference`` formatted with ``{winning}`` (y_w), or
            nothing when ``use_reference`` is off.
        task_type: which template to use (the pipeline passes the task's name).
        use_reference: show y_w as the reference (the paper's method); False is the published ablation.
        reference: the reference block, formatted with ``{winning}``.
        system: optional system message.
        max_tokens: the reply's token budget (a revision is about as long as y_l).

    The reply is expected between ``<revised>`` and ``</revised>`` (see :func:`extract_revision`); the result
    takes y_l's leading/trailing whitespace. A reply without the block is ``unparseable``, an empty one
    ``empty``, one cut off before the block closed ``truncated``.
    """

    def __init__(
        self,
        backend: ChatBackend | Mapping[str, Any],
        templates: Mapping[str, str],
        task_type: str = "default",
        use_reference: bool = True,
        reference: str = "{winning}",
        system: str | None = None,
        max_tokens: int = 1024,
        precision: Precision = DEFAULT_PRECISION,
        trainer_device: torch.device | None = None,
    ) -> None:
        for name, template in templates.items():
            check_template_fields(template, {"prompt", "losing", "reference"}, f"editor template {name!r}")
        check_template_fields(reference, {"winning"}, "the editor's reference block")
        if task_type not in templates and "default" not in templates:
            raise ValueError(
                f"no editor template for task type {task_type!r} and no 'default' one: {sorted(templates)}"
            )
        if not backend:
            raise ValueError("editor kind 'llm' needs a `backend` block (kind: openai | local)")
        if isinstance(backend, Mapping):
            backend = build_chat_backend(backend, precision=precision, device=trainer_device)
        self.backend, self.use_reference, self.reference = backend, use_reference, reference
        self.template = templates[task_type] if task_type in templates else templates["default"]
        self.system, self.max_tokens = system, int(max_tokens)

    def __repr__(self) -> str:
        return f"LLMEditor(backend={self.backend!r})"

    def messages(self, prompt: str, winning: str, losing: str) -> list[dict[str, str]]:
        """The conversation asking for one edit."""
        reference = self.reference.format(winning=winning) if self.use_reference else ""
        user = self.template.format(prompt=prompt, losing=losing, reference=reference)
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": user}]

    def edit_many(self, prompts: Sequence[str], winning: Sequence[str], losing: Sequence[str]) -> list[Edit]:
        conversations = [self.messages(x, y_w, y_l) for x, y_w, y_l in zip(prompts, winning, losing)]
        replies = self.backend.complete_many(conversations, temperature=0.0, max_tokens=self.max_tokens)
        edits = [extract_revision(reply) for reply in replies]
        return [Edit(_with_outer_whitespace(e.text, y_l)) if e.text is not None else e for e, y_l in zip(edits, losing)]


def build_editor(
    cfg: Mapping[str, Any],
    *,
    task: Task | None = None,
    examples: Sequence[Example] | None = None,
    task_type: str = "default",
    precision: Precision = DEFAULT_PRECISION,
    device: torch.device | None = None,
) -> Editor:
    """The editor of ``conf/editor/<kind>.yaml``, the class :data:`bmc.plugins.EDITORS` has for ``kind`` with
    the file's other keys, less the gates (:class:`EditGates`), as its options; the kind takes what it needs
    of the built-in ``task``, its ``examples``, the ``task_type`` (which template an LLM editor uses), the
    trainer's ``precision`` and ``device`` (its device on this rank).
    """
    _, options = EditGates.split(dict(cfg))  # validated here, applied by the bridging stage
    kind = options.pop("kind", None)
    return EDITORS.build(kind, options, task=task, examples=examples, task_type=task_type, precision=precision,
                         trainer_device=device)  # fmt: skip


def check_editor(cfg: Mapping[str, Any]) -> None:
    """An editor config's kind, keys and gates, and its backend's, checked without building anything."""
    check_with_backend(EDITORS, EditGates.split(dict(cfg))[1])
