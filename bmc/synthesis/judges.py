"""Pairwise judges for iterative pairwise ranking (METHODS.md 2.1): a task's verifier, a scalar reward model,
or an LLM asked for a verdict.

A single judgment ``prefer(x, first, second)`` puts ``first`` in slot A and returns +1 (A better), −1
(B better) or 0 (tie); ``calls`` counts single judgments. Asking both orders to cancel position bias is
:func:`compare`'s job (:meth:`Judge.compare`), which iterative pairwise ranking builds on.

An LLM judge's reply without a verdict counts as a tie and is recorded per prompt with its reason
(:meth:`Judge.take_failures`): the stages that judge stop when more than ``judge.max_failure_share`` of the
replies gave none (:mod:`bmc.synthesis.failures`).
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bmc.devices import accelerator_device
from bmc.models import _torch_dtype
from bmc.plugins import JUDGES
from bmc.precision import DEFAULT_PRECISION, Precision
from bmc.synthesis._common import ExampleIndex, check_template_fields, require_builtin_task, sign
from bmc.synthesis.chat import ChatBackend, build_chat_backend, check_with_backend
from bmc.synthesis.failures import ReplyFailures, split_limit
from bmc.synthesis.local_models import model_dtype
from bmc.tasks import Example, Task

log = logging.getLogger(__name__)


class Judge(ABC):
    """Compares two responses to one prompt. Safe to call from several threads at once (one prompt each):
    ``max_concurrency`` is how many prompts are worth judging at once (1 unless the judge waits on a server)."""

    max_concurrency: int = 1

    def __init__(self) -> None:
        self.calls = 0
        # replies that gave no verdict (counted as ties), per prompt until taken: only an LLM judge has them
        self._failures: dict[str, ReplyFailures] = {}
        self._lock = threading.Lock()  # the counters are updated from the threads judging different prompts

    def take_failures(self, prompt: str) -> ReplyFailures:
        """The replies without a verdict among ``prompt``'s judgments since the last take (each was a tie), by
        reason, and forget them: a stage takes them once it has judged a prompt, to keep with its result."""
        with self._lock:
            return self._failures.pop(prompt, ReplyFailures())

    def _failed(self, prompt: str, reason: str, reply: str) -> None:
        """Record a reply to one of ``prompt``'s judgments that gave no verdict."""
        with self._lock:
            self._failures.setdefault(prompt, ReplyFailures()).add(reason, reply)

    def prepare(self, items: Sequence[tuple[str, str]]) -> None:
        """Told every (prompt, response) that the comparisons to come will judge, across prompts: a judge that
        gains from scoring them together does so now (a reward model: full batches, not one prompt's few
        responses at a time). The others need nothing."""
        return None

    def prefer(self, prompt: str, first: str, second: str) -> int:
        """ONE judgment with ``first`` in slot A: +1 first better, −1 second better, 0 tie."""
        return self.prefer_many(prompt, [(first, second)])[0]

    def prefer_many(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """One judgment per (first, second) pair, in order; counts ``len(pairs)`` calls."""
        with self._lock:
            self.calls += len(pairs)
        return self._verdicts(prompt, pairs)

    @abstractmethod
    def _verdicts(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """The single-order verdicts of ``pairs`` (the subclass's judging, without bookkeeping)."""

    def compare(self, prompt: str, a: str, b: str) -> int:
        """Both-order verdict from a's point of view (two calls): see :func:`compare`."""
        return compare(self, prompt, a, b)


def compare(judge: Judge, prompt: str, a: str, b: str) -> int:
    """Both-order verdict from a's point of view: +1 a better, −1 b better, 0 tie (including a split vote).

    sign(prefer(x, a, b) − prefer(x, b, a)): two single judgments, asked together so that a backend that can
    run them concurrently does.
    """
    first, second = judge.prefer_many(prompt, [(a, b), (b, a)])
    return sign(first - second)


class PointwiseJudge(Judge):
    """A judge that scores each response alone; a judgment is the sign of the score difference, so it has no
    position bias (both orders agree)."""

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response); higher is better."""

    def _verdicts(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[int]:
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))
        scores = dict(zip(texts, self.score([prompt] * len(texts), texts)))
        return [sign(scores[first] - scores[second]) for first, second in pairs]


@JUDGES.register("verifier", supplied=("task", "examples"))
class VerifierJudge(PointwiseJudge):
    """A built-in task's verifier: ``task.score(example, response)`` in [0, 1]; equal scores tie."""

    def __init__(self, task: Task | None, examples: Sequence[Example] | None) -> None:
        require_builtin_task(task, examples, "judge=verifier", "judge=llm or judge=reward_model")
        super().__init__()
        self.task = task
        self.examples = ExampleIndex(examples, "verifier judge")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [self.task.score(self.examples[p], r) for p, r in zip(prompts, responses)]


@JUDGES.register("reward_model", supplied=("precision", "trainer_device"))
class RewardModelJudge(PointwiseJudge):
    """A scalar reward model: any ``AutoModelForSequenceClassification`` checkpoint with ``num_labels=1``.

    Its input is ``prompt + response`` (the format the policy was trained on), or with
    ``use_chat_template`` the reward model's own chat template applied to a user turn (the prompt) and an
    assistant turn (the response), as most published reward models expect. Scores are cached in memory per
    (prompt, response), so IPR's repeated comparisons and the ``rm_score`` baseline score each text once.

    Args:
        path: checkpoint folder or hub id.
        batch_size: texts per forward pass.
        max_length: inputs longer than this many tokens are cut from the right (None: no limit).
        dtype: float32, bfloat16 or float16; None: ``precision``'s compute dtype (:func:`model_dtype`).
        device: torch device; None: ``trainer_device``, else this process's own GPU (``cuda:<LOCAL_RANK>``)
            when there is one, else the CPU.
        use_chat_template: format with the reward model's chat template (see above).
        trust_remote_code: run code shipped with the checkpoint (off unless you trust it).
        revision: hub revision.
        precision, trainer_device: the trainer's, supplied by :func:`build_judge` (not config keys).
    """

    def __init__(
        self,
        path: str | None,
        batch_size: int = 16,
        max_length: int | None = 1024,
        dtype: str | None = None,
        device: str | torch.device | None = None,
        use_chat_template: bool = False,
        trust_remote_code: bool = False,
        revision: str | None = None,
        precision: Precision = DEFAULT_PRECISION,
        trainer_device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if not path:
            raise ValueError("the reward-model judge needs `path`: an AutoModelForSequenceClassification checkpoint")
        kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        dtype = _torch_dtype(model_dtype(dtype, precision))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=dtype, **kwargs)
        if self.model.config.num_labels != 1:
            raise ValueError(f"{path} has num_labels={self.model.config.num_labels}; a reward model needs 1")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            # The model reads its score at the last non-pad token, which it finds through pad_token_id.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        # each rank its own GPU: the ranks of a multi-GPU run would otherwise all load onto the first
        device = device if device is not None else trainer_device
        self.device = torch.device(device) if device is not None else accelerator_device("cuda")
        self.model.to(self.device).eval()
        self.batch_size, self.max_length, self.use_chat_template = int(batch_size), max_length, use_chat_template
        self._cache: dict[tuple[str, str], float] = {}

    def _text(self, prompt: str, response: str) -> str:
        if not self.use_chat_template:
            return prompt + response
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def prepare(self, items: Sequence[tuple[str, str]]) -> None:
        self.score([p for p, _ in items], [r for _, r in items])

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Reward r(x, y) of each (prompt, response); batched (texts of similar length together, for less
        padding), cached per pair."""
        keys = list(zip(prompts, responses))
        todo = sorted((k for k in dict.fromkeys(keys) if k not in self._cache), key=lambda k: len(k[0]) + len(k[1]))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            inputs = self.tokenizer(
                [self._text(p, r) for p, r in batch],
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                # A chat template writes its own special tokens.
                add_special_tokens=not self.use_chat_template,
                return_tensors="pt",
            ).to(self.device)
            rewards = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, 0]
            self._cache.update(zip(batch, rewards.float().tolist()))
        return [self._cache[k] for k in keys]


_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)
_VERDICT_VALUE = {"A": 1, "B": -1, "C": 0}


def parse_verdict(text: str) -> int | None:
    """+1 / −1 / 0 for the LAST ``[[A]]`` / ``[[B]]`` / ``[[C]]`` in ``text`` (whitespace and case tolerated:
    the explanation before it may quote the format), None if there is none."""
    matches = _VERDICT.findall(text)
    return _VERDICT_VALUE[matches[-1].upper()] if matches else None


@JUDGES.register("llm", supplied=("precision", "trainer_device"))
class LLMJudge(Judge):
    """An LLM asked which of two responses is better (MT-Bench pairwise style), at temperature 0.

    ``template`` is the user message, formatted with ``{prompt}``, ``{a}`` (slot A) and ``{b}`` (slot B); it
    (or ``system``) must ask for a final verdict ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). The last verdict in
    the reply counts. A reply without one is a tie, recorded as ``unparseable`` (:meth:`Judge.take_failures`);
    so is a reply the token budget cut off, as ``truncated``, whatever it holds: its final verdict never came,
    and a verdict before the cut may be the explanation quoting the format. Up to the backend's
    ``max_concurrency`` prompts are judged at once. ``backend``: a chat backend, or its config block
    (:func:`~bmc.synthesis.chat.build_chat_backend`, given the trainer's ``precision`` and ``trainer_device``).
    """

    def __init__(
        self,
        backend: ChatBackend | Mapping[str, Any],
        template: str,
        system: str | None = None,
        max_tokens: int = 1024,
        precision: Precision = DEFAULT_PRECISION,
        trainer_device: torch.device | None = None,
    ) -> None:
        super().__init__()
        check_template_fields(template, {"prompt", "a", "b"}, "the LLM judge's template")
        if not backend:
            raise ValueError("judge kind 'llm' needs a `backend` block (kind: openai | local)")
        if isinstance(backend, Mapping):
            backend = build_chat_backend(backend, precision=precision, device=trainer_device)
        self.backend, self.template, self.system, self.max_tokens = backend, template, system, int(max_tokens)
        self.max_concurrency = backend.max_concurrency

    def __repr__(self) -> str:
        return f"LLMJudge(backend={self.backend!r})"

    def messages(self, prompt: str, first: str, second: str) -> list[dict[str, str]]:
        """The conversation of one judgment, ``first`` in slot A."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": self.template.format(prompt=prompt, a=first, b=second)}]

    def _verdicts(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[int]:
        replies = self.backend.complete_many(
            [self.messages(prompt, first, second) for first, second in pairs],
            temperature=0.0,
            max_tokens=self.max_tokens,
        )
        verdicts = []
        for reply in replies:
            verdict = None if reply.truncated else parse_verdict(reply.text)
            if verdict is None:
                reason = "truncated" if reply.truncated else "unparseable"
                self._failed(prompt, reason, reply.text)
                # one line per reply at debug level: the stage warns once with the share, or stops
                log.debug("LLM judge reply without a verdict (%s), counted as a tie: %r", reason, reply.text[-200:])
            verdicts.append(0 if verdict is None else verdict)
        return verdicts


def build_judge(
    cfg: Mapping[str, Any],
    *,
    task: Task | None = None,
    examples: Sequence[Example] | None = None,
    precision: Precision = DEFAULT_PRECISION,
    device: torch.device | None = None,
) -> Judge:
    """The judge of ``conf/judge/<kind>.yaml``, the class :data:`bmc.plugins.JUDGES` has for ``kind`` with
    the file's other keys as its options; the kind takes what it needs of the built-in ``task``, its
    ``examples``, the trainer's ``precision`` and ``device`` (its device on this rank). ``max_failure_share``
    is checked here and applied by the stages that judge (:mod:`bmc.synthesis.failures`).
    """
    _, options = split_limit(cfg, "judge")
    kind = options.pop("kind", None)
    return JUDGES.build(kind, options, task=task, examples=examples, precision=precision, trainer_device=device)


def check_judge(cfg: Mapping[str, Any]) -> None:
    """A judge config's kind, keys and ``max_failure_share``, and its backend's, checked without building."""
    check_with_backend(JUDGES, split_limit(cfg, "judge")[1])
