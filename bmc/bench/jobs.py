"""The benchmark's jobs: each implementation's training run as its own process (``train.py`` for ours,
:mod:`bmc.bench.runners` for TRL and the bare loop), on pairs written once per size, with the step count
calibrated to the fastest; and the pair lengths the throughput and FLOPs are counted from."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bmc.bench.results import OTHERS, OURS
from bmc.bench.runners import LIGHTNING_PRECISION, VAL_FRACTION, train_pairs
from bmc.bench.workload import MAX_ROW_TOKENS, NAMED_CONFIGS, make_pairs, realistic_pairs
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


def model_label(model: str) -> str:
    return model if model in NAMED_CONFIGS else Path(model).name or model


class Bench:
    """One benchmark's jobs: the command-line ``args``, the ``workdir`` (checkpoints, pairs, caches, results),
    the environment every job runs in (the thread count pinned), the implementations to run, and per size the
    checkpoint and pairs per step."""

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
            command.append(f"trainer.precision={LIGHTNING_PRECISION[self.args.precision]}")
            command += self.args.train_args.split()
        else:
            spec = {
                "impl": impl, "mode": mode, "checkpoint": checkpoint, "pairs": str(pairs), "steps": steps,
                "batch_size": batch_size, "max_length": MAX_LENGTH, "lr": LR, "beta": BETA, "device": self.args.device,
                "precision": self.args.precision,
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
