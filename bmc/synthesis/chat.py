"""Chat backends for the LLM judge and the LLM editor: an OpenAI-compatible HTTP endpoint or a local model.

Both answer ``complete(messages)`` for one conversation (a list of ``{"role", "content"}`` dicts) and
``complete_many(conversations)`` in input order, each reply a :class:`~bmc.generation.Completion`: its text and
whether the token budget cut it off (the server's ``finish_reason == "length"``, or no end token within a local
model's budget), which the judges' and editors' gates read. ``temperature=0`` is greedy: judges and editors
must be reproducible. The HTTP client is :class:`~bmc.synthesis.endpoint.OpenAIEndpoint`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bmc.generation import Completion, generate
from bmc.models import load_causal_lm
from bmc.plugins import CHAT_BACKENDS, Registry
from bmc.precision import DEFAULT_PRECISION, Precision
from bmc.synthesis._common import MISSING, ordered_map
from bmc.synthesis.endpoint import OpenAIEndpoint
from bmc.synthesis.local_models import model_dtype

Message = Mapping[str, str]


class ChatBackend(ABC):
    """Something that answers chat conversations.

    ``max_concurrency`` is how many callers may usefully ask at once from different threads (a judge fans out
    across prompts up to it): 1 for a model in this process, the request cap for a server.
    """

    max_concurrency: int = 1

    @abstractmethod
    def complete(
        self, messages: Sequence[Message], *, temperature: float = 0.0, max_tokens: int | None = None
    ) -> Completion:
        """The assistant's reply to one conversation; ``max_tokens=None`` uses the backend's default."""

    def complete_many(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> list[Completion]:
        """Replies to several conversations, in input order."""
        return [self.complete(m, temperature=temperature, max_tokens=max_tokens) for m in conversations]


@CHAT_BACKENDS.register("openai")
class OpenAIChat(OpenAIEndpoint, ChatBackend):
    """``POST {base_url}/chat/completions`` (OpenAI chat-completions JSON): :class:`OpenAIEndpoint`'s
    arguments, and ``max_tokens``, the default ``max_tokens`` of a request. ``revision`` and ``weights`` say
    which checkpoint the server serves: they key the cached judgments and edits
    (:func:`~bmc.synthesis.model_keys.served_model_key`), the requests do not send them."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_concurrency: int = 8,
        max_tokens: int = 1024,
        revision: str | None = None,
        weights: str | None = None,
    ) -> None:
        if model in (None, "", MISSING):
            raise ValueError("chat backend kind 'openai' needs `model`, the name the server serves the model under "
                             "(e.g. editor.backend.model=my-model)")  # fmt: skip
        if max_tokens < 1:
            raise ValueError(f"need max_tokens >= 1, got {max_tokens}")
        super().__init__(base_url, model, api_key_env, timeout_s, max_retries, backoff_s, max_concurrency)
        self.max_tokens = int(max_tokens)
        self.url = f"{self.base_url}/chat/completions"

    def complete(
        self, messages: Sequence[Message], *, temperature: float = 0.0, max_tokens: int | None = None
    ) -> Completion:
        body = {
            "messages": [dict(m) for m in messages],
            "temperature": temperature,
            "max_tokens": max_tokens or self.max_tokens,
        }
        return self.post("chat/completions", body, _reply, "chat completion")

    def complete_many(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> list[Completion]:
        """Up to ``max_concurrency`` requests in flight; the replies in input order."""
        return ordered_map(
            lambda m: self.complete(m, temperature=temperature, max_tokens=max_tokens),
            conversations,
            self.max_concurrency,
        )


def _reply(response: Mapping[str, Any]) -> Completion:
    """The first choice of a chat-completions reply; a null content (a refusal, a tool call) is no text."""
    choice = response["choices"][0]
    return Completion.from_finish_reason(choice["message"]["content"] or "", choice.get("finish_reason"))


def render_messages(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """The model's input text: its chat template if it has one, else ``"role: content"`` lines and
    ``"assistant:"``, so that a base model continues with the assistant's turn."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


@CHAT_BACKENDS.register("local", supplied=("precision", "trainer_device"))
class LocalChat(ChatBackend):
    """A local transformers causal LM; greedy at temperature 0, otherwise sampled at that temperature.

    Args:
        path, dtype, trust_remote_code, revision: :func:`bmc.models.load_causal_lm`'s; without a ``dtype`` the
            model loads in the trainer's ``precision``'s compute dtype (:func:`model_dtype`).
        max_new_tokens: default generation budget of a reply.
        batch_size: conversations generated together in :meth:`complete_many`.
        precision, trainer_device: the trainer's (the model is put on its device), supplied by the builder.
    """

    def __init__(
        self,
        path: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        precision: Precision = DEFAULT_PRECISION,
        trainer_device: torch.device | None = None,
    ) -> None:
        if path in (None, "", MISSING):
            raise ValueError("chat backend kind 'local' needs `path` (a causal LM folder or hub id)")
        model, tokenizer = load_causal_lm(
            path, model_dtype(dtype, precision), trust_remote_code=trust_remote_code, revision=revision
        )
        if trainer_device is not None:
            model.to(trainer_device)
        self.model: PreTrainedModel = model
        self.tokenizer: PreTrainedTokenizerBase = tokenizer
        self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)

    def __repr__(self) -> str:
        # the folder or hub id the model was loaded from: what an error about its replies must name
        path = getattr(self.model, "name_or_path", "")
        return f"LocalChat(model={type(self.model).__name__}, path={path!r}, max_new_tokens={self.max_new_tokens})"

    def complete(
        self, messages: Sequence[Message], *, temperature: float = 0.0, max_tokens: int | None = None
    ) -> Completion:
        return self.complete_many([messages], temperature=temperature, max_tokens=max_tokens)[0]

    def complete_many(
        self,
        conversations: Sequence[Sequence[Message]],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> list[Completion]:
        outputs = generate(
            self.model,
            self.tokenizer,
            [render_messages(self.tokenizer, m) for m in conversations],
            max_tokens or self.max_new_tokens,
            batch_size=self.batch_size,
            do_sample=temperature > 0,
            temperature=temperature,
            desc="chat",
        )
        return [Completion(text.strip(), truncated) for text, truncated in outputs]


def build_chat_backend(
    cfg: Mapping[str, Any], *, precision: Precision = DEFAULT_PRECISION, device: torch.device | None = None
) -> ChatBackend:
    """A backend from its config block (``conf/chat_backend/<kind>.yaml``, the ``backend`` of judge=llm /
    editor=llm): the class :data:`bmc.plugins.CHAT_BACKENDS` has for ``kind``, with the block's other keys;
    a local model loads with the trainer's ``precision`` unless its block sets a ``dtype``, on ``device``
    (the trainer's, on this rank)."""
    options = dict(cfg)
    kind = options.pop("kind", None)
    return CHAT_BACKENDS.build(kind, options, precision=precision, trainer_device=device)


def check_with_backend(registry: Registry, cfg: Mapping[str, Any]) -> None:
    """The ``kind`` and keys of a judge's or editor's config (``registry`` has its kinds) and of its ``backend``
    block, or of a backend block alone (``registry`` is :data:`CHAT_BACKENDS`), checked without loading or
    calling anything: the config check before any stage."""
    options = dict(cfg)
    registry.check(options.pop("kind", None), options)
    if isinstance(options.get("backend"), Mapping):
        check_with_backend(CHAT_BACKENDS, options["backend"])
