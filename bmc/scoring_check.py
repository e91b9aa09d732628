"""The first-batch check: a run's scoring path gives the model's own log-probs, or the run does not train.

The shared-prompt layout (:func:`bmc.logprobs.shared_prompt_token_logps`) relies on the model honouring position
ids and a 4D mask, and the chunked LM head on knowing what the family does to its logits
(:mod:`bmc.logprobs`). Both are proven per family in the conformance matrix (``tests/test_logprobs_conformance.py``,
``docs/architectures.md``); the check proves them again for the model a run actually trains, once, on its first
batch, against the model's own forward (full logits, plain rows). It looks at rows longer than the model's
sliding window: for a windowed model it adds a pair built from the batch's tokens that is.

The question is the model's structure, not rounding, so the check computes in float32 whatever the run's
precision: outside autocast, with full-precision float32 matmuls (no TF32), and with 16-bit weights cast to
float32 for its forwards and back (exactly: every bf16 or fp16 value is a float32 value). At float32 an honest
model's paths agree within :data:`FLOAT32_TOLERANCE`, the matrix's tolerance, while a model that ignores the
position ids, the 4D mask or its window, or rescales its logits in an unknown way, is off by far more.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel

from bmc.attention import attention_windows, why_prompts_cannot_be_shared
from bmc.data.tokenize import pad_sequences
from bmc.logprobs import response_token_logps, shared_prompt_token_logps
from bmc.sharding import sharded_compute_dtype

log = logging.getLogger(__name__)

#: the largest per-token log-prob gap between a scoring path and the model's own forward, both in float32
#: (the conformance matrix's bound; SmolLM2-135M's shared-prompt layout is off by 2e-5, docs/performance.md)
FLOAT32_TOLERANCE = 1e-4
#: the same for 16-bit weights the check cannot cast (sharded parameters, which are not plain tensors):
#: bf16 rounding alone reaches 0.39 per token on SmolLM2-135M; a model ignoring the packing is off by 1.9-9.7
SIXTEEN_BIT_TOLERANCE = 1.0
#: the pairs of the first batch the check scores: its reference is the model's full float32 logits, which at a
#: 256k vocabulary take 1 GB per thousand positions, so not a whole batch of them
CHECKED_PAIRS = 2


@torch.no_grad()
def verify_scoring(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    chunk_positions: int | None = None,
    share_prompt: bool = False,
) -> bool:
    """Check on one preference batch that the run's scoring path (shared prompts with ``share_prompt``, the
    chunked head with ``chunk_positions``) gives ``model``'s own log-probs; returns whether its pairs are scored
    with a shared prompt.

    A model whose attention no mask can describe (:func:`bmc.attention.why_prompts_cannot_be_shared`) scores its
    pairs as separate rows: False, with one log line. A path off by more than the tolerance raises, naming the
    setting that turns it off, instead of training on wrong log-probs.
    """
    if share_prompt and (reason := why_prompts_cannot_be_shared(model)):
        log.info("share_prompt: %s cannot share a prompt (%s): its pairs are scored as separate rows",
                 type(model).__name__, reason)  # fmt: skip
        share_prompt = False
    if not share_prompt and chunk_positions is None:
        return False
    modes = {module: module.training for module in model.modules()}  # a wrapper's flag may not be its modules'
    model.eval()
    try:
        with _float32(model) as tolerance:
            first = _first_pairs(batch, CHECKED_PAIRS)
            for probe in _probes(model, first) if share_prompt else [first]:
                expected, mask = response_token_logps(model, probe)
                if chunk_positions is not None:
                    _compare(expected, response_token_logps(model, probe, chunk_positions)[0], mask, tolerance,
                             f"logprob_chunk={chunk_positions}: the chunked LM head of {type(model).__name__}",
                             "logprob_chunk=null")  # fmt: skip
                if share_prompt:
                    _compare(expected, shared_prompt_token_logps(model, probe, chunk_positions)[0], mask, tolerance,
                             f"share_prompt=true: {type(model).__name__} with its prompt shared",
                             "share_prompt=false")  # fmt: skip
    finally:
        for module, training in modes.items():
            module.training = training
    return share_prompt


def _compare(
    expected: torch.Tensor, got: torch.Tensor, mask: torch.Tensor, tolerance: float, what: str, remedy: str
) -> None:
    gap = float((expected - got)[mask].abs().max()) if mask.any() else 0.0
    if gap > tolerance:
        raise RuntimeError(
            f"{what} gives other log-probs than the model's own forward (largest per-token gap {gap:.3g}, above "
            f"{tolerance:g}); it does not honour position_ids, the 4D attention mask or its window, or rescales "
            f"its logits in a way this project does not know. Run with {remedy}."
        )


@contextlib.contextmanager
def _float32(model: torch.nn.Module) -> Iterator[float]:
    """Float32 computation for the check (module docstring); yields the tolerance that applies."""
    params = list(model.parameters())
    # sharded parameters (FSDP2's DTensors, FSDP1's views into a flat parameter) are not the model's to recast
    castable = all(
        type(p.data) is torch.Tensor and p.untyped_storage().nbytes() == p.numel() * p.element_size() for p in params
    )
    half = [p for p in params if p.is_floating_point() and p.dtype.itemsize < 4]
    # FSDP2 under a bfloat16 precision stores float32 shards but computes in bfloat16, which no recast undoes
    cast = sharded_compute_dtype(model)
    sixteen_bit = (half and not castable) or (cast is not None and cast.itemsize < 4)
    dtypes = [p.dtype for p in half]
    matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    device = params[0].device.type if params else "cpu"
    try:
        with torch.autocast(device, enabled=False):
            if half and castable:
                for p in half:  # in place: the optimizer's references to these parameters stay valid
                    p.data = p.data.float()
            yield SIXTEEN_BIT_TOLERANCE if sixteen_bit else FLOAT32_TOLERANCE
    finally:
        if castable:
            for p, dtype in zip(half, dtypes):
                p.data = p.data.to(dtype)
        torch.set_float32_matmul_precision(matmul)


def _first_pairs(batch: dict[str, torch.Tensor], n_pairs: int) -> dict[str, torch.Tensor]:
    """The rows the scoring paths read of the first ``n_pairs`` pairs of a preference ``batch`` (its chosen rows,
    then their rejected rows), or of its first ``n_pairs`` ranked lists (with their ``list_index``), cut to their
    widest row."""
    if "list_index" in batch:
        rows = torch.nonzero(batch["list_index"] < n_pairs)[:, 0]
    else:
        half = batch["input_ids"].shape[0] // 2
        rows = torch.cat([torch.arange(min(half, n_pairs)), half + torch.arange(min(half, n_pairs))])
    width = int(batch["attention_mask"][rows].sum(-1).max())
    names = ("input_ids", "attention_mask", "response_mask")
    first = {name: batch[name][rows, :width] for name in names}
    if "list_index" in batch:
        first["list_index"] = batch["list_index"][rows]
    return first


def _probes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """``batch``, and for a model with a sliding window a pair longer than its smallest window: the first pair's (or
    list's) prompt repeated past the window, then its first two responses. Added whatever the batch's lengths, so
    that every rank of a sharded run runs as many forwards (each gathers weights from all ranks)."""
    windows = [w for w in attention_windows(model).values() if w is not None]
    if not windows:
        return [batch]
    lengths = batch["attention_mask"].sum(-1).tolist()
    ids = batch["input_ids"]
    second = 1 if "list_index" in batch else ids.shape[0] // 2  # the first pair's or list's second response
    prompt = int(batch["response_mask"][0].int().argmax())
    long_prompt = ids[0, :prompt].tolist() * -(-(min(windows) + 1) // prompt)
    responses = [ids[0, prompt : lengths[0]].tolist(), ids[second, prompt : lengths[second]].tolist()]
    probe = {name: value.to(ids.device) for name, value in pad_sequences([long_prompt] * 2, responses, 0).items()}
    return [batch, probe]
