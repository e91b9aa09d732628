"""``python -m bmc.bench``: pairs/s, tokens/s, peak memory and model FLOPs utilisation of this framework
(``train.py``, DPO and BMC), TRL's ``DPOTrainer`` and a bare PyTorch loop, with the reference in the step and
precomputed.

    python -m bmc.bench                      # toy sizes, CPU float32, 3 interleaved repeats (~10-15 min)
    python -m bmc.bench --smoke              # seconds-sized check that the report is well formed
    python -m bmc.bench --device gpu         # bf16 on the first GPU (trainer=gpu)
    python -m bmc.bench --model ~/ckpts/SmolLM2-135M-Instruct --threads 2   # a real checkpoint, real lengths
    python -m bmc.bench --model llama-1b --device gpu   # a named config (random weights, real shapes)

Writes ``bench.json`` (``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bmc.bench.flops import Shapes, matmul_peak, step_flops_per_pair
from bmc.bench.results import MODES, OTHERS, OURS, format_table, summarise, targets
from bmc.bench.runners import VAL_FRACTION, train_pairs
from bmc.bench.workload import (
    MAX_ROW_TOKENS,
    NAMED_CONFIGS,
    SIZES,
    make_pairs,
    realistic_pairs,
    write_named_model,
    write_workload,
)
from bmc.data.tokenize import encode_prompts, encode_responses
from bmc.models import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
#: the pipeline's default learning rate and DPO beta, given to every implementation
LR, BETA = 2e-5, 0.1
#: the implementations run by default: on toy sizes the bare loop is the floor; at real sizes TRL runs twice,
#: in its fastest settings and with its default gradient checkpointing
DEFAULT_IMPLS = {
    "toy": ("ours_dpo", "ours_bmc", "trl", "bare"),
    "real": ("ours_dpo", "ours_bmc", "trl", "trl_defaults"),
}
#: TRL's and model=hf's sequence limit, given to every implementation
MAX_LENGTH = MAX_ROW_TOKENS


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bmc.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps, one repeat")
    parser.add_argument("--sizes", default="small,medium", help=f"comma-separated, of {sorted(SIZES)}")
    parser.add_argument(
        "--model",
        default=None,
        help=f"a checkpoint folder, hub id or named config ({', '.join(NAMED_CONFIGS)}) with UltraFeedback-like "
        "lengths, instead of --sizes",
    )
    parser.add_argument(
        "--length-scale", type=float, default=1.0, help="--model: every pair length times this (2.1: ~1024-token rows)"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per measurement (default: calibrated)")
    parser.add_argument(
        "--batch-tokens", type=int, default=None, help="size the batch in tokens: pairs = tokens / tokens per pair"
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="minimum timed seconds per measurement")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every implementation")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each measurement")
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--workdir", default=None, help="checkpoints, pairs, caches (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-rerun", action="store_true", help="skip the train.py wall-time runs (fresh and cached reference)"
    )
    parser.add_argument(
        "--train-args", default="", help="extra train.py overrides for ours, e.g. 'length_grouping=false'"
    )
    parser.add_argument(
        "--impls", default=None, help=f"comma-separated subset of {','.join([*OURS, *OTHERS])} (default: by workload)"
    )
    args = parser.parse_args(argv)
    if args.model is not None and args.batch_tokens is None:
        args.batch_tokens = 16384 if args.device == "gpu" else 4096
    if args.model is not None and args.steps is None:
        args.steps = args.warmup + 3  # a real-size step takes seconds to minutes: no calibration probe
    if args.smoke:
        args.repeats, args.seconds = 1, 0.0
        if args.model is None:
            args.sizes = "smoke"
    return args


def _model_label(model: str) -> str:
    return model if model in NAMED_CONFIGS else Path(model).name or model


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads),
            "TOKENIZERS_PARALLELISM": "false",
            "WANDB_MODE": "disabled",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        kind = "toy" if args.model is None else "real"
        wanted = args.impls.split(",") if args.impls else DEFAULT_IMPLS[kind]
        has_trl = importlib.util.find_spec("trl") is not None
        self.impls = [i for i in [*OURS, *OTHERS] if i in wanted and (has_trl or not i.startswith("trl"))]
        #: per size: the checkpoint folder (or hub id), pairs per step
        self.checkpoints: dict[str, str] = {}
        self.batch_size: dict[str, int] = {}

    def make_pairs(self, size: str, n: int) -> list[dict[str, str]]:
        if self.args.model is None:
            return make_pairs(n, self.args.seed)
        return realistic_pairs(n, load_tokenizer(self.checkpoints[size]), self.args.seed, self.args.length_scale)

    def _run(self, command: list[str], out: Path) -> dict[str, Any]:
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=self.workdir, env=self.env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"benchmark job failed ({' '.join(command[:4])} ...):\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        return {**json.loads(out.read_text()), "wall_s": wall}

    def measure(
        self, impl: str, mode: str, size: str, steps: int, pairs: Path, tag: str, cache: str = "shared"
    ) -> dict[str, Any]:
        out = self.workdir / "results" / f"{tag}.json"
        cache_dir = self.workdir / "cache" / f"{size}-{cache}"
        checkpoint, batch_size = self.checkpoints[size], self.batch_size[size]
        if impl in OURS:
            command = [
                sys.executable, str(ROOT / "train.py"),
                "task=hf_prefs", f"task.path={pairs}", "task.sizes.sft_val=1",
                "model=hf", f"model.path={checkpoint}", "model.use_chat_template=false",
                "sft.enabled=false", "eval.enabled=false", "export.enabled=false", "logger=none", "callbacks=minimal",
                "+callbacks.clock._target_=bmc.bench.lightning_clock.LightningStepClock",
                f"+callbacks.clock.path={out}", f"+callbacks.clock.warmup={self.args.warmup}",
                f"loss={OURS[impl]}", f"reference.precompute={mode == 'precomputed'}",
                f"batch_size={batch_size}", "trainer.accumulate_grad_batches=1", f"optim.lr={LR}",
                f"data.val_fraction={VAL_FRACTION}", f"truncation.max_length={MAX_LENGTH}",
                f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "+trainer.limit_val_batches=0",
                "trainer.enable_progress_bar=false", f"torch_threads={self.args.threads}", f"seed={self.args.seed}",
                f"paths.cache_dir={cache_dir}", f"hydra.run.dir={self.workdir / 'runs' / tag}",
            ]  # fmt: skip
            if OURS[impl] == "dpo":
                command.append(f"loss.beta={BETA}")
            if self.args.device == "gpu":
                command.append("trainer=gpu")
            command += self.args.train_args.split()
        else:
            spec = {
                "impl": impl, "mode": mode, "checkpoint": checkpoint, "pairs": str(pairs), "steps": steps,
                "batch_size": batch_size, "max_length": MAX_LENGTH, "lr": LR, "beta": BETA, "device": self.args.device,
                "seed": self.args.seed, "threads": self.args.threads, "warmup": self.args.warmup, "out": str(out),
            }  # fmt: skip
            command = [sys.executable, "-m", "bmc.bench.runners", json.dumps(spec)]
        result = self._run(command, out)
        return {**result, "pairs_per_s": result["timed_steps"] * batch_size / result["seconds"]}

    def rerun(self, size: str, steps: int, pairs: Path) -> dict[str, float]:
        """Wall time of ``train.py`` (DPO, precomputed reference) in a fresh cache, then of the same config again,
        when the reference log-probs are cached."""
        return {
            name: self.measure("ours_dpo", "precomputed", size, steps, pairs, f"{size}-{name}", "rerun")["wall_s"]
            for name in ("reference_cache_miss", "reference_cache_hit")
        }

    def pairs_file(self, size: str, steps: int) -> Path:
        """Enough pairs for ``steps`` full batches of the train split, the same file for every implementation."""
        batch_size = self.batch_size[size]
        n = math.ceil((steps * batch_size + 1) / (1 - VAL_FRACTION)) + batch_size
        path = self.workdir / f"pairs-{size}-{n}.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in self.make_pairs(size, n)))
        assert len(train_pairs(str(path))) >= steps * batch_size
        return path

    def calibrate(self, size: str) -> int:
        """Steps for at least ``--seconds`` of timing in the fastest implementation (the bare loop with
        precomputed reference log-probs)."""
        minimum = self.args.warmup + 2
        if self.args.steps is not None:
            return max(self.args.steps, self.args.warmup + 1)
        if self.args.seconds <= 0:
            return minimum
        probe = self.measure(
            "bare", "precomputed", size, minimum + 4, self.pairs_file(size, minimum + 4), f"calibrate-{size}"
        )
        return max(
            minimum, self.args.warmup + math.ceil(self.args.seconds * probe["pairs_per_s"] / self.batch_size[size])
        )


def pair_lengths(checkpoint: str, pairs: Path) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) tokens of each training pair as train.py encodes them (BOS, terminator)."""
    tokenizer = load_tokenizer(checkpoint)
    rows = train_pairs(str(pairs))
    prompts = encode_prompts(tokenizer, [r["prompt"] for r in rows])
    chosen, rejected = (encode_responses(tokenizer, [r[key] for r in rows]) for key in ("chosen", "rejected"))
    return [(len(p), len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected)]


def tokens_per_pair(lengths: list[tuple[int, int, int]]) -> float:
    """Non-padding tokens of one pair as two padded rows see it: the prompt twice, both responses."""
    return sum(2 * p + c + r for p, c, r in lengths) / len(lengths)


def _machine(args: argparse.Namespace) -> dict[str, Any]:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cpu" if args.device == "cpu" else torch.cuda.get_device_name(0),
        "precision": "float32" if args.device == "cpu" else "bf16-mixed",
        "threads": args.threads,
    }
    for package in ("transformers", "pytorch_lightning", "trl"):
        if importlib.util.find_spec(package):
            info[package] = __import__(package).__version__
    return info


def _prepare_models(args: argparse.Namespace, workdir: Path, bench: Bench) -> dict[str, int]:
    """Write or resolve each size's checkpoint into ``bench.checkpoints``; return the parameter counts."""
    if args.model is None:
        info = write_workload(workdir, 2000, args.sizes.split(","), args.seed)
        bench.checkpoints = {s: c["path"] for s, c in info["checkpoints"].items()}
        return {s: c["parameters"] for s, c in info["checkpoints"].items()}
    label = _model_label(args.model)
    path = write_named_model(workdir, args.model, args.seed) if args.model in NAMED_CONFIGS else args.model
    bench.checkpoints = {label: str(path)}
    with torch.device("meta"):  # counts the parameters without allocating them
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(path)))
    return {label: sum(p.numel() for p in model.parameters())}


def _batch_size(args: argparse.Namespace, bench: Bench, size: str) -> int:
    """``--batch-size`` pairs, or as many pairs as ``--batch-tokens`` holds at this workload's mean pair."""
    if args.batch_tokens is None:
        return args.batch_size
    probe = bench.workdir / f"probe-{size}.jsonl"
    probe.write_text("".join(json.dumps(p) + "\n" for p in bench.make_pairs(size, 64)))
    return max(1, round(args.batch_tokens / tokens_per_pair(pair_lengths(bench.checkpoints[size], probe))))


def _peak(args: argparse.Namespace, shapes: Shapes, tokens: int) -> dict[str, float]:
    """The dense-matmul peak of this device, dtype and thread count at the model's shapes."""
    torch.set_num_threads(args.threads)
    if args.device == "gpu":
        return matmul_peak(shapes, tokens, "cuda", torch.bfloat16)
    return matmul_peak(shapes, tokens)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    modes = args.modes.split(",")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bmc-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        bench = Bench(args, workdir)
        parameters = _prepare_models(args, workdir, bench)
        sizes = list(parameters)
        plan = {}
        for size in sizes:
            bench.batch_size[size] = _batch_size(args, bench, size)
            steps = bench.calibrate(size)
            pairs = bench.pairs_file(size, steps)
            lengths = pair_lengths(bench.checkpoints[size], pairs)
            shapes = Shapes.from_config(AutoConfig.from_pretrained(bench.checkpoints[size]))
            mean_unique = sum(sum(pair) for pair in lengths) / len(lengths)
            plan[size] = {
                "steps": steps,
                "pairs": pairs,
                "batch_size": bench.batch_size[size],
                "tokens_per_pair": tokens_per_pair(lengths),
                "mean_lengths": [sum(pair[i] for pair in lengths) / len(lengths) for i in range(3)],
                "flops_per_pair": {mode: step_flops_per_pair(shapes, lengths, mode == "in_step") for mode in modes},
                "matmul_flops_per_s": _peak(args, shapes, max(64, round(bench.batch_size[size] * mean_unique))),
            }
            if "ours_dpo" in bench.impls and "precomputed" in modes and not args.no_rerun:
                plan[size]["train_py_wall_s"] = bench.rerun(size, steps, pairs)
            print(
                f"[bench] {size}: {steps} steps of {bench.batch_size[size]} pairs per measurement, matmul peak "
                f"{plan[size]['matmul_flops_per_s']['peak'] / 1e9:.0f} GFLOP/s",
                flush=True,
            )
        runs = []
        for repeat in range(args.repeats):
            for size in sizes:
                jobs = [(impl, mode) for mode in modes for impl in bench.impls]
                random.Random(args.seed * 1000 + repeat).shuffle(jobs)
                for impl, mode in jobs:
                    tag = f"{size}-{mode}-{impl}-r{repeat}"
                    result = bench.measure(impl, mode, size, plan[size]["steps"], plan[size]["pairs"], tag)
                    runs.append(
                        {
                            **result,
                            "size": size,
                            "mode": mode,
                            "impl": impl,
                            "repeat": repeat,
                            "tokens_per_pair": plan[size]["tokens_per_pair"],
                            "mfu": result["pairs_per_s"]
                            * plan[size]["flops_per_pair"][mode]
                            / plan[size]["matmul_flops_per_s"]["peak"],
                        }
                    )
                    print(
                        f"[bench] {tag}: {result['pairs_per_s']:.2f} pairs/s, MFU {runs[-1]['mfu']:.1%}, "
                        f"{result['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results = summarise(runs, sizes, modes, bench.impls)
    for size in sizes:
        if "train_py_wall_s" in plan[size]:
            results[size]["train_py_wall_s"] = plan[size]["train_py_wall_s"]
    kinds = {size: "toy" if args.model is None else "real" for size in sizes}
    report = {
        "command": "python -m bmc.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**_machine(args), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": {
            "repeats": args.repeats,
            "warmup_steps": args.warmup,
            "lr": LR,
            "beta": BETA,
            "max_length": MAX_LENGTH,
            "min_seconds": args.seconds,
            "implementations": bench.impls,
        },
        "sizes": {
            s: {
                "kind": kinds[s],
                "checkpoint": bench.checkpoints[s] if args.model else None,
                "parameters": parameters[s],
                **{k: v for k, v in plan[s].items() if k not in ("pairs", "train_py_wall_s")},
            }
            for s in sizes
        },
        "results": results,
        "targets": targets(results, kinds),
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(format_table(report))
    print(f"\n[bench] wrote {args.out} in {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
