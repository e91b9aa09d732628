"""A NaN must not cost a sweep: non-finite losses and gradients stop the run with a message naming the step
and batch, checkpoints keep the last good weights, the run is marked failed, and the other jobs go on.
Same config and seed give the same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from bmc.callbacks import NonFiniteError, NonFiniteGuard
from bmc.module import PreferenceModule
from bmc.pipeline import run
from tests.conftest import compose_config, run_cli

FAST = ["debug=default"]


class _Toy(pl.LightningModule):
    """A linear model whose loss goes wrong from ``bad_step`` on, in the way ``fault`` says."""

    def __init__(self, fault: str, bad_step: int, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.fault, self.bad_step, self.lr = fault, bad_step, lr
        self.weights_seen: list[torch.Tensor] = []  # the weights each step started from

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.weights_seen.append(self.layer.weight.detach().clone())
        loss = self.layer(batch[0]).pow(2).mean()
        if self.global_step < self.bad_step:
            return loss
        if self.fault == "loss":
            return loss * float("nan")
        if self.fault == "gradient":  # finite value, NaN gradient: d sqrt(u) / du at u = 0 times du / dw = 0
            return loss + torch.sqrt((self.layer.weight - self.layer.weight.detach()).pow(2)).sum()
        self.optimizers().param_groups[0]["lr"] = 1e30  # "weights": a finite loss and gradient, an update
        return loss * 1e10  # that overflows the weights (beyond float32's 3.4e38)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _fit(module: _Toy, tmp_path: Path, callbacks: list[pl.Callback]) -> pl.Trainer:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)
    trainer = pl.Trainer(
        max_steps=6, callbacks=callbacks, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path), enable_checkpointing=any(
            isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
    )  # fmt: skip
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize(
    ("fault", "message"),
    [("loss", r"non-finite training loss \(nan\)"), ("gradient", r"non-finite gradient norm \(nan\)")],
)
def test_a_non_finite_loss_or_gradient_stops_before_the_update(fault: str, message: str, tmp_path: Path) -> None:
    module = _Toy(fault, bad_step=3)
    with pytest.raises(NonFiniteError, match=message + r" at global step 3 \(epoch 0, batch 3\); stopped before"):
        _fit(module, tmp_path, [NonFiniteGuard()])
    assert len(module.weights_seen) == 4
    # the weights are those the failing step started from: the bad gradient never reached them
    assert torch.equal(module.layer.weight.detach(), module.weights_seen[-1])
    assert torch.isfinite(module.layer.weight).all()


def test_without_the_guard_the_same_fault_trains_through_silently(tmp_path: Path) -> None:
    module = _Toy("loss", bad_step=3)
    _fit(module, tmp_path, [])
    assert torch.isnan(module.layer.weight).all()  # what the guard prevents


def test_a_checkpoint_of_non_finite_weights_is_refused_and_the_last_good_one_kept(tmp_path: Path) -> None:
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    module = _Toy("weights", bad_step=2)
    with pytest.raises(NonFiniteError, match=r"non-finite weights at global step 3 .* the checkpoint was not written"):
        _fit(module, tmp_path, [NonFiniteGuard(), checkpoint])
    assert not torch.isfinite(module.layer.weight).all()  # the loss and gradient were finite; the update was not
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_a_nan_in_a_pipeline_run_marks_it_failed_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, shared_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = PreferenceModule.training_step

    def poisoned(self: PreferenceModule, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 3 else loss

    monkeypatch.setattr(PreferenceModule, "training_step", poisoned)
    cfg = compose_config(
        [*FAST, "callbacks=default", "trainer.val_check_interval=2"], tmp_path / "run", shared_cache
    )
    with pytest.raises(NonFiniteError, match=r"training loss \(nan\) at global step 3 \(epoch 0, batch 3\)"):
        run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith("NonFiniteError: non-finite training loss (nan) at global step 3")
    assert "train/steps" not in summary["metrics"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2  # saved by the validation after step 2, the last before the poisoned step
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_a_diverging_job_fails_alone_in_a_multirun_and_the_report_shows_it(
    tmp_path: Path, shared_cache: Path
) -> None:
    from bmc.report import comparison_table, load_sweep

    # optim.lr=1e30 is a real divergence (no test hook): the first update blows the weights up
    args = ["-m", *FAST, "optim.lr=1e30,2e-5", "optim.warmup_ratio=0", "callbacks=default"]
    output = run_cli([*args, f"paths.cache_dir={shared_cache}", "hydra.sweep.dir=multirun_outputs/sweep"], cwd=tmp_path)
    assert "the sweep goes on" in output
    sweep = tmp_path / "multirun_outputs" / "sweep"
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    by_status = {s["status"]: s for s in summaries.values()}
    assert sorted(s["status"] for s in summaries.values()) == ["completed", "failed"]
    assert by_status["failed"]["config"]["optim"]["lr"] == 1e30
    assert by_status["failed"]["error"].startswith("NonFiniteError: non-finite ")
    assert "at global step 1 (epoch 0, batch 1)" in by_status["failed"]["error"]
    assert by_status["completed"]["metrics"]["train/steps"] == 6
    table = comparison_table(load_sweep(sweep), ["val/loss"])
    assert sum(table.cell(m, "math", "val/loss").failed for m in table.methods) == 1


def _summary_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "summary.json").read_text())["metrics"]


def test_same_config_and_seed_give_the_same_summary_metrics(tmp_path: Path) -> None:
    # fresh caches: both runs redo the SFT warm start (initialization and training), the sampling of
    # completions, the preference training and the evaluation; the second in its own process
    overrides = [*FAST, "data=sampled", "data.sampler.backend=hf"]
    run(compose_config(overrides, tmp_path / "a", tmp_path / "cache_a"))
    first = _summary_metrics(tmp_path / "a")
    run_cli([*overrides, f"paths.cache_dir={tmp_path / 'cache_b'}", f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    assert _summary_metrics(tmp_path / "b") == first  # exact equality, every metric (none is a wall time)
    assert {"eval/accuracy", "val/loss", "data/pairs_out", "data/completions", "eval/sft_accuracy"} <= first.keys()
    run(compose_config([*overrides, "seed=1"], tmp_path / "c", tmp_path / "cache_a"))
    assert _summary_metrics(tmp_path / "c")["val/loss"] != first["val/loss"]  # the run seed is honoured
