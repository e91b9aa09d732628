"""How far shared-prompt scoring departs from plain rows on a real checkpoint, for a model that honours the
packing and for models that ignore part of it, in float32, under bf16 autocast and with bf16 weights: the
measurement behind the first-batch check (now ``bmc.scoring_check.verify_scoring``).

    python docs/measure_shared_prompt_check.py <checkpoint folder> [--batches 4] [--threads 2] [--out F]

The pairs are the benchmark's (``bmc.bench.workload.realistic_datamodule``), truncated as ``model=hf`` does
(1024 / 512), in batches of 4 pairs in order. For each batch and precision, the gap of every response token is
``|plain - shared|`` of its log-prob; the table gives the largest and the mean gap over each batch's response
tokens (the worst batch of each), and what the check decides.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bmc

from bmc.bench.workload import realistic_datamodule  # noqa: E402
from bmc.logprobs import response_token_logps, shared_prompt_token_logps  # noqa: E402
from tests.doubles.ignores_packing import IgnoresPacking  # noqa: E402

MODELS = {
    "honours the packing": None,
    "ignores position ids": (True, False),
    "ignores the 4D mask": (False, True),
    "ignores both": (True, True),
}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    datamodule = realistic_datamodule(4 * args.batches, tokenizer)
    rows = datamodule.datasets["train"].rows()
    batches = [datamodule.collate(rows[i : i + 4]) for i in range(0, len(rows), 4)]
    results = []
    for precision in ("float32", "bf16 autocast", "bf16 weights"):
        dtype = torch.bfloat16 if precision == "bf16 weights" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=dtype).eval()
        autocast = torch.autocast("cpu", torch.bfloat16) if precision == "bf16 autocast" else contextlib.nullcontext()
        gaps: dict[str, list[dict[str, float]]] = {name: [] for name in MODELS}
        for batch in batches:
            with autocast:
                plain, mask = response_token_logps(model, batch)
                for name, ignores in MODELS.items():
                    scorer = model if ignores is None else IgnoresPacking(model, *ignores)
                    shared, _ = shared_prompt_token_logps(scorer, batch)
                    gap = (plain - shared)[mask].abs()
                    gaps[name].append({"max": float(gap.max()), "mean": float(gap.mean())})
        for name, per_batch in gaps.items():
            row = {
                "precision": precision, "model": name,
                "max_gap": max(g["max"] for g in per_batch), "mean_gap": max(g["mean"] for g in per_batch),
                "smallest_mean_gap": min(g["mean"] for g in per_batch),
                "batches": per_batch,
            }  # fmt: skip
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "batches"}), flush=True)
    if args.out:
        report = {"checkpoint": str(args.checkpoint), "batches": len(batches), "threads": args.threads}
        args.out.write_text(json.dumps({**report, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
