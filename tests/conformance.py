"""The conformance matrix's parameters: tiny random configs of the model families users train with DPO, the
scoring layouts, the precisions, what each cell must be and its tolerance; the tiny models and the batch.

``tests/test_logprobs_conformance.py`` runs every cell against the model's own plain forward (``logits.log_softmax``,
one unpadded row at a time); ``python -m tests.conformance`` writes ``docs/architectures.md`` from these same
parameters, and a test checks that the file is what it would write, so the table cannot drift from the tests.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bmc.data.tokenize import pad_sequences
from bmc.scoring_check import FLOAT32_TOLERANCE

VOCAB = 96
#: the widest plain row of the matrix's batch; every position table holds exactly this many positions, so a
#: packed row (prompt + both responses, up to 15 wide) must keep its positions inside the table
WIDTH = 10
#: a sliding window shorter than every response and most rows, so that windows decide log-probs
WINDOW = 4
#: the weights' init scale: at transformers' 0.02 attention barely matters (an ignored window moves log-probs
#: by 0.06); at 0.2 it moves them by 0.7-2.4 nats and per-token log-probs spread over 1.2 nats
INIT = 0.2
_SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": WIDTH,
          "initializer_range": INIT}  # fmt: skip
_WINDOWED = {"sliding_window": WINDOW}

#: family -> (tiny config, what it exercises)
FAMILIES: dict[str, tuple[dict, str]] = {
    "llama": ({"model_type": "llama", **_SMALL}, "RoPE, grouped-query attention"),
    "qwen2": ({"model_type": "qwen2", **_SMALL, **_WINDOWED, "use_sliding_window": True, "max_window_layers": 1},
              "full and sliding layers (`use_sliding_window`): a mask per layer kind"),
    "qwen3": ({"model_type": "qwen3", **_SMALL, "head_dim": 8}, "QK-norm"),
    "mistral": ({"model_type": "mistral", **_SMALL, **_WINDOWED}, "sliding window on every layer"),
    "gemma2": ({"model_type": "gemma2", **_SMALL, **_WINDOWED, "head_dim": 8, "final_logit_softcapping": 30.0},
               "alternating full/sliding layers, attention and final logit soft-capping"),
    "gemma3": ({"model_type": "gemma3_text", **_SMALL, **_WINDOWED, "head_dim": 8, "sliding_window_pattern": 2,
                "final_logit_softcapping": 30.0}, "alternating full/sliding layers, local RoPE base, soft-capping"),
    "phi3": ({"model_type": "phi3", **_SMALL, **_WINDOWED, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1},
             "fused QKV, sliding window"),
    "olmo2": ({"model_type": "olmo2", **_SMALL}, "post-norm, QK-norm"),
    "gpt_neox": ({"model_type": "gpt_neox", **_SMALL}, "partial RoPE, parallel residual"),
    "gpt2": ({"model_type": "gpt2", "vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": WIDTH,
              "initializer_range": INIT}, "learned position table as wide as the widest plain row"),
    "mixtral": ({"model_type": "mixtral", **_SMALL, **_WINDOWED, "num_local_experts": 4, "num_experts_per_tok": 2},
                "mixture of experts, sliding window"),
    "qwen3_moe": ({"model_type": "qwen3_moe", **_SMALL, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2,
                   "moe_intermediate_size": 16}, "mixture of experts"),
    "granite": ({"model_type": "granite", **_SMALL, "logits_scaling": 4.0}, "logits divided by `logits_scaling`"),
    "cohere": ({"model_type": "cohere", **_SMALL, "logit_scale": 0.5}, "logits times `logit_scale`"),
    "falcon_h1": ({"model_type": "falcon_h1", **_SMALL, "lm_head_multiplier": 0.5, "mamba_d_ssm": 32,
                   "mamba_n_heads": 4, "mamba_d_head": 8, "mamba_n_groups": 1, "mamba_d_state": 8, "mamba_d_conv": 4,
                   "mamba_expand": 1, "mamba_chunk_size": 4},
                  "attention + Mamba-2 hybrid, logits times `lm_head_multiplier`"),
}  # fmt: skip

#: layout -> (shared prompt, chunked LM head, LoRA adapters, batch: pairs or ranked lists of K responses)
LAYOUTS: dict[str, tuple[bool, bool, bool, str]] = {
    "plain": (False, False, False, "pairs"),
    "shared prompt": (True, False, False, "pairs"),
    "chunked head": (False, True, False, "pairs"),
    "shared + chunked": (True, True, False, "pairs"),
    "LoRA, shared + chunked": (True, True, True, "pairs"),
    "K responses, shared": (True, False, False, "lists"),
}
#: the chunked head's chunk, in positions: smaller than a row, so rows span chunks
CHUNK = 3

#: precision -> autocast dtype (None: float32, no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bf16 autocast": torch.bfloat16}
#: the largest per-token log-prob gap a cell may show, and the largest gradient gap relative to the largest
#: gradient. float32: the first-batch check's tolerance. bf16 autocast: the matrix measures 0 (CPU bf16
#: matmuls accumulate in float32, and rows this short round alike in every layout); 0.02 is about one bf16
#: rounding step of a 4-nat log-prob, and below the 0.05 nats of the window defect (a test shows it caught)
TOLERANCE: dict[str, float] = {"float32": FLOAT32_TOLERANCE, "bf16 autocast": 0.02}
#: the same for the ranked-list batch, whose packed rows (up to 20 wide) the sdpa kernel rounds otherwise in bf16
#: than the model's own rows: measured up to 0.023 (OLMo-2; 0.004-0.02 for the other families under sdpa, exactly 0
#: under eager, and 1e-6 in float32 everywhere: rounding, not layout); 0.03 is under one bf16 step of a 4-8 nat
#: log-prob (0.031)
LIST_TOLERANCE: dict[str, float] = {"float32": FLOAT32_TOLERANCE, "bf16 autocast": 0.03}

#: attention implementations each family is run under (Gemma-2 offers eager only)
ATTENTION: dict[str, tuple[str, ...]] = {name: ("eager", "sdpa") for name in FAMILIES} | {"gemma2": ("eager",)}

#: (family, why): families whose prompts cannot be shared, so their shared layouts fall back to separate rows
FALLBACKS = {"falcon_h1": "Mamba-2 layers carry the chosen response's state into the rejected one"}


def expected(family: str, layout: str) -> str:
    """What a cell must be: ``equal`` (the layout's log-probs and gradients equal the model's own) or
    ``fallback`` (the pairs are scored as separate rows, with one log line, and those are equal)."""
    return "fallback" if LAYOUTS[layout][0] and family in FALLBACKS else "equal"


def tiny_model(family: str, attention: str = "sdpa", **overrides: object) -> torch.nn.Module:
    options = {**FAMILIES[family][0], **overrides}
    config = AutoConfig.for_model(options.pop("model_type"), **options)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # the families' default special-token ids lie outside the tiny vocabulary
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    return model.float().eval()  # eval: GPT-2's dropout would make any two forwards differ


def pair_batch() -> dict[str, torch.Tensor]:
    """Three pairs: prompts of 3, 5 and 2 tokens, responses of 1 to 7; plain rows up to WIDTH tokens, all but one
    longer than the window; packed rows up to 15 tokens."""
    g = torch.Generator().manual_seed(1)
    prompts = [[1, *torch.randint(2, VOCAB, (n,), generator=g).tolist()] for n in (2, 4, 1)]
    responses = [[4, 7, 9, 2, 5], [5, 6], [8, 3, 3, 3, 3, 3, 3], [11, 12, 13, 14, 15, 16, 17], [21, 22, 23], [30]]
    rows = [prompts[i % 3] + r for i, r in enumerate(responses)]
    assert max(map(len, rows)) == WIDTH and sum(len(r) > WINDOW for r in rows) == 5
    return pad_sequences([prompts[i % 3] for i in range(len(responses))], responses, pad_id=0)


def list_batch() -> dict[str, torch.Tensor]:
    """Three ranked lists of 3, 2 and 2 responses (K varying in the batch) on the pair batch's prompts, each list's
    rows consecutive with their ``list_index`` (:mod:`bmc.data.lists`); packed rows up to 20 tokens, twice the
    position table."""
    g = torch.Generator().manual_seed(1)
    prompts = [[1, *torch.randint(2, VOCAB, (n,), generator=g).tolist()] for n in (2, 4, 1)]
    lists = [[[4, 7, 9, 2, 5], [11, 12, 13, 14, 15, 16, 17], [40, 41, 42]], [[5, 6], [21, 22, 23]],
             [[8, 3, 3, 3, 3, 3, 3], [30, 31]]]  # fmt: skip
    batch = pad_sequences([prompts[i] for i, rows in enumerate(lists) for _ in rows], sum(lists, []), pad_id=0)
    assert batch["input_ids"].shape[1] == WIDTH
    batch["list_index"] = torch.tensor([i for i, rows in enumerate(lists) for _ in rows])
    return batch


BATCHES = {"pairs": pair_batch, "lists": list_batch}


def own_forward_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``logits.log_softmax`` of the model's own forward, one unpadded row at a time, laid out as the project's
    (N, T-1) log-probs: position t scores token t+1, zero outside the response."""
    out = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    for i, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
        ids = batch["input_ids"][i, :n]
        logps = model(input_ids=ids[None]).logits[0, :-1].float().log_softmax(-1)
        out = out.index_put((torch.tensor([i]), torch.arange(n - 1)), logps.gather(-1, ids[1:, None])[:, 0])
    return out.masked_fill(~batch["response_mask"][:, 1:], 0.0)


def render() -> str:
    """``docs/architectures.md``."""
    header = ["family", "attention", "what it exercises", *LAYOUTS]
    rows = [
        [f"`{family}`", ", ".join(ATTENTION[family]), note, *(expected(family, layout) for layout in LAYOUTS)]
        for family, (_, note) in FAMILIES.items()
    ]
    table = "\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows])
    tolerances = "; ".join(f"{name}: {value:g}" for name, value in TOLERANCE.items())
    list_tolerances = "; ".join(f"{name}: {value:g}" for name, value in LIST_TOLERANCE.items())
    fallbacks = "\n".join(f"- `{family}`: {why}." for family, why in FALLBACKS.items())
    return f"""# Architectures: the conformance matrix

Written by `python -m tests.conformance` from the parameters of `tests/conformance.py`;
`tests/test_logprobs_conformance.py` runs every cell and checks that this file is what the script writes. Do not edit it
by hand.

Every scoring path of the project must give each model the per-token log-probs and gradients of the model's own
forward (`logits.log_softmax`, one unpadded row at a time). The matrix checks it on tiny random configs of each
family ({VOCAB}-token vocabulary, 2 layers, weights at init scale {INIT} so that attention decides log-probs),
over a batch of three pairs whose prompts and responses differ in length, whose rows are longer than the sliding
window ({WINDOW} tokens) and whose packed rows are wider than the position table ({WIDTH} positions, the widest
plain row): in every precision ({", ".join(PRECISIONS)}) and under every attention implementation listed.

Layouts: the plain padded batch; the shared prompt (each pair one row, prompt once; sliding windows measured on
position ids, `bmc/attention.py`); the chunked LM head ({CHUNK} positions a chunk, with the family's logit scaling
and soft-capping); both; both on a LoRA-adapted model (gradients of the adapters); and K responses shared: a batch
of ranked lists of 3, 2 and 2 responses, each list one row with its prompt once (`bmc.logprobs.prompt_groups`).

- **equal**: log-probs within the tolerance per token, gradients within the tolerance times the largest gradient
  ({tolerances}; for the ranked lists {list_tolerances}: their wider packed rows round otherwise under sdpa in
  bf16, by up to 0.023, while float32 agrees to 1e-6).
- **fallback**: the model cannot be told the shared layout by an attention mask; its pairs are scored as separate
  rows, with one log line (`bmc.scoring_check.verify_scoring`), and those are equal.

{table}

Fallbacks:
{fallbacks}
- any family on a flash-attention kernel (`attn_implementation="flash_attention_2"`, not installed on CPU): it
  takes no 4D mask, so its pairs are scored as separate rows, with one log line.

Every run checks its own model again on its first batch (`bmc/scoring_check.py`): its scoring path against the
model's own forward, in float32 and at the float32 tolerance (sharded 16-bit weights, which it cannot recast: in
their dtype, at the bound of bf16 rounding), on its first two pairs and on rows longer than its sliding window; a
model that ignores the position ids, the mask or its window, or rescales its logits in a way the chunked head does
not know, stops the run with the setting that turns the path off.
"""


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "docs" / "architectures.md")
    target.write_text(render())
    print(f"wrote {target}")
