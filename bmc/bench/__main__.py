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
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bmc.bench.flops import Shapes, matmul_peak, step_flops_per_pair
from bmc.bench.jobs import BETA, LR, MAX_LENGTH, Bench, model_label, pair_lengths, tokens_per_pair
from bmc.bench.results import MODES, OTHERS, OURS, format_table, summarise, targets
from bmc.bench.runners import PRECISIONS
from bmc.bench.workload import NAMED_CONFIGS, SIZES, write_named_model, write_workload


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
    parser.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=None,
        help="of every implementation (default: float32 on CPU, bf16-mixed on GPU)",
    )
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
    if args.precision is None:
        args.precision = "bf16-mixed" if args.device == "gpu" else "float32"
    if args.model is not None and args.batch_tokens is None:
        args.batch_tokens = 16384 if args.device == "gpu" else 4096
    if args.model is not None and args.steps is None:
        args.steps = args.warmup + 3  # a real-size step takes seconds to minutes: no calibration probe
    if args.smoke:
        args.repeats, args.seconds = 1, 0.0
        if args.model is None:
            args.sizes = "smoke"
    return args


def _machine(args: argparse.Namespace) -> dict[str, Any]:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cpu" if args.device == "cpu" else torch.cuda.get_device_name(0),
        "precision": args.precision,
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
    label = model_label(args.model)
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
    return matmul_peak(shapes, tokens, "cuda" if args.device == "gpu" else "cpu", PRECISIONS[args.precision])


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
