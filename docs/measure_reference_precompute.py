"""The reference precompute's layouts on a real checkpoint: seconds, forwards and padded positions of each, and
the largest difference of its log-probs from the plain layout's. The measurement behind docs/performance.md's
reference-precompute lever.

    python docs/measure_reference_precompute.py <checkpoint folder> [--pairs 32] [--threads 2]

The pairs are the benchmark's (``bmc.bench.workload.realistic_pairs``: UltraFeedback-like lengths in the
checkpoint's tokens), truncated as ``model=hf`` does (1024 / 512); the LM head in chunks of 1024 positions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bmc

from bmc.bench.workload import realistic_pairs  # noqa: E402
from bmc.data.datamodule import PreferenceDataModule  # noqa: E402
from bmc.data.tokenize import Truncation  # noqa: E402
from bmc.reference import compute_reference_logps, length_batches  # noqa: E402

#: (name, share_prompt, batch_tokens); batch_size 64 pairs throughout (the default), the first row the layout
#: before 2026-12-01
VARIANTS = [
    ("two rows per pair, one batch", False, None),
    ("two rows per pair, 8192 positions", False, 8192),
    ("shared prompt, one batch", True, None),
    ("shared prompt, 4096 positions", True, 4096),
    ("shared prompt, 8192 positions", True, 8192),
    ("shared prompt, 16384 positions", True, 16384),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    pairs = realistic_pairs(args.pairs + 1, tokenizer)
    datamodule = PreferenceDataModule(
        train=pairs[:-1], val=pairs[-1:], tokenizer=tokenizer,
        truncation=Truncation(1024, 512), batch_size=4,
    )  # fmt: skip
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]  # the last pair is a validation split, which setup needs
    rows = dataset.rows()
    lengths = [(len(r["prompt_ids"]), len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows]
    results, baseline = [], None
    for name, share, tokens in VARIANTS:
        widths = [p + c + r for p, c, r in lengths] if share else [p + max(c, r) for p, c, r in lengths]
        batches = length_batches(widths, 1 if share else 2, 64, tokens)
        padded = sum((1 if share else 2) * len(b) * max(widths[i] for i in b) for b in batches)
        began = time.perf_counter()
        values = compute_reference_logps(
            model, dataset, datamodule.collate, 64, torch.device("cpu"), chunk_positions=1024,
            share_prompt=share, batch_tokens=tokens,
        )  # fmt: skip
        seconds = time.perf_counter() - began
        flat = torch.cat([torch.cat(v) for v in values.values()])
        baseline = flat if baseline is None else baseline
        row = {
            "variant": name, "share_prompt": share, "batch_tokens": tokens, "seconds": round(seconds, 1),
            "forwards": len(batches), "padded_positions": padded,
            "max_abs_diff_vs_first": float((flat - baseline).abs().max()),
        }  # fmt: skip
        results.append(row)
        print(json.dumps(row), flush=True)
    real = sum(p + c + r for p, c, r in lengths)
    report = {"pairs": len(rows), "positions_of_the_pairs": real, "threads": args.threads, "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("| layout | forwards | padded positions | seconds | max abs diff |\n|---|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['variant']} | {row['forwards']} | {row['padded_positions']} | {row['seconds']} | "
              f"{row['max_abs_diff_vs_first']:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
