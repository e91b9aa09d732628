"""What a causal LM's attention layers see, and the 4D masks that say it for a packed row.

Scoring a pair with its prompt shared (:func:`bmc.logprobs.shared_prompt_token_logps`) hands the model its own
attention mask: a (rows, 1, L, L) mask of which key each query may see. A model then uses that mask in every
layer, in place of the masks it would build itself, so the packed mask must say everything the model's own
masks say. For the families transformers ships that is one of two kinds per layer (``config.layer_types``, or
``sliding_window`` alone for Mistral, Mixtral, Phi-3 and Qwen3-MoE): full causal attention, or a sliding window
of ``sliding_window`` keys (a query at position q sees keys at positions q - window < k <= q, transformers'
``sliding_window_overlay``). The window is measured on position ids, never on packed indices: the rejected
response's positions restart after the prompt. A model with both kinds (Gemma-2/3, gpt-oss, OLMo-3, Qwen2 with
``use_sliding_window``) takes a dict of masks by layer kind.

Anything else cannot be said with a mask, and such a model scores its pairs as separate rows
(:func:`why_prompts_cannot_be_shared`): flash-attention kernels (no 4D mask at all), recurrent or state-space
layers (Mamba, Falcon-H1's hybrids: their state carries the chosen response into the rejected one), and layer
kinds this module does not know (chunked attention).
"""

from __future__ import annotations

import torch

FULL, SLIDING = "full_attention", "sliding_attention"
#: config keys of layers whose state runs along the row, which no attention mask can restrict
_RECURRENT_KEYS = ("mamba", "ssm_", "linear_attn", "conv_kernel", "recurrent", "rwkv")


def _text_config(model: torch.nn.Module) -> object | None:
    config = getattr(model, "config", None)
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def attention_windows(model: torch.nn.Module) -> dict[str, int | None]:
    """The kinds of attention layer ``model`` has and the window of each (None: full causal attention)."""
    config = _text_config(model)
    # Qwen2-MoE writes 0 for "no window"; older Qwen2 configs keep a window that use_sliding_window turns off
    window = getattr(config, "sliding_window", None) or None
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    kinds = set(getattr(config, "layer_types", None) or [SLIDING if window else FULL])
    return {kind: window if kind == SLIDING else None for kind in sorted(kinds)}


def why_prompts_cannot_be_shared(model: torch.nn.Module) -> str | None:
    """Why ``model``'s attention cannot be told the shared-prompt layout by a 4D mask, or None when it can."""
    config = _text_config(model)
    attention = str(getattr(config, "_attn_implementation", None) or "")
    if "flash" in attention:
        return f"it runs {attention}, which takes no 4D attention mask"
    keys = [key for key in (config.to_dict() if hasattr(config, "to_dict") else {}) if key.startswith(_RECURRENT_KEYS)]
    unknown = sorted(set(attention_windows(model)) - {FULL, SLIDING})
    if keys or unknown:
        found = ", ".join([f"layer kinds {unknown}"] * bool(unknown) + [f"config keys {keys[:3]}"] * bool(keys))
        return f"it has layers no attention mask restricts ({found})"
    return None


def packed_attention_mask(
    model: torch.nn.Module, allowed: torch.Tensor, position_ids: torch.Tensor
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The 4D mask(s) ``model`` takes for a packed batch: ``allowed`` (rows, L, L), query by key, narrowed to each
    layer kind's window on ``position_ids`` (rows, L); one mask when the model has one kind of layer, else a dict
    by kind. Boolean for sdpa and flex attention, additive float for eager attention (which adds the mask to
    the scores: a boolean would add 0 and 1)."""
    distance = position_ids[:, :, None] - position_ids[:, None, :]
    masks = {
        kind: _as_taken(model, (allowed if window is None else allowed & (distance < window))[:, None])
        for kind, window in attention_windows(model).items()
    }
    return next(iter(masks.values())) if len(masks) == 1 else masks


def _as_taken(model: torch.nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    if getattr(_text_config(model), "_attn_implementation", None) != "eager":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
