"""Padding-free packing of several pairs into one row, measured before building it: how much padding the
framework's length-grouped batches leave (the most packing could save), and what one packed row costs on this
machine's attention against the rows it replaces. The measurement behind docs/performance.md's packing lever.

    python docs/measure_packing.py <checkpoint folder> [--threads 2] [--repeats 3]

1. Padding: the benchmark's pairs (``realistic_pairs``, UltraFeedback-like lengths in the checkpoint's tokens) in
   the shared-prompt layout (one row of prompt + chosen + rejected per pair), batched 4 pairs at a time in order
   of length (what ``length_grouping`` does within its groups) and at random, for 32 and 512 pairs.
2. Cost: forward + backward of the decoder (the part packing changes; the LM head sees the same positions either
   way) on the 4 rows of one length-grouped batch, padded to the widest with a 4D mask as the shared-prompt
   layout runs, against the same tokens packed into one row with a block-diagonal 4D mask.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bmc

from bmc.bench.workload import realistic_datamodule  # noqa: E402

PAIRS_PER_BATCH = 4


def packed_widths(tokenizer, n: int) -> list[int]:
    """Prompt + chosen + rejected tokens of each of ``n`` benchmark pairs, as model=hf truncates them."""
    rows = realistic_datamodule(n, tokenizer).datasets["train"].rows()
    return [len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows]


def padded_fraction(widths: list[int]) -> float:
    batches = [widths[i : i + PAIRS_PER_BATCH] for i in range(0, len(widths), PAIRS_PER_BATCH)]
    return 1 - sum(widths) / sum(len(b) * max(b) for b in batches)


def step_seconds(decoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> float:
    began = time.perf_counter()
    hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    hidden.float().square().mean().backward()
    decoder.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    report: dict = {"threads": args.threads, "padding": {}}
    widths_of = {n: packed_widths(tokenizer, n) for n in (32, 512)}
    for n, widths in widths_of.items():
        shuffled = widths[:]
        random.Random(0).shuffle(shuffled)
        report["padding"][n] = {
            "positions": sum(widths),
            "length_grouped": padded_fraction(sorted(widths)),
            "random": padded_fraction(shuffled),
        }
        print(n, json.dumps(report["padding"][n]), flush=True)

    # one length-grouped batch of the 32-pair set: its middle one
    widths = sorted(widths_of[32])
    middle = len(widths) // PAIRS_PER_BATCH // 2 * PAIRS_PER_BATCH
    batch = widths[middle : middle + PAIRS_PER_BATCH]
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)
    model.train()
    decoder = model.model
    width, total = max(batch), sum(batch)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (PAIRS_PER_BATCH, width), generator=g)
    j = torch.arange(width)
    real = j[None] < torch.tensor(batch)[:, None]
    rows_mask = ((j[:, None] >= j[None]) & real[:, None, :]) | torch.eye(width, dtype=torch.bool)
    rows_inputs = (ids, rows_mask[:, None], j.expand(PAIRS_PER_BATCH, -1))
    segment = torch.repeat_interleave(torch.arange(PAIRS_PER_BATCH), torch.tensor(batch))
    k = torch.arange(total)
    packed_mask = (k[:, None] >= k[None]) & (segment[:, None] == segment[None])
    starts = torch.tensor([0, *torch.tensor(batch).cumsum(0)[:-1].tolist()])
    packed_inputs = (
        torch.cat([ids[i, :w] for i, w in enumerate(batch)])[None],
        packed_mask[None, None],
        (k - starts[segment])[None],
    )
    timings: dict[str, list[float]] = {"rows": [], "packed": []}
    step_seconds(decoder, *rows_inputs)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits both alike
        timings["rows"].append(step_seconds(decoder, *rows_inputs))
        timings["packed"].append(step_seconds(decoder, *packed_inputs))
    report["cost"] = {
        "batch_widths": batch,
        "rows_positions": PAIRS_PER_BATCH * width,
        "packed_positions": total,
        "rows_seconds": statistics.median(timings["rows"]),
        "packed_seconds": statistics.median(timings["packed"]),
        "timings": timings,
    }
    print(json.dumps(report["cost"]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
