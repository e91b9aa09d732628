"""A loss, a judge and an evaluation added from outside the package, as a user adds one: the implementation
registered where it is defined (here), selected by name in the config, its options checked by its signature."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator, Sequence

import pytest
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import Logger

from bmc.losses import LossOutput, SequenceLogps, build_loss
from bmc.pipeline import run
from bmc.plugins import EVALUATIONS, JUDGES, LOSSES
from bmc.stages.products import EvalSetup, Evaluation, TrainedPolicy
from bmc.synthesis.judges import PointwiseJudge, build_judge
from tests.conftest import ROOT

CALLS = {"loss": 0, "judge": 0}


def scaled_dpo(logps: SequenceLogps, *, beta: float = 0.1, scale: float = 1.0) -> LossOutput:
    """scale * DPO: -scale log sigma(beta Delta)."""
    CALLS["loss"] += 1
    r_w, r_l = logps.logratios()
    return LossOutput(-scale * F.logsigmoid(beta * (r_w - r_l)), beta * r_w, beta * r_l)


class LongerJudge(PointwiseJudge):
    """Prefers the longer response: score = len(response) + bonus."""

    def __init__(self, bonus: float = 0.0) -> None:
        super().__init__()
        self.bonus = bonus

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        CALLS["judge"] += 1
        return [len(r) + self.bonus for r in responses]


def longer_chosen(setup: EvalSetup) -> Evaluation:
    """The share of training pairs whose chosen response is not the shorter one (1.0 when LongerJudge ranked)."""

    def evaluate(trained: TrainedPolicy, loggers: list[Logger]) -> dict[str, float]:
        pairs = setup.pairs.pairs
        return {"eval/longer_chosen": sum(len(p["chosen"]) >= len(p["rejected"]) for p in pairs) / len(pairs)}

    return evaluate


@pytest.fixture
def plugins() -> Iterator[None]:
    """Register the three for one test and leave the registries as they were (other tests count them)."""
    added = [(LOSSES, "scaled_dpo", scaled_dpo), (JUDGES, "longer", LongerJudge), (EVALUATIONS, "longer_chosen",
             longer_chosen)]  # fmt: skip
    for registry, name, target in added:
        registry.register(name)(target)
    yield
    for registry, name, _ in added:
        registry.unregister(name)


def test_a_registered_loss_is_built_by_name_with_its_options_checked(plugins: None) -> None:
    logps = SequenceLogps(*(torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, 2, 2, -2.0, -2.5)))
    # Delta = (-1 + 2) - (-3 + 2.5) = 1.5; loss = 0.5 * -log sigma(0.2 * 1.5) = 0.5 * log(1 + e^-0.3)
    out = build_loss("scaled_dpo", beta=0.2, scale=0.5)(logps)
    assert out.losses.item() == pytest.approx(0.5 * math.log1p(math.exp(-0.3)), abs=1e-12)
    unknown = r"loss 'scaled_dpo' got unknown option\(s\) \['scael'\] in config group 'loss'"
    with pytest.raises(ValueError, match=unknown):
        build_loss("scaled_dpo", scael=0.5)
    with pytest.raises(ValueError, match=r"loss 'scaled_dpo': beta=0 is out of range \(0.0, inf\)"):
        build_loss("scaled_dpo", beta=0)  # the shared range of beta applies to a new loss too


def test_unknown_kinds_and_keys_name_the_setting(plugins: None) -> None:
    assert isinstance(build_judge({"kind": "longer", "bonus": 1.0}), LongerJudge)
    with pytest.raises(ValueError, match=r"unknown judge 'longest': judge.kind must be one of \[.*'longer'.*\]"):
        build_judge({"kind": "longest"})
    with pytest.raises(ValueError, match=r"judge 'longer' got unknown option\(s\) \['bonsu'\] in config group 'judge'"):
        build_judge({"kind": "longer", "bonsu": 1.0})
    with pytest.raises(ValueError, match=r"needs option\(s\) \['components'\]"):
        build_loss("mix")
    with pytest.raises(ValueError, match="judge 'longer' is already registered"):
        JUDGES.register("longer")(LongerJudge)


def test_a_registry_finds_its_built_ins_without_an_import_list() -> None:
    # a fresh interpreter that imports nothing but the registries: the first lookup imports bmc.losses' modules
    code = "from bmc.plugins import LOSSES, JUDGES; print(sorted(LOSSES)[:3], sorted(JUDGES))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "['aot', 'aot_unpaired', 'apo_down'] ['llm', 'reward_model', 'verifier']"


def test_a_job_runs_with_the_three(plugins: None, make_config) -> None:
    CALLS.update(loss=0, judge=0)
    cfg = make_config(
        "debug=default", "data=ipr", "judge.kind=longer", "+judge.bonus=1.0", "loss.name=scaled_dpo",
        "+loss.scale=0.5", "eval=verifier", "eval.kind=longer_chosen", "export.enabled=false",
    )  # fmt: skip
    metrics = run(cfg)
    assert CALLS["loss"] > 0  # the training steps (and validation) went through the registered loss
    assert CALLS["judge"] > 0  # IPR's comparisons asked the registered judge
    assert metrics["eval/longer_chosen"] == 1.0  # IPR ranked by the registered judge: every chosen is longer
