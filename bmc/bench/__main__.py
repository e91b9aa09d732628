"""``python -m bmc.bench``: pairs/s, tokens/s and peak memory of this framework (``train.py``, DPO and BMC),
TRL's ``DPOTrainer`` and a bare PyTorch loop, with the reference in the step and precomputed.

    python -m bmc.bench                      # both sizes, CPU float32, 3 interleaved repeats (~10-15 min)
    python -m bmc.bench --smoke              # seconds-sized check that the report is well formed
    python -m bmc.bench --device gpu         # bf16 on the first GPU (trainer=gpu)

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

from bmc.bench.results import MODES, OTHERS, OURS, format_table, summarise, targets
from bmc.bench.runners import VAL_FRACTION, train_pairs
from bmc.bench.workload import SIZES, make_pairs, write_workload

ROOT = Path(__file__).resolve().parents[2]
#: the pipeline's default learning rate and DPO beta, given to every implementation
LR, BETA = 2e-5, 0.1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bmc.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps, one repeat")
    parser.add_argument("--sizes", default="small,medium", help=f"comma-separated, of {sorted(SIZES)}")
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
        "--train-args", default="", help="extra train.py overrides for ours, e.g. 'length_grouping=false'"
    )
    parser.add_argument("--impls", default=None, help="comma-separated subset of ours_dpo,ours_bmc,trl,bare")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.seconds = "smoke", 1, 0.0
    return args


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
        available = [*OURS, *(name for name in OTHERS if name != "trl" or importlib.util.find_spec("trl"))]
        self.impls = [i for i in available if args.impls is None or i in args.impls.split(",")]

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
        checkpoint = self.workdir / size
        if impl in OURS:
            command = [
                sys.executable, str(ROOT / "train.py"),
                "task=hf_prefs", f"task.path={pairs}", "task.sizes.sft_val=1",
                "model=hf", f"model.path={checkpoint}", "model.use_chat_template=false",
                "sft.enabled=false", "eval.enabled=false", "logger=none", "callbacks=minimal",
                "+callbacks.clock._target_=bmc.bench.lightning_clock.LightningStepClock",
                f"+callbacks.clock.path={out}", f"+callbacks.clock.warmup={self.args.warmup}",
                f"loss={OURS[impl]}", f"reference.precompute={mode == 'precomputed'}",
                f"batch_size={self.args.batch_size}", f"optim.lr={LR}", f"data.val_fraction={VAL_FRACTION}",
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
                "impl": impl, "mode": mode, "checkpoint": str(checkpoint), "pairs": str(pairs), "steps": steps,
                "batch_size": self.args.batch_size, "lr": LR, "beta": BETA, "device": self.args.device,
                "seed": self.args.seed, "threads": self.args.threads, "warmup": self.args.warmup, "out": str(out),
            }  # fmt: skip
            command = [sys.executable, "-m", "bmc.bench.runners", json.dumps(spec)]
        result = self._run(command, out)
        return {**result, "pairs_per_s": result["timed_steps"] * self.args.batch_size / result["seconds"]}

    def rerun(self, size: str, steps: int, pairs: Path) -> dict[str, float]:
        """Wall time of ``train.py`` (DPO, precomputed reference) in a fresh cache, then of the same config again,
        when the reference log-probs are cached."""
        return {
            name: self.measure("ours_dpo", "precomputed", size, steps, pairs, f"{size}-{name}", "rerun")["wall_s"]
            for name in ("reference_cache_miss", "reference_cache_hit")
        }

    def pairs_file(self, size: str, steps: int) -> Path:
        """Enough pairs for ``steps`` full batches of the train split, the same file for every implementation."""
        n = math.ceil((steps * self.args.batch_size + 1) / (1 - VAL_FRACTION)) + self.args.batch_size
        path = self.workdir / f"pairs-{size}-{n}.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(n, self.args.seed)))
        assert len(train_pairs(str(path))) >= steps * self.args.batch_size
        return path

    def calibrate(self, size: str) -> int:
        """Steps for at least ``--seconds`` of timing in the fastest implementation (the bare loop with
        precomputed reference log-probs)."""
        minimum = self.args.warmup + 2
        if self.args.seconds <= 0:
            return minimum
        probe = self.measure(
            "bare", "precomputed", size, minimum + 4, self.pairs_file(size, minimum + 4), f"calibrate-{size}"
        )
        return max(
            minimum, self.args.warmup + math.ceil(self.args.seconds * probe["pairs_per_s"] / self.args.batch_size)
        )


def _tokens_per_pair(checkpoint: Path, pairs: Path) -> float:
    """Non-padding tokens of one pair as the forward sees it: the prompt twice, both responses with EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    rows = train_pairs(str(pairs))
    count = 0
    for key, times in (("prompt", 2), ("chosen", 1), ("rejected", 1)):
        count += times * sum(
            len(ids) for ids in tokenizer([r[key] for r in rows], add_special_tokens=False)["input_ids"]
        )
    return count / len(rows) + 2  # EOS of each response


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    sizes, modes = args.sizes.split(","), args.modes.split(",")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bmc-bench-"))
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        info = write_workload(workdir, 2000, sizes, args.seed)
        bench = Bench(args, workdir)
        plan = {}
        for size in sizes:
            steps = bench.calibrate(size)
            pairs = bench.pairs_file(size, steps)
            plan[size] = {"steps": steps, "pairs": pairs, "tokens_per_pair": _tokens_per_pair(workdir / size, pairs)}
            if "ours_dpo" in bench.impls and "precomputed" in modes:
                plan[size]["train_py_wall_s"] = bench.rerun(size, steps, pairs)
            print(f"[bench] {size}: {steps} steps of {args.batch_size} pairs per measurement", flush=True)
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
                        }
                    )
                    print(
                        f"[bench] {tag}: {result['pairs_per_s']:.1f} pairs/s, {result['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results = summarise(runs, sizes, modes, bench.impls)
    for size in sizes:
        if "train_py_wall_s" in plan[size]:
            results[size]["train_py_wall_s"] = plan[size]["train_py_wall_s"]
    report = {
        "command": "python -m bmc.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**_machine(args), "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "settings": {
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "warmup_steps": args.warmup,
            "lr": LR,
            "beta": BETA,
            "min_seconds": args.seconds,
            "implementations": bench.impls,
        },
        "sizes": {
            s: {
                "parameters": info["checkpoints"][s]["parameters"],
                "steps": plan[s]["steps"],
                "tokens_per_pair": plan[s]["tokens_per_pair"],
            }
            for s in sizes
        },
        "results": results,
        "targets": targets(results),
        "runs": runs,
        "total_seconds": time.perf_counter() - started,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(format_table(report))
    print(f"\n[bench] wrote {args.out} in {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
