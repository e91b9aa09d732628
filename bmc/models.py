"""Model sources: a tiny Llama built from config, or any causal LM checkpoint (local path or hub id).

Both are selected by ``conf/model/*.yaml`` through ``_target_`` and give the stages the same calls:
``tokenizer(texts)`` for the tokenizer alone (data stages that need no model), ``build(texts)`` for the
starting policy and tokenizer, ``load(path)`` to reload a checkpoint that a stage saved (the SFT warm start),
and ``chat_template()``: the tokenizer whose chat template renders conversational prompts, or None.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from bmc.cache import checkpoint_fingerprint
from bmc.tokenizer import train_bpe_tokenizer


def _torch_dtype(name: str) -> torch.dtype:
    # float64: what a local judge or editor model follows trainer.precision=64-true in (bmc.synthesis.local_models)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
    try:
        return dtypes[name]
    except KeyError:
        raise ValueError(f"model.dtype must be float32, bfloat16, float16 or float64, got {name!r}") from None


def load_causal_lm(
    path: str | Path,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer with ``from_pretrained`` (remote code only when asked for)."""
    tokenizer = load_tokenizer(path, trust_remote_code, revision)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "revision": revision}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_torch_dtype(dtype), **kwargs)
    return model, tokenizer


def load_tokenizer(
    path: str | Path, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """A checkpoint's tokenizer with ``from_pretrained``, with a pad token (remote code only when asked for)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are masked out everywhere.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ModelSource(Protocol):
    """Where the starting policy comes from (``conf/model/*.yaml``): :class:`TinyLlama` or :class:`PretrainedLM`."""

    def spec(self) -> dict[str, Any]:
        """What identifies the source in cache keys."""

    def tokenizer(self, texts: Sequence[str]) -> PreTrainedTokenizerBase:
        """The tokenizer alone (trained on ``texts`` where the source trains its own)."""

    def chat_template(self) -> PreTrainedTokenizerBase | None:
        """The tokenizer whose chat template renders conversational prompts, or None for plain lines."""

    def build(self, texts: Sequence[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The untrained starting policy and its tokenizer."""

    def load(self, path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """A checkpoint a stage saved, with its tokenizer."""

    def prepare_for_training(self, model: PreTrainedModel) -> PreTrainedModel:
        """``model`` set up for a training stage (e.g. gradient checkpointing)."""


@dataclass
class TinyLlama:
    """A small Llama-style causal LM built from config, with a BPE tokenizer trained on the task's text."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 512
    max_position_embeddings: int = 512
    dtype: str = "float32"
    attn_implementation: str | None = "sdpa"

    def spec(self) -> dict[str, Any]:
        return {"kind": "tiny", **asdict(self)}

    def tokenizer(self, texts: Sequence[str]) -> PreTrainedTokenizerBase:
        return train_bpe_tokenizer(texts, vocab_size=self.vocab_size)

    def chat_template(self) -> PreTrainedTokenizerBase | None:
        return None  # a locally trained tokenizer has no chat template: messages render as `role: content` lines

    def build(self, texts: Sequence[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        tokenizer = self.tokenizer(texts)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config).to(_torch_dtype(self.dtype))
        return model, tokenizer

    def load(self, path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_causal_lm(path, self.dtype, self.attn_implementation)

    def prepare_for_training(self, model: PreTrainedModel) -> PreTrainedModel:
        return model  # a toy model needs no memory savings


@dataclass
class PretrainedLM:
    """Any causal LM by local path or hub id, optionally trained through LoRA adapters (``peft``).

    With LoRA the reference model is the same network with its adapters disabled, so no second copy is
    held in memory.
    """

    path: str
    dtype: str = "float32"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    revision: str | None = None
    use_chat_template: bool = True
    lora: dict[str, Any] | None = field(default=None)
    gradient_checkpointing: bool = False

    def spec(self) -> dict[str, Any]:
        # gradient checkpointing trades compute for memory and changes no result: not part of cache keys
        options = {k: v for k, v in asdict(self).items() if k != "gradient_checkpointing"}
        # and the checkpoint by what it holds: a base rewritten in place is fine-tuned anew, not read from the cache
        return {"kind": "pretrained", **options, "weights": checkpoint_fingerprint(self.path, self.revision)}

    def prepare_for_training(self, model: PreTrainedModel) -> PreTrainedModel:
        """``model`` with activation (gradient) checkpointing on where ``gradient_checkpointing`` asks for it:
        each layer's activations are recomputed in the backward pass instead of kept."""
        if self.gradient_checkpointing:
            # non-reentrant: works with frozen inputs (LoRA) and leaves use_cache to generation; transformers 5
            # renamed gradient checkpointing to activation checkpointing
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def tokenizer(self, texts: Sequence[str] = ()) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.path, self.trust_remote_code, self.revision)

    def chat_template(self) -> PreTrainedTokenizerBase | None:
        tokenizer = self.tokenizer() if self.use_chat_template else None
        return tokenizer if tokenizer is not None and getattr(tokenizer, "chat_template", None) else None

    def build(self, texts: Sequence[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return self.load(self.path)

    def load(self, path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_causal_lm(path, self.dtype, self.attn_implementation, self.trust_remote_code, self.revision)


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A reference model: an independent copy in eval mode with gradients off."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def add_lora(model: PreTrainedModel, lora: dict[str, Any]) -> PreTrainedModel:
    """Wrap ``model`` with fresh LoRA adapters (keys are ``peft.LoraConfig`` arguments)."""
    from peft import LoraConfig, get_peft_model

    options = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear", **lora}
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **options))


def decoder_layers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The decoder layers of ``model``, in order: its modules of the classes transformers keeps whole when
    sharding (``_no_split_modules``), through a PEFT wrapper; empty where the model names none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(base, "_no_split_modules", None) or [])
    return [module for module in base.modules() if type(module).__name__ in blocks]


def compile_decoder_layers(model: PreTrainedModel, backend: str = "inductor") -> int:
    """``torch.compile`` each decoder layer of ``model`` in place, with dynamic shapes; returns how many.

    Regional compilation: the layers share one class and one compiled graph, so compiling costs about one
    layer's worth, and batches of another width reuse it. In place (``nn.Module.compile``), so state-dict keys,
    checkpoints and the exported model are unchanged. The layers are the modules of the classes transformers
    keeps whole when sharding (``_no_split_modules``), through a PEFT wrapper."""
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(
            f"compile.enabled: {type(model).__name__} names no decoder layer class (_no_split_modules); "
            "set compile.enabled=false"
        )
    for layer in layers:
        layer.compile(backend=backend, dynamic=True)
    return len(layers)
