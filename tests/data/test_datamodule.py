"""Tokenization, truncation, prompt masking and per-token log-probs on hand-checked examples."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from bmc.data.datamodule import PreferenceDataModule, pad_sequences
from bmc.data.epoch_sampler import EpochSampler
from bmc.data.sources import split_pairs
from bmc.data.tokenize import Truncation
from bmc.logprobs import response_token_logps, token_logps
from bmc.tokenizer import train_bpe_tokenizer
from tests.doubles.ignores_packing import IgnoresPacking


def test_truncation_keeps_prompt_end_and_never_empties_a_response() -> None:
    rule = Truncation(max_length=8, max_prompt_length=3)
    prompt, responses, cut = rule.apply([1, 2, 3, 4, 5], [[6, 7], [8, 9, 10, 11, 12, 13, 14]])
    assert cut and prompt == [3, 4, 5]  # cut from the left, down to max_prompt_length
    assert responses == [[6, 7], [8, 9, 10, 11, 12]]  # then responses from the right
    assert rule.apply([1, 2], [[3, 4]]) == ([1, 2], [[3, 4]], False)
    prompt, responses, _ = rule.apply(list(range(50)), [[99] * 50])
    assert len(prompt) == 3 and responses == [[99] * 5]


def test_truncation_rejects_a_rule_that_could_empty_responses() -> None:
    with pytest.raises(ValueError, match="max_prompt_length"):
        Truncation(max_length=8, max_prompt_length=8)


def test_pad_sequences_marks_only_response_tokens() -> None:
    batch = pad_sequences([[5, 6], [5]], [[7, 8, 2], [9, 2]], pad_id=0, response_marks=[[0, 1, 0], [1, 0]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 2], [5, 9, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["response_mask"].int().tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
    assert batch["diff_mask"].int().tolist() == [[0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]


def test_token_logps_equals_log_softmax_gather() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11)
    labels = torch.randint(0, 11, (5, 7))
    expected = torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logps(logits, labels, chunk_rows=2).double(), expected, atol=1e-5)


def test_token_logps_gradient_and_bf16_match_the_plain_computation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 50, dtype=torch.double)
    labels = torch.randint(0, 50, (4, 6))
    weights = torch.randn(4, 6, dtype=torch.double)
    plain = logits.clone().requires_grad_(True)
    (torch.log_softmax(plain, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1) * weights).sum().backward()
    fast = logits.float().requires_grad_(True)
    out = token_logps(fast, labels)
    assert out.dtype == torch.float32
    (out * weights.float()).sum().backward()
    assert torch.allclose(fast.grad.double(), plain.grad, atol=1e-5)
    low = token_logps(logits.bfloat16(), labels, chunk_rows=3)  # bf16 logits, float32 result
    expected = torch.log_softmax(logits.bfloat16().double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert low.dtype == torch.float32 and torch.allclose(low.double(), expected, atol=1e-5)


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool) -> SimpleNamespace:
        assert use_cache is False  # scoring never fills a KV cache
        return SimpleNamespace(logits=self.logits)


def test_prompt_and_padding_tokens_never_contribute() -> None:
    batch = pad_sequences([[1, 2, 3]], [[4, 5]], pad_id=0)
    batch = {k: torch.cat([v, torch.zeros_like(v[:, :1])], 1) for k, v in batch.items()}  # one padding column
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 8)
    logps, mask = response_token_logps(_FixedLogits(logits), batch)
    # positions 2 and 3 predict the response tokens 4 and 5; nothing else counts
    assert mask.int().tolist() == [[0, 0, 1, 1, 0]]
    log_probs = torch.log_softmax(logits, -1)
    assert torch.allclose(logps[0, 2:4], torch.stack([log_probs[0, 2, 4], log_probs[0, 3, 5]]))
    assert logps[0, [0, 1, 4]].abs().sum() == 0
    changed = logits.clone()
    changed[0, [0, 1, 4, 5]] += 100 * torch.randn(4, 8)  # positions predicting prompt or padding
    again, _ = response_token_logps(_FixedLogits(changed), batch)
    assert torch.equal(again, logps)


def test_preference_datamodule_stacks_chosen_then_rejected() -> None:
    text = ["Q: 1+1?\nAnswer: The answer is 2.", "Q: 2+2?\nAnswer: The answer is 4."] * 20
    tokenizer = train_bpe_tokenizer(text, vocab_size=300)
    pairs = [
        {"prompt": "Q: 1+1?\nAnswer:", "chosen": " The answer is 2.", "rejected": " The answer is 3."},
        {"prompt": "Q: 2+2?\nAnswer:", "chosen": " The answer is 4.", "rejected": " It is 5."},
    ]
    dm = PreferenceDataModule(
        train=pairs, val=pairs[:1], tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=2
    )
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 2  # one pair -> chosen row + rejected row
    chosen, rejected = (tokenizer.decode(row[m]) for row, m in zip(batch["input_ids"], batch["response_mask"]))
    assert chosen == " The answer is 2.<eos>" and rejected == " The answer is 3.<eos>"
    marked = tokenizer.decode(batch["input_ids"][1][batch["diff_mask"][1]])
    assert marked == "3"  # the one differing token; "The answer is" and EOS are shared
    assert dm.truncated_rows == {"train": 0, "val": 0}

    empty = PreferenceDataModule(train=pairs, val=[], tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=2)
    with pytest.raises(ValueError, match="the val split has no pairs"):  # not a KeyError from inside tokenization
        empty.setup()


def test_split_pairs_is_disjoint_and_seeded() -> None:
    pairs = [{"prompt": str(i)} for i in range(20)]
    train, val = split_pairs(pairs, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in val}
    assert split_pairs(pairs, 0.25, seed=3) == (train, val)


def test_split_pairs_holds_out_whole_prompts_and_keeps_the_seeded_pair_split_of_one_pair_per_prompt() -> None:
    import random

    pairs = [{"prompt": f"p{i // 2}", "chosen": f"c{i}"} for i in range(20)]  # two pairs per prompt
    train, val = split_pairs(pairs, 0.25, seed=3)
    assert len(train) + len(val) == 20 and len(val) == 6  # whole prompts until at least 5 pairs are held out
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in val}
    single = [{"prompt": str(i)} for i in range(20)]
    order = list(range(20))
    random.Random(3).shuffle(order)  # the split before prompts were grouped: a shuffle of the pairs
    assert split_pairs(single, 0.25, seed=3) == ([single[i] for i in order[5:]], [single[i] for i in order[:5]])
    with pytest.raises(ValueError, match="at least 2 prompts"):
        split_pairs([{"prompt": "same"}] * 4, 0.25, seed=0)


def test_length_grouped_sampler_is_a_seeded_permutation_of_similar_length_batches() -> None:
    lengths = [random.Random(i).randint(5, 100) for i in range(1000)]
    sampler = EpochSampler(lengths, batch_size=32, lengths=lengths, seed=3, group_batches=8)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and len(sampler) == 1000
    assert order == list(EpochSampler(lengths, batch_size=32, lengths=lengths, seed=3, group_batches=8))
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order every epoch
    batches = [order[i : i + 32] for i in range(0, 1000, 32)]

    def padding(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert padding(batches) < 0.2 * padding([shuffled[i : i + 32] for i in range(0, 1000, 32)])
    maxima = [max(lengths[i] for i in b) for b in batches[:-1]]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)  # batches come in a random order
    assert len(batches[-1]) == 1000 % 32 and all(len(b) == 32 for b in batches[:-1])

    # two ranks with half the batch each: together they draw exactly the single process's batches
    ranks = [
        list(EpochSampler(lengths, batch_size=16, lengths=lengths, world_size=2, rank=r, seed=3, group_batches=8))
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 500
    for k, batch in enumerate(batches[:-1]):
        assert sorted(ranks[0][16 * k : 16 * k + 16] + ranks[1][16 * k : 16 * k + 16]) == sorted(batch)


def test_preference_datamodule_groups_train_batches_by_length() -> None:
    text = ["Q: 1+1?\nAnswer: The answer is 2."] * 20
    tokenizer = train_bpe_tokenizer(text, vocab_size=300)
    pairs = [{"prompt": "Q:" + " x" * (i % 7), "chosen": " y" * (1 + i % 5), "rejected": " z"} for i in range(40)]
    dm = PreferenceDataModule(
        train=pairs, val=pairs[:2], tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=8,
        length_grouping=True,
    )  # fmt: skip
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sum(b["input_ids"].shape[0] for b in batches) == 2 * 40
    plain = PreferenceDataModule(
        train=pairs, val=pairs[:2], tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=8
    )
    plain.setup()
    cells = sum(b["input_ids"].numel() for b in batches)
    assert cells < sum(b["input_ids"].numel() for b in plain.train_dataloader())


def test_column_dataset_rows_columns_and_batched_encoding() -> None:
    from bmc.data.columns import ColumnDataset

    rows = [{"text": "ab" * i, "keep": i} for i in range(5)]
    seen_batches = []

    def encode(batch: dict[str, list]) -> dict[str, list]:
        seen_batches.append(len(batch["text"]))
        return {"length": [len(t) for t in batch["text"]], "keep": batch["keep"]}

    ds = ColumnDataset.from_rows(rows, encode, desc="test", batch_size=2)
    assert seen_batches == [2, 2, 1]
    assert len(ds) == 5 and ds.column_names == ["length", "keep"]
    assert ds["length"] == [0, 2, 4, 6, 8] and ds[3] == {"length": 6, "keep": 3} and ds[-1]["keep"] == 4
    with pytest.raises(IndexError, match="row 5 out of range for 5 rows"):
        ds[5]
    wider = ds.with_columns({"keep": [9] * 5, "extra": list("vwxyz")})
    assert wider[0] == {"length": 0, "keep": 9, "extra": "v"} and ds[0]["keep"] == 0  # the original is unchanged
    assert wider.rows(["extra"]) == [{"extra": c} for c in "vwxyz"]
    with pytest.raises(ValueError, match="columns of different lengths"):
        ds.with_columns({"short": [1, 2]})


def _pair_batch(tokenizer) -> dict[str, torch.Tensor]:
    """Pairs with prompts of different lengths, a one-token response and responses of unequal length."""
    pairs = [
        {"prompt": "Q: 1+1?\nAnswer:", "chosen": " The answer is 2.", "rejected": " It is 3, I think."},
        {"prompt": "Q: what is 12 plus 30?\nAnswer:", "chosen": " 42", "rejected": " The answer is 43."},
        {"prompt": "Q:", "chosen": " The answer is 7 and it is 7.", "rejected": "."},
    ]
    dm = PreferenceDataModule(
        train=pairs, val=pairs, tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=3, length_grouping=False
    )
    dm.setup()
    return next(iter(dm.val_dataloader()))


def _tiny_model_and_pair_batch() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from bmc.models import TinyLlama

    torch.manual_seed(0)
    texts = ["Q: what is 12 plus 30?\nAnswer: The answer is 42, I think.", "It is 7."] * 10
    model, tokenizer = TinyLlama(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=300).build(
        texts
    )
    return model, _pair_batch(tokenizer)


def test_shared_prompt_log_probs_and_gradients_equal_the_plain_ones() -> None:
    from bmc.logprobs import shared_prompt_token_logps

    model, batch = _tiny_model_and_pair_batch()
    plain, mask = response_token_logps(model, batch)
    shared, shared_mask = shared_prompt_token_logps(model, batch)
    assert torch.equal(mask, shared_mask) and shared[~mask].abs().sum() == 0
    assert torch.allclose(shared, plain, atol=1e-5), (shared - plain).abs().max()
    weights = torch.randn_like(plain)
    params = [p for p in model.parameters() if p.requires_grad]
    plain_grads = torch.autograd.grad((plain * weights).sum(), params)
    shared_grads = torch.autograd.grad((shared_prompt_token_logps(model, batch)[0] * weights).sum(), params)
    for expected, got in zip(plain_grads, shared_grads):
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()

    mixed = {k: v.clone() for k, v in batch.items()}
    mixed["input_ids"][3, 0] = mixed["input_ids"][3, 0] + 1  # the first rejected row's prompt differs
    with pytest.raises(ValueError, match="same non-empty prompt"):
        shared_prompt_token_logps(model, mixed)


def test_module_with_shared_prompts_gives_the_plain_loss_and_refuses_a_model_that_ignores_them() -> None:
    import copy

    from bmc.module import PreferenceModule

    model, batch = _tiny_model_and_pair_batch()
    objective = {"loss": {"name": "dpo", "beta": 0.1}, "token_weighting": {"name": "bmc", "delta": 2.5},
                 "regularizer": {"name": "none"}, "optim": {}}  # fmt: skip
    reference = copy.deepcopy(model)
    losses = {}
    for share in (False, True):
        module = PreferenceModule(model, reference, share_prompt=share, **objective)
        module.log_dict = lambda *args, **kwargs: None
        losses[share] = module._step(batch, "train")
    assert torch.allclose(losses[True], losses[False], atol=1e-6)

    sharp = copy.deepcopy(model)  # a random tiny model barely looks at its context: make attention count
    for layer in sharp.model.layers:
        layer.self_attn.v_proj.weight.data *= 10
        layer.self_attn.o_proj.weight.data *= 30
    sharp.lm_head.weight.data *= 20

    batch["ref_token_logps"] = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    sharp_module = PreferenceModule(sharp, None, share_prompt=True, **objective)
    sharp_module.log_dict = lambda *args, **kwargs: None
    sharp_module._step(batch, "train")  # the same weights, packed properly: the check passes
    module = PreferenceModule(IgnoresPacking(sharp), None, share_prompt=True, **objective)
    with pytest.raises(RuntimeError, match="share_prompt=false"):
        module._step(batch, "train")


def test_the_shared_prompt_check_computes_in_float32_and_restores_16_bit_weights_exactly() -> None:
    import copy

    from bmc.scoring_check import verify_scoring

    model, batch = _tiny_model_and_pair_batch()
    seen = []

    class RecordsPrecision(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, **inputs) -> SimpleNamespace:
            seen.append((torch.is_autocast_enabled("cpu"), next(self.inner.parameters()).dtype))
            return self.inner(**inputs)

    with torch.autocast("cpu", torch.bfloat16):  # as under trainer.precision=bf16-mixed
        assert verify_scoring(RecordsPrecision(model), batch, share_prompt=True)
    assert seen == [(False, torch.float32)] * 2  # the model's own rows, then the shared layout

    bf16 = copy.deepcopy(model).to(torch.bfloat16)  # model.dtype=bfloat16 or bf16-true
    before = {name: p.clone() for name, p in bf16.named_parameters()}
    seen.clear()
    assert verify_scoring(RecordsPrecision(bf16), batch, share_prompt=True)
    assert seen == [(False, torch.float32)] * 2
    assert verify_scoring(bf16, batch, chunk_positions=2, share_prompt=True)
    assert all(p.dtype == torch.bfloat16 and torch.equal(p, before[name]) for name, p in bf16.named_parameters())
    for layer in bf16.model.layers:  # make attention count, as in the test above
        layer.self_attn.v_proj.weight.data *= 10
        layer.self_attn.o_proj.weight.data *= 30
    bf16.lm_head.weight.data *= 20
    with pytest.raises(RuntimeError, match=r"above 0\.0001\).*share_prompt=false"):
        verify_scoring(IgnoresPacking(bf16), batch, share_prompt=True)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())  # restored after a refusal too


def test_a_flash_attention_model_with_shared_prompts_falls_back_to_plain_rows_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """flash-attention kernels take no 4D mask: the module scores such a model's pairs as separate rows (the
    same loss as share_prompt=false), says so once, and never calls the packed path or its first-batch check."""
    import logging

    import bmc.logprobs
    import bmc.module
    from bmc.module import PreferenceModule

    model, batch = _tiny_model_and_pair_batch()
    objective = {"loss": {"name": "dpo", "beta": 0.1}, "token_weighting": {"name": "uniform"},
                 "regularizer": {"name": "none"}, "optim": {}}  # fmt: skip
    batch["ref_token_logps"] = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    plain = PreferenceModule(model, None, share_prompt=False, **objective)
    plain.log_dict = lambda *args, **kwargs: None
    expected = plain._step(batch, "train")

    def packed(*args, **kwargs):
        raise AssertionError("the packed path needs a 4D mask")

    class OnFlashAttention(torch.nn.Module):  # the same weights; its config names the kernel (absent on CPU)
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.config = SimpleNamespace(_attn_implementation="flash_attention_2")

        def forward(self, **inputs) -> SimpleNamespace:
            return self.inner(**inputs)

    for owner in (bmc.module, bmc.logprobs):
        monkeypatch.setattr(owner, "shared_prompt_token_logps", packed)
    module = PreferenceModule(OnFlashAttention(), None, share_prompt=True, **objective)
    module.log_dict = lambda *args, **kwargs: None
    with caplog.at_level(logging.INFO, logger="bmc.scoring_check"):
        losses = [module._step(batch, "train") for _ in range(2)]
    assert all(torch.allclose(loss, expected) for loss in losses)
    notes = [r.getMessage() for r in caplog.records if "share_prompt" in r.getMessage()]
    assert len(notes) == 1 and "flash_attention_2" in notes[0] and "separate rows" in notes[0]
