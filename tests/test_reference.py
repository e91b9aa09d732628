"""Precomputed reference log-probs: equal to a fresh reference forward, cached by the right key, and a run
with a cache hit never builds or runs a reference model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import bmc.reference
import bmc.stages.preference
from bmc.data.datamodule import PreferenceDataModule
from bmc.data.tokenize import Truncation
from bmc.logprobs import response_token_logps
from bmc.models import TinyLlama
from bmc.module import PreferenceModule
from bmc.pipeline import run
from bmc.precision import resolve_precision
from bmc.reference import attach_reference_logps

PAIRS = [
    {"prompt": f"Q: what is {i} plus {i * 3}?\nAnswer:", "chosen": f" It is {4 * i}." + " ok" * (i % 4),
     "rejected": f" It is {4 * i + 1}, I think" + " so" * (i % 3)}
    for i in range(12)
]  # fmt: skip


TRUNCATION = Truncation(64, 32)


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    texts = [p[k] for p in PAIRS for k in ("prompt", "chosen", "rejected")]
    return TinyLlama(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300).build(texts)


def _datamodule(tokenizer, pairs=PAIRS, truncation=TRUNCATION) -> PreferenceDataModule:
    dm = PreferenceDataModule(train=pairs[:9], val=pairs[9:], tokenizer=tokenizer, truncation=truncation, batch_size=4)
    dm.setup()
    return dm


def test_cached_reference_logps_equal_a_fresh_reference_forward(tiny, tmp_path: Path, monkeypatch) -> None:
    model, tokenizer = tiny
    dm = _datamodule(tokenizer)
    folder = attach_reference_logps(dm, model, tmp_path, model_key={"name": "tiny"}, batch_size=3)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            fresh, mask = response_token_logps(model.eval(), batch)
            cached = batch["ref_token_logps"]
            assert cached.shape == fresh.shape == mask.shape
            assert torch.allclose(cached, fresh, atol=1e-5), (cached - fresh).abs().max()
            assert cached[~mask].abs().sum() == 0 and (cached[mask] < 0).all()

    calls: list[str] = []
    original = bmc.reference.compute_reference_logps
    monkeypatch.setattr(
        bmc.reference, "compute_reference_logps", lambda *a, **k: calls.append("x") or original(*a, **k)
    )
    again = _datamodule(tokenizer)
    assert attach_reference_logps(again, model, tmp_path, model_key={"name": "tiny"}) == folder
    assert calls == []  # a cache hit computes nothing
    for split in ("train", "val"):
        assert again.datasets[split]["ref_chosen_logps"] == dm.datasets[split]["ref_chosen_logps"]
        assert [len(r) for r in again.datasets[split]["ref_rejected_logps"]] == [
            len(r) for r in again.datasets[split]["rejected_ids"]
        ]


def test_reference_cache_key_changes_with_model_data_truncation_and_scoring_revision(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    """The scoring revision is in the key: values computed by an earlier scoring path (b51deb9's shared prompt
    ignored sliding windows) are never served after a fix."""
    model, tokenizer = tiny

    def folder(key: str = "a", pairs=PAIRS, truncation=TRUNCATION) -> Path:
        return attach_reference_logps(_datamodule(tokenizer, pairs, truncation), model, tmp_path, model_key={"m": key})

    base = folder()
    assert folder() == base
    edited = [dict(PAIRS[0], rejected=" It is 7.")] + PAIRS[1:]
    variants = {folder("b"), folder(pairs=edited), folder(truncation=Truncation(16, 8))}
    payload = json.loads((base / "cache_payload.json").read_text())
    assert set(payload) == {"model", "tokenizer", "data", "truncation", "precision", "format", "scoring"}
    assert payload["scoring"] == bmc.reference.SCORING_REVISION >= 2
    monkeypatch.setattr(bmc.reference, "SCORING_REVISION", payload["scoring"] - 1)
    variants.add(folder())
    assert base not in variants and len(variants) == 4


def test_module_without_reference_or_cached_logps_fails_clearly(tiny) -> None:
    model, tokenizer = tiny
    module = PreferenceModule(
        model, None, loss={"name": "dpo", "beta": 0.1}, token_weighting={"name": "uniform"},
        regularizer={"name": "none"}, optim={},
    )  # fmt: skip
    batch = next(iter(_datamodule(tokenizer).val_dataloader()))
    with pytest.raises(RuntimeError, match="ref_token_logps"):
        module.token_rewards(batch)


def test_a_cache_hit_run_builds_no_reference_and_matches_the_in_step_reference(make_config, monkeypatch) -> None:
    calls: list[str] = []
    for target, name in ((bmc.stages.preference, "frozen_copy"), (bmc.reference, "compute_reference_logps")):
        original = getattr(target, name)
        monkeypatch.setattr(target, name, lambda *a, f=original, n=name, **k: calls.append(n) or f(*a, **k))
    overrides = ["debug=default", "loss=bmc", "eval.enabled=false", "callbacks=default"]

    def run_and_read(*extra: str) -> tuple[dict[str, float], dict]:
        cfg = make_config(*overrides, *extra)
        metrics = run(cfg)
        return metrics, json.loads((Path(cfg.paths.output_dir) / "token_rewards.json").read_text())

    first, _ = run_and_read()
    assert calls == ["compute_reference_logps"] * 2  # train and val, with the policy: no model copy
    calls.clear()
    cached, cached_rewards = run_and_read()
    assert calls == []  # cache hit: no reference model, no reference forward
    in_step, in_step_rewards = run_and_read("reference.precompute=false")
    assert calls == ["frozen_copy"]
    for key in ("val/loss", "val/rewards/margins", "val/bmc/mean_weight_marked"):
        assert math.isclose(cached[key], first[key], rel_tol=0, abs_tol=1e-7), key
        assert math.isclose(cached[key], in_step[key], rel_tol=1e-4, abs_tol=1e-6), key
    for a, b in zip(cached_rewards["examples"], in_step_rewards["examples"]):  # TokenRewardLogger uses the cache
        assert a["tokens"] == b["tokens"] and a["rewards"] == pytest.approx(b["rewards"], abs=1e-4)


def test_length_batches_cap_pairs_and_padded_positions_and_drop_nothing() -> None:
    from bmc.reference import length_batches

    widths = [5, 1, 3, 9, 2]  # by width: items 1, 4, 2, 0, 3
    assert length_batches(widths, rows_per_item=2, batch_size=3) == [[1, 4, 2], [0, 3]]
    # 2 rows x 2 items x width 2 = 8 <= 12 fits; 2 x 3 x 3 = 18 does not; item 3 (2 x 9 = 18) is alone
    assert length_batches(widths, rows_per_item=2, batch_size=3, batch_tokens=12) == [[1, 4], [2], [0], [3]]
    assert length_batches(widths, rows_per_item=1, batch_size=8, batch_tokens=12) == [[1, 4, 2], [0], [3]]
    assert length_batches([], 1, 4, 10) == []


def test_shared_prompt_precompute_equals_the_plain_one_in_fewer_positions(tiny, monkeypatch) -> None:
    """The precompute scores each prompt once (as training does) in token-capped batches, to the same values."""
    model, tokenizer = tiny
    dm = _datamodule(tokenizer)
    dataset = dm.datasets["train"]
    forwards: list[tuple[int, int]] = []
    original = bmc.reference.shared_prompt_token_logps

    def counted(model, batch, chunk_positions=None):
        forwards.append(tuple(batch["input_ids"].shape))
        return original(model, batch, chunk_positions)

    monkeypatch.setattr(bmc.reference, "shared_prompt_token_logps", counted)
    compute = bmc.reference.compute_reference_logps
    plain = compute(model, dataset, dm.collate, 64, torch.device("cpu"))
    assert forwards == []
    shared = compute(model, dataset, dm.collate, 64, torch.device("cpu"), share_prompt=True, batch_tokens=80)
    rows = dataset.rows()
    widths = [len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows]
    assert len(forwards) == len(bmc.reference.length_batches(widths, 1, 64, 80)) > 1
    assert sum(rows // 2 for rows, _ in forwards) == len(dataset)  # every pair scored once
    for name in plain:
        assert [len(v) for v in plain[name]] == [len(v) for v in shared[name]]
        for a, b in zip(plain[name], shared[name]):
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_precompute_asks_the_shared_prompt_check_once_and_follows_it(tiny, monkeypatch) -> None:
    """The check of bmc.scoring_check (tested with the module in test_data.py) decides, on the first pair: a model
    it turns down (flash-attention) is scored in plain rows; one it refuses stops the precompute."""
    model, tokenizer = tiny
    dm = _datamodule(tokenizer)
    asked: list[int] = []

    def declines(model, batch, chunk_positions=None, share_prompt=False):
        asked.append((batch["input_ids"].shape[0], share_prompt))
        return False

    def never(*args, **kwargs):
        raise AssertionError("the check declined the shared-prompt layout")

    monkeypatch.setattr(bmc.reference, "verify_scoring", declines)
    monkeypatch.setattr(bmc.reference, "shared_prompt_token_logps", never)
    compute = bmc.reference.compute_reference_logps
    values = compute(model, dm.datasets["train"], dm.collate, 4, torch.device("cpu"), share_prompt=True)
    assert asked == [(2, True)]  # one pair: its chosen and rejected rows
    assert values["ref_chosen_logps"][0].shape == (len(dm.datasets["train"].rows()[0]["chosen_ids"]),)

    def refuses(*args, **kwargs):
        raise RuntimeError("share_prompt=true: ... Run with share_prompt=false.")

    monkeypatch.setattr(bmc.reference, "verify_scoring", refuses)
    with pytest.raises(RuntimeError, match="share_prompt=false"):
        compute(model, dm.datasets["train"], dm.collate, 4, torch.device("cpu"), share_prompt=True)


def test_the_bf16_alias_computes_and_caches_the_reference_as_bf16_mixed_not_float32(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    compute = bmc.reference.compute_reference_logps
    dm = _datamodule(tokenizer)
    alias, mixed, full = (
        compute(model, dm.datasets["train"], dm.collate, 4, torch.device("cpu"), resolve_precision(value))
        for value in ("bf16", "bf16-mixed", "32-true")
    )
    for name in alias:
        assert all(torch.equal(a, b) for a, b in zip(alias[name], mixed[name]))
        assert max((a - b).abs().max() for a, b in zip(alias[name], full[name])) > 1e-4  # bf16 rounding shows

    def folder(value) -> Path:
        dm = _datamodule(tokenizer)
        return attach_reference_logps(dm, model, tmp_path, {"m": "tiny"}, precision=resolve_precision(value))

    assert folder("bf16") == folder("bf16-mixed") != folder("32-true")
    assert json.loads((folder("bf16") / "cache_payload.json").read_text())["precision"] == "bf16-mixed"


@pytest.mark.parametrize(("value", "dtype"), [("bf16-true", torch.bfloat16), ("16-true", torch.float16)])
def test_a_true_precision_computes_the_reference_with_weights_in_its_dtype(tiny, value: str, dtype) -> None:
    """Lightning casts the policy to the dtype at fit, so the reference it starts from is that cast model."""
    model, tokenizer = tiny
    model = copy.deepcopy(model)
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    model.lm_head.register_forward_pre_hook(
        lambda module, args: seen.append((module.weight.dtype, torch.get_default_dtype()))
    )
    dm = _datamodule(tokenizer)
    compute = bmc.reference.compute_reference_logps
    values = compute(model, dm.datasets["train"], dm.collate, 4, torch.device("cpu"), resolve_precision(value))
    assert seen and set(seen) == {(dtype, dtype)}
    assert next(model.parameters()).dtype == dtype  # left cast, as fit would leave it
    cast = compute(copy.deepcopy(tiny[0]).to(dtype), dm.datasets["train"], dm.collate, 4, torch.device("cpu"),
                   resolve_precision(value))  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(values["ref_chosen_logps"], cast["ref_chosen_logps"]))
    assert all(v.dtype == torch.float32 for v in values["ref_chosen_logps"])


class _FirstStepRewards(PreferenceModule):
    """Records the first training batch's per-token log-ratios, computed inside Lightning's training step."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if batch_idx == 0:
            self.first_rewards = self.token_rewards(batch)
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("reference", ["bf16", "32-true"])
def test_under_bf16_training_the_step0_log_ratios_are_zero_with_the_reference_of_the_rule(
    tiny, tmp_path: Path, reference: str
) -> None:
    """trainer.precision=bf16 (Lightning's alias of bf16-mixed) trains under bf16 autocast: the reference
    precomputed under the same precision equals the policy at step 0; one computed in float32 does not."""
    import pytorch_lightning as pl

    model, tokenizer = tiny
    policy = copy.deepcopy(model)
    dm = _datamodule(tokenizer)
    attach_reference_logps(dm, policy, tmp_path, {"m": "tiny"}, precision=resolve_precision(reference), batch_size=3)
    module = _FirstStepRewards(
        policy, None, loss={"name": "dpo", "beta": 1.0}, token_weighting={"name": "uniform"},
        regularizer={"name": "none"}, optim={"lr": 1e-3},
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", precision="bf16", max_steps=1, logger=False, enable_checkpointing=False,
        limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    rewards, mask = module.first_rewards
    if reference == "bf16":
        assert rewards[mask].abs().max() == 0
    else:
        assert rewards[mask].abs().max() > 1e-3
