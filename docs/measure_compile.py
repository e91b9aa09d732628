"""Eager against regionally compiled decoder layers (``bmc.models.compile_decoder_layers``: inductor, dynamic
shapes) on a real checkpoint: forward + backward of the shared-prompt log-probs with the chunked LM head, as the
training step runs them, without the loss, the optimizer or Lightning. Both models in one process, on the same
batches, interleaved; the measurement behind docs/performance.md's torch.compile lever.

    python docs/measure_compile.py <checkpoint folder> [--rounds 2] [--threads 2] [--out F]

The pairs are the benchmark's (``bmc.bench.workload.realistic_datamodule``), 3 batches of 4 pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bmc

from bmc.bench.workload import realistic_datamodule  # noqa: E402
from bmc.logprobs import shared_prompt_token_logps  # noqa: E402
from bmc.models import compile_decoder_layers  # noqa: E402


def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    started = time.perf_counter()
    logps, mask = shared_prompt_token_logps(model, batch, 1024)
    (logps * mask).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    datamodule = realistic_datamodule(12, AutoTokenizer.from_pretrained(args.checkpoint))
    rows = datamodule.datasets["train"].rows()
    batches = [datamodule.collate(rows[i : i + 4]) for i in range(0, len(rows), 4)]
    models = {name: AutoModelForCausalLM.from_pretrained(args.checkpoint).train() for name in ("eager", "compiled")}
    compile_decoder_layers(models["compiled"])
    first = {name: step(model, batches[0]) for name, model in models.items()}  # compiles, from inductor's cache if warm
    times: dict[str, list[list[float]]] = {name: [[] for _ in batches] for name in models}
    for round_ in range(args.rounds):
        for i, batch in enumerate(batches):
            order = list(models) if (round_ + i) % 2 == 0 else list(reversed(models))
            for name in order:
                times[name][i].append(step(models[name], batch))
                print(name, round_, i, tuple(batch["input_ids"].shape), round(times[name][i][-1], 1), flush=True)
    report = {
        "first_step_s": first,
        "step_s": times,
        "sum_of_median_steps_s": {name: sum(statistics.median(t) for t in steps) for name, steps in times.items()},
    }
    print(json.dumps(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
