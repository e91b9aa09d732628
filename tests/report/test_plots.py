"""The plots of a sweep: the delta sweep plot, with the methods' paper names."""

from __future__ import annotations

from pathlib import Path

from bmc.report import (
    RunRecord,
    load_sweep,
    paper_name,
    write_report,
)
from tests.doubles.report_runs import run_config, write_job


def test_delta_sweep_plot_and_paper_names(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for job, (data, delta, seed) in enumerate((d, x, s) for d in ("pseudo_winning",) for x in (1, 3) for s in (0, 1)):
        overrides = ["loss=bmc", f"data={data}", f"token_weighting.delta={delta}", f"seed={seed}"]
        config = run_config("math", "bmc", seed, data=data, delta=float(delta))
        write_job(root / f"{job}", overrides, config, {"eval/accuracy": 0.1 * delta + 0.01 * seed}, curves=False)
    records = load_sweep(root)
    assert {r.method for r in records} == {"DPO-BMC (token_weighting.delta=1)", "DPO-BMC (token_weighting.delta=3)"}
    report = write_report(records, tmp_path / "out")
    assert [p.name for p in report.plots] == ["delta_sweep_math.png"]  # no csv, no token rewards: skipped
    names = {
        ("original", "dpo", "uniform"): "DPO",
        ("pseudo_winning", "dpo", "uniform"): "DPO-BC",
        ("sampled", "dpo", "bmc"): "DPO-MC",
        ("pseudo_winning", "dpo", "bmc"): "DPO-BMC",
        ("original", "sft", "uniform"): "SFT",
        ("sampled", "ipo", "uniform"): "IPO",
        ("pseudo_winning", "simpo", "bmc"): "SimPO-BMC",
        ("pseudo_winning", "ipo", "uniform"): None,  # half of BMC on another loss has no paper name
        ("original", "hinge", "uniform"): None,
        ("ipr", "dpo", "uniform"): "IPR",
        ("ipr", "dpo", "bmc"): None,
        ("sampled", "tdpo2", "uniform"): "TDPO2",
        ("sampled", "dpo", "confpo"): "DPO-ConfPO",
        ("ipr", "dpo_pl", "uniform"): "IPR-PL",
        ("ipr", "dpo_pl", "bmc"): "IPR-PL-BMC",
        ("sampled", "lipo", "uniform"): None,
    }
    for (data, loss, weighting), name in names.items():
        config = {"data": {"name": data}, "loss": {"name": loss}, "token_weighting": {"name": weighting}}
        assert paper_name(RunRecord("r", "completed", config, {})) == name
    dpo_bcr = {"data": {"name": "sampled"}, "loss": {"name": "dpo"}, "regularizer": {"name": "bcr"}}
    assert paper_name(RunRecord("r", "completed", dpo_bcr, {})) == "DPO+BCR"
    hinge_bcr = {"data": {"name": "sampled"}, "loss": {"name": "hinge"}, "regularizer": {"name": "bcr"}}
    assert paper_name(RunRecord("r", "completed", hinge_bcr, {})) is None
    # method=sft evaluates the warm start (max_steps 0); method=sft_chosen trains it on the chosen responses
    sft = {"data": {"name": "sampled"}, "loss": {"name": "sft"}, "token_weighting": {"name": "uniform"}}
    assert paper_name(RunRecord("r", "completed", {**sft, "trainer": {"max_steps": 0}}, {})) == "SFT"
    assert paper_name(RunRecord("r", "completed", {**sft, "trainer": {"max_steps": -1}}, {})) == "SFT+chosen"
