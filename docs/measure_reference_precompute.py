"""The reference precompute's layouts on a real checkpoint: seconds, forwards and padded positions of each, and
the largest difference of its log-probs from the plain layout's. The measurement behind docs/performance.md's
reference-precompute lever.

    python docs/measure_reference_precompute.py <checkpoint folder> [--pairs 32] [--threads 2] [--only 4096]

The pairs are the benchmark's (``bmc.bench.workload.realistic_datamodule``: UltraFeedback-like lengths in the
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

from bmc.bench.workload import realistic_datamodule  # noqa: E402
from bmc.precision import resolve_precision  # noqa: E402
from bmc.reference import compute_reference_logps, length_batches  # noqa: E402

#: (name, share_prompt, batch_tokens, Lightning precision); batch_size 64 pairs throughout (the default), the
#: first row the layout before 2026-12-01
VARIANTS = [
    ("two rows per pair, one batch", False, None, "32-true"),
    ("two rows per pair, 8192 positions", False, 8192, "32-true"),
    ("shared prompt, one batch", True, None, "32-true"),
    ("shared prompt, 4096 positions", True, 4096, "32-true"),
    ("shared prompt, 8192 positions", True, 8192, "32-true"),
    ("shared prompt, 16384 positions", True, 16384, "32-true"),
    ("shared prompt, 4096 positions, bf16 autocast", True, 4096, "bf16-mixed"),
]


def margins(values: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """Each pair's reference margin, the chosen response's summed log-prob minus the rejected one's: what DPO's
    logit subtracts from the policy's."""
    chosen, rejected = values.values()
    return torch.stack([c.sum() - r.sum() for c, r in zip(chosen, rejected)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default="", help="run the variants whose name holds this text (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    datamodule = realistic_datamodule(args.pairs, tokenizer)
    dataset = datamodule.datasets["train"]
    rows = dataset.rows()
    lengths = [(len(r["prompt_ids"]), len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows]
    results, baseline, baseline_margins = [], None, None
    for name, share, tokens, precision in [v for v in VARIANTS if args.only in v[0]]:
        widths = [p + c + r for p, c, r in lengths] if share else [p + max(c, r) for p, c, r in lengths]
        batches = length_batches(widths, 1 if share else 2, 64, tokens)
        padded = sum((1 if share else 2) * len(b) * max(widths[i] for i in b) for b in batches)
        began = time.perf_counter()
        values = compute_reference_logps(
            model, dataset, datamodule.collate, 64, torch.device("cpu"), resolve_precision(precision),
            chunk_positions=1024, share_prompt=share, batch_tokens=tokens,
        )  # fmt: skip
        seconds = time.perf_counter() - began
        flat = torch.cat([torch.cat(v) for v in values.values()])
        baseline = flat if baseline is None else baseline
        current = margins(values)
        baseline_margins = current if baseline_margins is None else baseline_margins
        margin_diff = (current - baseline_margins).abs()
        row = {
            "variant": name, "share_prompt": share, "batch_tokens": tokens, "precision": precision,
            "seconds": round(seconds, 1), "forwards": len(batches), "padded_positions": padded,
            "max_abs_diff_vs_first": float((flat - baseline).abs().max()),
            "margin_abs_diff_vs_first": {"mean": float(margin_diff.mean()), "max": float(margin_diff.max())},
        }  # fmt: skip
        results.append(row)
        print(json.dumps(row), flush=True)
    real = sum(p + c + r for p, c, r in lengths)
    report = {"pairs": len(rows), "positions_of_the_pairs": real, "threads": args.threads, "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("| layout | forwards | padded positions | seconds | max abs diff | margin diff mean / max |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in results:
        margin = row["margin_abs_diff_vs_first"]
        print(f"| {row['variant']} | {row['forwards']} | {row['padded_positions']} | {row['seconds']} | "
              f"{row['max_abs_diff_vs_first']:.1e} | {margin['mean']:.2g} / {margin['max']:.2g} |")  # fmt: skip


if __name__ == "__main__":
    main()
