"""TDPO1/TDPO2 (bmc/losses/tdpo.py) and the chunked sequential KL (bmc/sequence_kl.py) against float64 references
written out here: the formulas by hand, SeqKL from the full (rows, length, vocabulary) logits of both models."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bmc.data.tokenize import pad_sequences
from bmc.losses import SequenceLogps, build_loss, needs_sequence_kl
from bmc.module import PreferenceModule
from bmc.sequence_kl import sequence_kl_token_logps
from tests.conformance import ATTENTION, FALLBACKS, FAMILIES, pair_batch, tiny_model


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# --- the loss formulas ---

# one pair: r_w = 1, r_l = -0.5, SeqKL_w = 2, SeqKL_l = 4; beta = 0.1, alpha = 0.5
PAIR = {"chosen": -4.0, "rejected": -6.5, "ref_chosen": -5.0, "ref_rejected": -6.0,
        "chosen_kl": 2.0, "rejected_kl": 4.0}  # fmt: skip


def pair_logps() -> SequenceLogps:
    t = {k: torch.tensor([v], dtype=torch.float64, requires_grad=True) for k, v in PAIR.items()}
    return SequenceLogps(chosen_tokens=torch.tensor([3]), rejected_tokens=torch.tensor([4]), **t)


def test_tdpo_values_by_hand():
    # TDPO1: z = 0.1 * 1.5 - (0.1 * 4 - 0.1 * 2) = -0.05; TDPO2: z = 0.15 - 0.5 * (0.4 - 0.2) = 0.05
    assert build_loss("tdpo1", beta=0.1)(pair_logps()).losses.item() == pytest.approx(0.7184596480, abs=1e-9)
    assert build_loss("tdpo2", beta=0.1, alpha=0.5)(pair_logps()).losses.item() == pytest.approx(0.6684596480, abs=1e-9)
    assert softplus(0.05) == pytest.approx(0.7184596480, abs=1e-9) and softplus(-0.05) == pytest.approx(0.6684596480)


@pytest.mark.parametrize("name,beta,alpha", [("tdpo1", 0.3, 1.0), ("tdpo2", 0.3, 0.7), ("tdpo2", 0.1, 0.0)])
def test_tdpo_values_and_gradients_match_the_float64_formula(name, beta, alpha):
    """-log sigma(z), z = beta (r_w - r_l) - alpha (beta KL_l - beta KL_w): dL/dz = -sigma(-z); TDPO2's chosen KL
    is stopped, so its gradient is 0 while it still moves the value."""
    g = torch.Generator().manual_seed(0)
    values = {k: torch.randn(5, generator=g, dtype=torch.float64) * 3 for k in PAIR}
    values["chosen_kl"], values["rejected_kl"] = values["chosen_kl"].abs(), values["rejected_kl"].abs()
    leaves = {k: v.clone().requires_grad_() for k, v in values.items()}
    logps = SequenceLogps(chosen_tokens=torch.ones(5), rejected_tokens=torch.ones(5), **leaves)
    hparams = {"beta": beta} if name == "tdpo1" else {"beta": beta, "alpha": alpha}
    out = build_loss(name, **hparams)(logps)
    out.losses.sum().backward()

    v = {k: t.tolist() for k, t in values.items()}
    for i in range(5):
        r_w, r_l = v["chosen"][i] - v["ref_chosen"][i], v["rejected"][i] - v["ref_rejected"][i]
        z = beta * (r_w - r_l) - alpha * (beta * v["rejected_kl"][i] - beta * v["chosen_kl"][i])
        assert out.losses[i].item() == pytest.approx(softplus(-z), abs=1e-12)
        assert out.chosen_rewards[i].item() == pytest.approx(beta * r_w, abs=1e-12)
        dz = -1 / (1 + math.exp(z))  # d(-log sigma(z))/dz
        expected = {
            "chosen": dz * beta, "rejected": -dz * beta, "ref_chosen": -dz * beta, "ref_rejected": dz * beta,
            "rejected_kl": -dz * alpha * beta, "chosen_kl": 0.0 if name == "tdpo2" else dz * alpha * beta,
        }  # fmt: skip
        for key, want in expected.items():
            grad = leaves[key].grad  # None: no gradient reaches it (TDPO2's stopped chosen KL)
            assert (0.0 if grad is None else grad[i].item()) == pytest.approx(want, abs=1e-12), key


def test_tdpo_reads_the_sequential_kl_and_says_when_it_is_missing():
    assert needs_sequence_kl("tdpo1") and needs_sequence_kl("tdpo2") and not needs_sequence_kl("dpo")
    assert needs_sequence_kl("mix", components=[{"name": "dpo"}, {"name": "tdpo2", "weight": 0.5}])
    logps = pair_logps()
    logps.chosen_kl = None
    with pytest.raises(ValueError, match="sequential KL"):
        build_loss("tdpo2")(logps)


# --- the sequential KL against the full (rows, length, vocabulary) computation ---


def perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """A frozen reference near ``model``, so that the KL is neither 0 nor huge."""
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return reference.eval().requires_grad_(False)


def naive_token_kl(policy, reference, batch, reference_context=None) -> tuple[torch.Tensor, ...]:
    """(policy token log-probs, reference token log-probs, per-position KL) in float64 from each model's own full
    logits, one unpadded row at a time, in the (N, T-1) layout, zero outside the response."""
    n_rows, width = batch["input_ids"].shape
    out = [torch.zeros(n_rows, width - 1, dtype=torch.float64) for _ in range(3)]
    for i, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
        ids = batch["input_ids"][i, :n][None]
        logp = policy(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        with torch.no_grad(), reference_context() if reference_context else contextlib.nullcontext():
            logq = reference(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
        kl = (logq.exp() * (logq - logp)).sum(-1)
        labels = ids[0, 1:, None]
        for slot, values in zip(out, (logp.gather(-1, labels)[:, 0], logq.gather(-1, labels)[:, 0], kl)):
            slot[i, : n - 1] = values
    mask = batch["response_mask"][:, 1:]
    return tuple(t.masked_fill(~mask, 0.0) for t in out)


def assert_matches(policy, reference, batch, got, reference_context=None, tol: float = 1e-5):
    """Values and the gradient of sum(KL) + sum(token log-probs) w.r.t. the policy's trainable parameters."""
    params = [p for p in policy.parameters() if p.requires_grad]
    want = naive_token_kl(policy, reference, batch, reference_context)
    for name, a, b in zip(("policy", "reference", "kl"), (got.policy, got.reference, got.kl), want):
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=tol, msg=name)
    got_grads = torch.autograd.grad(got.kl.sum() + got.policy.sum(), params)
    want_grads = torch.autograd.grad(want[2].sum() + want[0].sum(), params)
    scale = max(float(g.abs().max()) for g in want_grads)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a.double(), b.double(), atol=tol * scale, rtol=0)


@pytest.mark.parametrize("share_prompt", [False, True])
def test_sequence_kl_equals_the_full_vocabulary_computation_for_every_chunk_size(share_prompt):
    policy = tiny_model("llama")
    reference, batch = perturbed(policy), pair_batch()
    results = [sequence_kl_token_logps(policy, reference, batch, share_prompt, chunk_positions=c) for c in (1, 3, 1000)]
    assert float(results[0].kl.detach().sum()) > 1.0  # a KL worth comparing
    for got in results[1:]:
        for a, b in zip((got.policy, got.reference, got.kl), (results[0].policy, results[0].reference, results[0].kl)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert_matches(policy, reference, batch, results[1])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sequence_kl_on_the_tiny_config_of_every_family(family):
    """Shared prompt and a 3-position chunk (each family's logit scaling and soft-capping through the head); the
    families that cannot share a prompt are scored as plain rows, as the module would after its first-batch check."""
    policy = tiny_model(family, ATTENTION[family][0])
    reference, batch = perturbed(policy), pair_batch()
    got = sequence_kl_token_logps(policy, reference, batch, share_prompt=family not in FALLBACKS, chunk_positions=3)
    assert_matches(policy, reference, batch, got, tol=1e-4)


def test_sequence_kl_with_lora_takes_the_adapter_disabled_policy_as_reference():
    """Adapters on the LM head too: the reference head is the base head, in the forward and in the recomputed
    backward of each chunk."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    policy, batch = get_peft_model(tiny_model("llama"), config), pair_batch()
    got = sequence_kl_token_logps(policy, None, batch, share_prompt=True, chunk_positions=3)
    assert float(got.kl.detach().sum()) > 0.1
    assert_matches(policy, policy, batch, got, reference_context=policy.disable_adapter)
    with pytest.raises(RuntimeError, match="needs a reference"):
        sequence_kl_token_logps(tiny_model("llama"), None, batch)


class VocabularyTensors(TorchDispatchMode):
    """The most positions any tensor as wide as the vocabulary holds, over every tensor an op creates."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.positions = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dim() and t.shape[-1] == self.vocab:
                self.positions = max(self.positions, t.numel() // self.vocab)
        return out


class SavedVocabularyRows:
    """Positions held for the backward pass in tensors as wide as the vocabulary, summed over every saved tensor
    (a checkpointed chunk saves nothing: its tensors are recomputed in the backward pass)."""

    def __init__(self, vocab: int) -> None:
        self.vocab, self.positions = vocab, 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() and t.shape[-1] == self.vocab:
            self.positions += t.numel() // self.vocab
        return t

    def __enter__(self) -> SavedVocabularyRows:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def test_the_chunked_kl_never_holds_more_than_a_chunk_of_vocabulary_wide_rows():
    """Every (positions, vocabulary) tensor either model creates, forward and backward, holds at most one chunk's
    positions (the (hidden, vocabulary) view of the head's weight, 32 rows, is below the chunk), and none is kept
    for the backward pass beyond the head's weight; the full-logit computation, watched the same way, builds and
    keeps tensors of all 4 x 47 positions."""
    policy = tiny_model("llama", max_position_embeddings=64)
    reference = perturbed(policy)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(2, 96, (6,), generator=g).tolist() for _ in range(4)]
    responses = [torch.randint(2, 96, (42,), generator=g).tolist() for _ in range(4)]
    batch = pad_sequences(prompts, responses, pad_id=0)
    chunk, positions = 40, 4 * 47
    with VocabularyTensors(96) as created:
        with SavedVocabularyRows(96) as saved:
            got = sequence_kl_token_logps(policy, reference, batch, chunk_positions=chunk)
        (got.kl.sum() + got.policy.sum()).backward()
    assert 32 <= created.positions <= chunk and saved.positions <= 32
    with VocabularyTensors(96) as created, SavedVocabularyRows(96) as saved:
        logps = policy(input_ids=batch["input_ids"]).logits.log_softmax(-1)
    assert created.positions >= positions and saved.positions >= positions
    logps.sum().backward()


# --- the preference step ---


def test_the_tdpo2_step_equals_its_float64_formula_in_value_and_gradient(caplog):
    """PreferenceModule with tdpo2 on a shared-prompt, chunked batch against the loss computed from full logits in
    float64, with SeqKL(y_w) detached by hand; precomputed reference log-probs in the batch are not read."""
    policy = tiny_model("llama")
    reference, batch = perturbed(policy), pair_batch()
    batch["diff_mask"] = torch.zeros_like(batch["response_mask"])
    batch["ref_token_logps"] = torch.full((6, batch["input_ids"].shape[1] - 1), -100.0)  # must not be read
    module = PreferenceModule(
        policy, reference, loss={"name": "tdpo2", "beta": 0.1, "alpha": 0.5}, token_weighting={"name": "uniform"},
        regularizer={"name": "none"}, optim={}, share_prompt=True, logprob_chunk=3,
    )  # fmt: skip
    logged = {}
    module.log_dict = lambda metrics, **kwargs: logged.update(metrics)
    loss = module._step(batch, "train")
    params = [p for p in policy.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(loss, params)

    logp, logq, kl = naive_token_kl(policy, reference, batch)
    r, seq_kl = logp.sum(-1) - logq.sum(-1), kl.sum(-1)
    z = 0.1 * (r[:3] - r[3:]) - 0.5 * (0.1 * seq_kl[3:] - 0.1 * seq_kl[:3].detach())
    want = torch.nn.functional.softplus(-z).mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-5)
    want_grads = torch.autograd.grad(want, params)
    scale = max(float(g.abs().max()) for g in want_grads)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-4 * scale, rtol=0)
    assert logged["train/kl/chosen"].item() == pytest.approx(seq_kl[:3].mean().item(), abs=1e-5)
