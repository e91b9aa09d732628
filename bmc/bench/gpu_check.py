"""``make gpu-check`` (= ``python -m bmc.bench.gpu_check``): the prepared GPU check, one command of at most
8 minutes on one GPU with no network. Its stages, in order:

1. bf16 training of SmolLM2-135M (``train.py model=hf trainer=gpu`` on real-size pairs);
2. bf16 training of a ~1B Llama config (random weights, Llama-3.2-1B's shapes);
3. the benchmark against TRL at both models (``python -m bmc.bench --model ... --device gpu``);
4. the benchmark of ours at SmolLM2-135M with its decoder layers compiled (``compile.enabled=true``);
5. FSDP2 training (``trainer=fsdp2 trainer.precision=bf16-mixed``) over every GPU of the machine;
6. one job of the real-model experiment (``experiment=real_paper``, DPO on math_chat), when the real
   checkpoint is there.

SmolLM2-135M is the real checkpoint where ``BMC_REAL_CHECKPOINT`` (or the test cache) has it, else the
``smollm2-135m`` named config with random weights (the same shapes, so the same speed). Each stage is its own
process with its own time limit; a stage that would start past the budget is skipped and says so. Writes
``gpu-check.json`` and ``gpu-check.md`` (``--out``), the device named in both.

``--dry-run`` runs the same stages on CPU at tiny sizes (the ``llama-smoke`` config, a few steps, the
benchmark's smoke mode), in bf16-mixed as on the GPU: the code paths a GPU run takes, in seconds, for the tests.
Its two models are one config, so the 1B's stages are skipped there; its FSDP2 stage runs on two CPU processes
(gloo).

On a lent GPU machine without network the project's missing packages travel as wheels (docs/performance.md,
"GPU check"); then ``python3 -m bmc.bench.gpu_check`` is the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bmc.bench.workload import realistic_pairs, write_named_model
from bmc.models import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
REAL_CHECKPOINT = Path(
    os.environ.get("BMC_REAL_CHECKPOINT", Path.home() / ".cache" / "bmc-tests" / "SmolLM2-135M-Instruct")
)


@dataclass
class Stage:
    name: str
    what: str
    command: list[str]
    timeout_s: float
    #: why the stage cannot run here (it is then recorded as skipped), or None
    skip: str | None = None
    #: a JSON file the stage writes, read into the result
    result_file: Path | None = None
    result: dict[str, Any] = field(default_factory=dict)


def _train_command(folder: str, pairs: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    """``train.py`` on ``pairs`` with a pretrained-style checkpoint: no SFT, no generation, ``steps`` steps, then
    the validation pairs (val/loss, val/reward_accuracy in summary.json)."""
    return [
        sys.executable, str(ROOT / "train.py"), "task=hf_prefs", f"task.path={pairs}", "task.sizes.sft_val=1",
        "model=hf", f"model.path={folder}", "model.use_chat_template=false", "eval.enabled=false",
        "logger=csv", "callbacks=minimal", "batch_size=4", "trainer.accumulate_grad_batches=1",
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "trainer.enable_progress_bar=false",
        "export.enabled=false", f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={run_dir.parent / 'cache'}", *extra,
    ]  # fmt: skip


def plan(workdir: Path, dry_run: bool, real_checkpoint: Path = REAL_CHECKPOINT) -> list[Stage]:
    """The stages of the check, with the models and pairs they need written under ``workdir``."""
    # the dry run trains in bf16-mixed on CPU: autocast, the reference precompute under it, TRL's bf16 flag
    trainer = ["trainer.precision=bf16-mixed"] if dry_run else ["trainer=gpu"]
    steps = 3 if dry_run else 20
    real = (real_checkpoint / "config.json").exists()
    small = "llama-smoke" if dry_run else (str(real_checkpoint) if real else "smollm2-135m")
    large = "llama-smoke" if dry_run else "llama-1b"
    models = {"smollm2": small, "llama1b": large}
    written = {  # each named config once (the dry run uses one for both models)
        name: str(write_named_model(workdir / "models", name) if not Path(name).exists() else name)
        for name in set(models.values())
    }
    folders = {key: written[name] for key, name in models.items()}
    # the dry run's two models are one config: its second run of each stage would repeat the first
    repeat = {key: "the dry run's two models are one config (llama-smoke)" if dry_run and key == "llama1b" else None
              for key in folders}  # fmt: skip
    stages = []
    for key, folder in folders.items():
        pairs = workdir / f"pairs-{key}.jsonl"
        pairs.write_text("".join(json.dumps(p) + "\n" for p in realistic_pairs(4 * steps + 8, load_tokenizer(folder))))
        run_dir = workdir / "runs" / f"train-{key}"
        stages.append(
            Stage(
                f"train_bf16_{key}",
                f"train.py, bf16-mixed{' on CPU' if dry_run else ''}, {steps} steps of 4 pairs, {models[key]}",
                _train_command(folder, pairs, run_dir, steps, *trainer),
                timeout_s=120,
                skip=repeat[key],
                result_file=run_dir / "summary.json",
            )
        )
    for key, folder in folders.items():
        out = workdir / f"bench-{key}.json"
        bench = [sys.executable, "-m", "bmc.bench", "--model", folder, "--repeats", "1", "--out", str(out)]
        bench += ["--impls", "ours_dpo,trl"] + (
            ["--smoke", "--modes", "precomputed", "--precision", "bf16-mixed"] if dry_run else ["--device", "gpu"]
        )
        stages.append(
            Stage(f"bench_{key}", f"python -m bmc.bench against TRL, {models[key]}", bench, 180, repeat[key], out)
        )
    # the torch.compile lever: ours alone, its decoder layers compiled (aot_eager in the dry run: no C++ build)
    out = workdir / "bench-smollm2-compiled.json"
    backend = "aot_eager" if dry_run else "inductor"
    compiled = [sys.executable, "-m", "bmc.bench", "--model", folders["smollm2"], "--repeats", "1", "--out", str(out),
                "--impls", "ours_dpo", "--modes", "precomputed", "--no-rerun",
                "--train-args", f"compile.enabled=true compile.backend={backend}"]  # fmt: skip
    compiled += ["--smoke", "--precision", "bf16-mixed"] if dry_run else ["--device", "gpu"]
    stages.append(
        Stage(
            "bench_smollm2_compiled", f"ours with compile.enabled=true, {models['smollm2']}", compiled, 150, None, out
        )
    )
    # FSDP2 as a user runs it (trainer=fsdp2, bf16-mixed): over every GPU here, or on 2 CPU processes (gloo)
    fsdp_dir = workdir / "runs" / "fsdp2"
    accelerator, devices = ("cpu", 2) if dry_run else ("gpu", max(1, torch.cuda.device_count()))
    fsdp2 = ["trainer=fsdp2", f"trainer.accelerator={accelerator}", f"trainer.devices={devices}",
             "trainer.precision=bf16-mixed", "batch_size=2"]  # fmt: skip
    stages.append(
        Stage(
            "fsdp2",
            f"train.py {' '.join(fsdp2)}, {models['smollm2']}",
            _train_command(folders["smollm2"], workdir / "pairs-smollm2.jsonl", fsdp_dir, steps, *fsdp2),
            timeout_s=150,
            result_file=fsdp_dir / "summary.json",
        )
    )
    paper_dir = workdir / "runs" / "real-paper"
    stages.append(
        Stage(
            "real_paper_dpo_math",
            "one job of experiment=real_paper (DPO, math_chat, seed 0): sampling, training, evaluation",
            [
                sys.executable,
                str(ROOT / "train.py"),
                "experiment=real_paper",
                "hydra.mode=RUN",
                "method=dpo",
                "task=math_chat",
                "seed=0",
                f"model.path={real_checkpoint}",
                "trainer=gpu",
                f"hydra.run.dir={paper_dir}",
                f"paths.cache_dir={workdir / 'cache'}",
            ],  # fmt: skip
            timeout_s=240,
            skip=None if real and not dry_run else "needs the real checkpoint and a GPU",
            result_file=paper_dir / "summary.json",
        )
    )
    return stages


def _summary(stage: Stage) -> dict[str, Any]:
    """The few numbers of a stage's result file worth a table cell."""
    result = stage.result
    if stage.name.startswith("bench_"):
        cells = next(iter(result["results"].values()))
        return {
            f"{mode} {impl}": f"{row['tokens_per_s']:.0f} tok/s, MFU {row['mfu']:.1%}"
            for mode, cell in cells.items()
            if mode in ("in_step", "precomputed")
            for impl, row in cell["implementations"].items()
        }
    metrics = result.get("metrics", {})
    kept = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/") and ("loss" in k or "accuracy" in k)}
    return {**kept, "train/steps": metrics.get("train/steps"), "wall_time_s": result.get("wall_time_s")}


def run_stages(stages: list[Stage], budget_s: float, env: dict[str, str]) -> list[dict[str, Any]]:
    """Run each stage in order within ``budget_s`` seconds in all; a stage that could outrun the budget is
    skipped."""
    started = time.perf_counter()
    records = []
    for stage in stages:
        left = budget_s - (time.perf_counter() - started)
        record: dict[str, Any] = {"name": stage.name, "what": stage.what, "command": " ".join(stage.command)}
        if stage.skip or left < 30:
            records.append({**record, "status": "skipped", "reason": stage.skip or f"{left:.0f} s of budget left"})
            print(f"[gpu-check] {stage.name}: skipped ({records[-1]['reason']})", flush=True)
            continue
        print(f"[gpu-check] {stage.name}: {stage.what}", flush=True)
        began = time.perf_counter()
        try:
            proc = subprocess.run(
                stage.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=min(stage.timeout_s, left)
            )
            status, tail = ("passed" if proc.returncode == 0 else "failed"), (proc.stdout + proc.stderr)[-2000:]
        except subprocess.TimeoutExpired:
            status, tail = "timed out", ""
        record.update(status=status, seconds=round(time.perf_counter() - began, 1))
        if status == "passed" and stage.result_file is not None and stage.result_file.exists():
            stage.result = json.loads(stage.result_file.read_text())
            record["summary"] = _summary(stage)
        elif status != "passed":
            record["output_tail"] = tail
        records.append(record)
        print(f"[gpu-check] {stage.name}: {status} in {record['seconds']} s", flush=True)
    return records


def _device(dry_run: bool) -> str:
    if torch.cuda.is_available() and not dry_run:
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"cpu (dry run, torch {torch.__version__})"


def format_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {report['device']}",
        "",
        f"{report['date']}, {report['total_seconds']:.0f} s of a {report['budget_s']:.0f} s budget"
        f"{' (dry run on CPU)' if report['dry_run'] else ''}.",
        "",
        "| stage | status | seconds | result |",
        "|---|---|---:|---|",
    ]
    for record in report["stages"]:
        result = record.get("reason") or "; ".join(f"{k}: {v}" for k, v in record.get("summary", {}).items())
        seconds = record.get("seconds", "")
        lines.append(f"| {record['name']} | {record['status']} | {seconds} | {result} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bmc.bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same stages on CPU at tiny sizes")
    parser.add_argument("--out", default="gpu-check.json", help="the JSON report; the markdown goes beside it")
    parser.add_argument("--workdir", default="gpu-check-work")
    parser.add_argument("--budget-s", type=float, default=480.0)
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device is visible; --dry-run runs the same stages on CPU")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    stages = plan(workdir, args.dry_run)
    records = run_stages(stages, args.budget_s - (time.perf_counter() - started), env)
    report = {
        "device": _device(args.dry_run),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "stages": records,
        "total_seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(format_markdown(report))
    print(format_markdown(report))
    return report


if __name__ == "__main__":
    main()
