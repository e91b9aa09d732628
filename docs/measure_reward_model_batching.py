"""IPR with a reward-model judge, its scores taken per comparison (the judge told nothing ahead, as before
``Judge.prepare``) vs batched across prompts (``rank_many``): forwards, padded tokens, seconds and the first
choices. The measurement behind docs/concurrency.md's reward-model section.

    python docs/measure_reward_model_batching.py <checkpoint folder> <samples results.jsonl> [--rm /tmp/rm]

The reward model is the checkpoint with a fresh one-label score head (seeded), saved to ``--rm`` once; the
samples are a sampling cache entry (``<cache>/samples/<key>/results.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bmc

from bmc.synthesis.ipr import rank, rank_many  # noqa: E402
from bmc.synthesis.judges import RewardModelJudge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("samples", type=Path)
    parser.add_argument("--rm", type=Path, default=Path("/tmp/rm-batching"))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not args.rm.exists():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
        model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(args.rm)
        tokenizer.save_pretrained(args.rm)
    samples = [json.loads(line) for line in args.samples.read_text().splitlines()]
    for mode in ("per comparison", "across prompts"):
        judge = RewardModelJudge(str(args.rm), batch_size=args.batch_size)
        forward, shapes = judge.model.forward, []

        def counted(*a, forward=forward, shapes=shapes, **k):
            shapes.append(tuple(k["input_ids"].shape))
            return forward(*a, **k)

        judge.model.forward = counted
        start = time.perf_counter()
        if mode == "per comparison":
            ranked = [rank(judge, s["prompt"], s["completions"]) for s in samples]
        else:
            ranked = rank_many(judge, samples)
        seconds = time.perf_counter() - start
        print(json.dumps({
            "mode": mode, "prompts": len(samples), "texts": sum(len(s["completions"]) for s in samples),
            "forwards": len(shapes), "padded_tokens": sum(r * c for r, c in shapes), "seconds": round(seconds, 2),
            "first_choices": [(r.best_index, r.worst_index) for r in ranked][:4],
        }))  # fmt: skip


if __name__ == "__main__":
    main()
