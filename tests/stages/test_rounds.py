"""Online iterative rounds (bmc/stages/rounds.py, round_plan.py; METHODS.md §7): which weights each round
samples from and is referenced to, its prompts and pairs, its fresh optimizer and schedule, the checks that
refuse a config before any stage, and a run killed in round 2's training that resumes there from cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from bmc import reference as reference_module
from bmc.cache import weights_fingerprint
from bmc.pipeline import run
from bmc.stages import rounds as rounds_module
from bmc.stages.round_plan import IterativeSettings, round_config, round_prompts
from bmc.synthesis.sampler.hf import HFSampler
from tests.conftest import compose_config
from tests.doubles.train_process import kill_once_written

# two rounds of the debug sizes: 24 preference prompts, 12 a round, sampled from the policy itself (hf)
ROUNDS = ["debug=default", "method=dpo", "rounds=2", "data.sampler.backend=hf", "optim.lr=2e-3"]


def _fingerprint(folder: str | Path) -> str:
    return weights_fingerprint(AutoModelForCausalLM.from_pretrained(folder))


class Spies:
    """The weights each sampler call and each reference precompute ran with, and each round's trainer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sampled: list[str] = []
        self.referenced: list[str] = []
        self.trainings: list[dict[str, Any]] = []
        sample_batch, attach = HFSampler.sample_batch, reference_module.attach_reference_logps

        def sampling(sampler: HFSampler, *args: Any, **kwargs: Any) -> Any:
            self.sampled.append(weights_fingerprint(sampler.model))
            return sample_batch(sampler, *args, **kwargs)

        def attaching(datamodule: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            self.referenced.append(weights_fingerprint(model))
            return attach(datamodule, model, *args, **kwargs)

        train = rounds_module.train_preference

        def training(cfg: Any, data: Any, policy: Any, loggers: Any, ckpt_path: Any, **kwargs: Any) -> Any:
            trained = train(cfg, data, policy, loggers, ckpt_path, **kwargs)
            optimizer = trained.trainer.optimizers[0]
            self.trainings.append({
                "ckpt_path": ckpt_path,
                "adam_steps": {float(s["step"]) for s in optimizer.state.values()},
                "scheduler_steps": trained.trainer.lr_scheduler_configs[0].scheduler.last_epoch,
                "optimizer": id(optimizer),
            })  # fmt: skip
            return trained

        monkeypatch.setattr(HFSampler, "sample_batch", sampling)
        monkeypatch.setattr("bmc.stages.preference.attach_reference_logps", attaching)
        monkeypatch.setattr(rounds_module, "train_preference", training)


def _summary(cfg: Any) -> dict[str, Any]:
    return json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())


def _pairs(record: dict[str, Any]) -> list[dict[str, Any]]:
    lines = Path(record["data_report"]["pairs_file"]).read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_defaults_are_one_round_and_for_rounds_the_previous_reference_disjoint_prompts_own_pairs(
    make_config,
) -> None:
    cfg = make_config()
    assert cfg.rounds == 1
    assert dict(cfg.iterative) == {"reference": "previous", "prompts": "disjoint", "accumulate_pairs": False,
                                   "serve_command": None, "serve_timeout_s": 600}  # fmt: skip


def test_prompt_slices_are_disjoint_and_cover_the_pool_and_same_redraws_all_of_it() -> None:
    pool = [f"p{i}" for i in range(10)]
    disjoint = IterativeSettings(rounds=3)
    slices = [round_prompts(pool, disjoint, t) for t in (1, 2, 3)]
    assert slices == [pool[0:3], pool[3:6], pool[6:10]]  # 10*t//3: cuts at 3 and 6
    assert round_prompts(pool, IterativeSettings(rounds=3, prompts="same"), 2) == pool
    with pytest.raises(ValueError, match="iterative.prompts=disjoint: 4 prompts cannot give 3 rounds"):
        round_prompts(pool[:4], disjoint, 1)


@pytest.mark.parametrize("reference", ["previous", "start"])
def test_round_two_samples_from_round_ones_weights_and_is_referenced_to_the_configured_policy(
    make_config, monkeypatch: pytest.MonkeyPatch, reference: str
) -> None:
    spies = Spies(monkeypatch)
    cfg = make_config(*ROUNDS, f"iterative.reference={reference}")
    run(cfg)
    summary = _summary(cfg)
    first, second = summary["rounds"]
    start, after_one = _fingerprint(first["policy"]), _fingerprint(first["model_dir"])
    assert start != after_one
    assert second["policy"] == first["model_dir"] == str(Path(cfg.paths.output_dir) / "rounds" / "1" / "model")
    # every sampler call of round 1 ran the start's weights, of round 2 round 1's export (not the start's)
    calls = len(spies.sampled) // 2
    assert spies.sampled == [start] * calls + [after_one] * calls
    expected = {"previous": [start, after_one], "start": [start, start]}[reference]
    assert spies.referenced == expected
    assert second["reference"] == {"previous": first["model_dir"], "start": first["policy"]}[reference]
    # the round's metrics are the run's, and each round's are kept under round/<t>/
    assert summary["metrics"]["eval/accuracy"] == second["metrics"]["eval/accuracy"]
    assert summary["metrics"]["round/1/val/loss"] == first["metrics"]["val/loss"]
    assert summary["model_dir"] == second["model_dir"]


def test_each_round_has_its_own_prompts_and_pairs_and_a_fresh_optimizer_and_schedule(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    spies = Spies(monkeypatch)
    cfg = make_config(*ROUNDS)
    run(cfg)
    first, second = _summary(cfg)["rounds"]
    assert first["prompts"] == second["prompts"] == 12  # debug: 24 preference prompts, half a round
    prompts = [{p["prompt"] for p in _pairs(record)} for record in (first, second)]
    assert not prompts[0] & prompts[1]
    for record in (first, second):  # its own pairs only: training + validation = the round's pairs
        metrics = record["metrics"]
        assert metrics["data/train_pairs"] + metrics["data/val_pairs"] == record["data_report"]["pairs_out"]
        assert metrics["train/steps"] == 6  # debug's max_steps, counted from 0 in each round
    # a new optimizer whose AdamW state has 6 steps (a carried one would have 12), a schedule 6 steps in
    assert [t["adam_steps"] for t in spies.trainings] == [{6.0}, {6.0}]
    assert [t["scheduler_steps"] for t in spies.trainings] == [6, 6]
    assert spies.trainings[0]["optimizer"] != spies.trainings[1]["optimizer"]
    assert [t["ckpt_path"] for t in spies.trainings] == [None, None]


def test_accumulate_pairs_trains_round_two_on_both_rounds_pairs(make_config) -> None:
    cfg = make_config(*ROUNDS, "iterative.accumulate_pairs=true")
    run(cfg)
    first, second = _summary(cfg)["rounds"]
    trained_on = second["metrics"]["data/train_pairs"] + second["metrics"]["data/val_pairs"]
    assert trained_on == first["data_report"]["pairs_out"] + second["data_report"]["pairs_out"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=sampled", "trainer.devices=2"], r"devices=2 num_nodes=1: rounds run in one process"),
        (["data=sampled", "trainer=ddp"], r"trainer.strategy=ddp devices=auto num_nodes=1: rounds run in one process"),
        (["data=original"], r"data.pairs=original does not sample the policy"),
        (["data=sampled", "iterative.reference=start", "reference.precompute=false"],
         r"reference=start needs a precomputed reference"),
        (["method=tdpo2", "iterative.reference=start"], r"reference=start needs a precomputed reference"),
        (["data=sampled", "data.sampler.backend={kind: openai, base_url: 'http://x/v1', model: m}"],
         r"set iterative.serve_command"),
        (["data=sampled", "ckpt_path=last"], r"ckpt_path=last: no rounds/ folder"),
        (["data=sampled", "+iterative.refrence=start"], r"iterative: unknown setting\(s\) \['refrence'\]"),
        (["data=sampled", "iterative.reference=best"],
         r"iterative.reference must be one of \('previous', 'start'\), got 'best'"),
    ],
)  # fmt: skip
def test_a_config_rounds_cannot_run_is_refused_before_any_stage(
    make_config, overrides: list[str], message: str
) -> None:
    cfg = make_config("debug=default", "rounds=2", *overrides)
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not Path(cfg.paths.cache_dir).exists()  # no SFT, no sampling: refused first


def test_a_run_killed_in_round_two_resumes_there_from_its_checkpoint_and_cached_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # three epochs a round, last.ckpt after each epoch's validation
    args = [
        *ROUNDS,
        "callbacks=default",
        "trainer.max_steps=-1",
        "trainer.max_epochs=3",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "rounds" / "2" / "checkpoints" / "last.ckpt"
    kill_once_written([*args, f"hydra.run.dir={run_dir}"], checkpoint, tmp_path)  # in round 2's training
    killed_at = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    round_one = run_dir / "rounds" / "1" / "round.json"
    written = round_one.stat().st_mtime_ns
    assert not (run_dir / "rounds" / "2" / "round.json").exists()

    spies = Spies(monkeypatch)
    cfg = compose_config([*args, "ckpt_path=last"], run_dir, tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="bmc"):
        run(cfg)
    log = caplog.text
    assert "round 1: finished" in log and round_one.stat().st_mtime_ns == written  # round 1 not redone
    assert spies.sampled == []  # round 2's samples: all from the cache
    for stage in ("samples", "pairs", "ref_logps"):
        assert f"cache hit: {stage}" in log, stage
    assert "cache write: ref_logps" not in log
    assert [t["ckpt_path"] for t in spies.trainings] == [str(checkpoint)]
    summary = _summary(cfg)
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [1, 2]
    steps = summary["rounds"][1]["metrics"]["train/steps"]
    assert 0 < killed_at < steps == summary["rounds"][0]["metrics"]["train/steps"]  # resumed, then to the end


def test_a_rounds_config_writes_in_its_folder_seeds_its_sampler_and_points_vllm_at_its_policy(make_config) -> None:
    cfg = make_config("method=dpo", "rounds=3", "callbacks=default", "sampler_backend@data.sampler.backend=vllm",
                      "data.sampler.backend.model=/ckpts/start", "data.sampler.seed=5")  # fmt: skip
    policy = Path("/runs/x/rounds/1/model")
    rc = round_config(cfg, 2, policy)
    folder = Path(cfg.paths.output_dir) / "rounds" / "2"
    assert (rc.paths.output_dir, rc.export.dir) == (str(folder), str(folder / "model"))
    assert rc.callbacks.model_checkpoint.dirpath == str(folder / "checkpoints")
    assert rc.callbacks.preemption.checkpoint == str(folder / "checkpoints" / "last.ckpt")
    assert rc.data.sampler.seed == 6 and rc.data.sampler.backend.model == str(policy)  # seed + t - 1
    assert cfg.data.sampler.seed == 5 and cfg.data.sampler.backend.model == "/ckpts/start"  # the run's config as it was
