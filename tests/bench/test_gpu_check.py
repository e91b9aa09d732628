"""The GPU check's dry run runs every stage on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from bmc.bench import gpu_check


def test_gpu_check_dry_run_runs_every_stage_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    report = gpu_check.main(["--dry-run", "--out", str(out), "--workdir", str(tmp_path / "work")])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == [
        "train_bf16_smollm2", "train_bf16_llama1b", "bench_smollm2", "bench_llama1b", "bench_smollm2_compiled",
        "fsdp2", "real_paper_dpo_math",
    ]  # fmt: skip
    for name in ("train_bf16_smollm2", "bench_smollm2", "bench_smollm2_compiled", "fsdp2"):
        assert stages[name]["status"] == "passed", stages[name].get("output_tail")
    for name in ("train_bf16_llama1b", "bench_llama1b"):  # the dry run's two models are one config
        assert stages[name]["status"] == "skipped" and "one config" in stages[name]["reason"]
    assert any("loss" in k for k in stages["train_bf16_smollm2"]["summary"])
    config = OmegaConf.load(tmp_path / "work" / "runs" / "train-smollm2" / ".hydra" / "config.yaml")
    assert config.trainer.precision == "bf16-mixed"  # the GPU's precision, on CPU
    bench = json.loads((tmp_path / "work" / "bench-smollm2.json").read_text())
    assert bench["machine"]["precision"] == "bf16-mixed"  # every implementation of the bench in bf16
    assert "compile.enabled=true" in stages["bench_smollm2_compiled"]["command"]
    assert any(
        k.startswith("precomputed ours_dpo") and "MFU" in v for k, v in stages["bench_smollm2"]["summary"].items()
    )
    # FSDP2 as on a GPU, bf16-mixed, on two CPU processes: trained and validated like the one-process run
    assert "trainer=fsdp2 trainer.accelerator=cpu trainer.devices=2" in stages["fsdp2"]["command"]
    assert stages["fsdp2"]["summary"]["train/steps"] == stages["train_bf16_smollm2"]["summary"]["train/steps"] == 3
    fsdp2_config = OmegaConf.load(tmp_path / "work" / "runs" / "fsdp2" / ".hydra" / "config.yaml")
    assert fsdp2_config.trainer.precision == "bf16-mixed"
    assert fsdp2_config.trainer.strategy._target_ == "bmc.sharded_checkpoint.AtomicModelParallelStrategy"
    assert stages["real_paper_dpo_math"]["status"] == "skipped"
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith("# GPU check: cpu (dry run") and "| bench_smollm2 | passed |" in markdown
