"""``python -m bmc.bench.levers``: the measured effect of each speed lever considered for the training step
(docs/performance.md). Each comparison is interleaved and repeated in one process; medians are printed.

Levers: per-token log-probs (full log-softmax + gather vs gathered logit - logsumexp, chunked or not), padding
with random vs length-grouped batches, ``torch.compile`` of the policy, the cost of collating a batch, sharing
the prompt between chosen and rejected, and tokenization into in-memory columns vs a ``datasets`` map with one
or two processes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bmc.bench.workload import make_pairs, write_workload
from bmc.data.datamodule import PreferenceDataModule
from bmc.data.epoch_sampler import EpochSampler
from bmc.data.tokenize import Truncation
from bmc.logprobs import token_logps
from bmc.models import load_causal_lm


def _race(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each variant, calls interleaved."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def logprob_variants(rows: int, length: int, vocab: int, repeats: int) -> dict[str, float]:
    """Forward + backward of the per-token log-probs of a (rows, length, vocab) logits tensor."""
    logits = torch.randn(rows, length, vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (rows, length))

    def log_softmax() -> None:  # what bmc.logprobs.token_logps does with gradients
        token_logps(logits, labels).sum().backward()

    def log_softmax_chunked() -> None:
        pieces = [
            torch.log_softmax(logits[s : s + 16], -1).gather(-1, labels[s : s + 16, :, None])
            for s in range(0, rows, 16)
        ]
        torch.cat(pieces).sum().backward()

    def logsumexp(chunk: int) -> Callable[[], None]:  # the previous implementation
        def run() -> None:
            pieces = [
                logits[s : s + chunk].gather(-1, labels[s : s + chunk, :, None]).squeeze(-1)
                - torch.logsumexp(logits[s : s + chunk], -1)
                for s in range(0, rows, chunk)
            ]
            torch.cat(pieces).sum().backward()

        return run

    return _race(
        {
            "log_softmax + gather": log_softmax,
            "log_softmax + gather, chunks of 16 rows": log_softmax_chunked,
            "gathered logit - logsumexp, chunks of 16 rows": logsumexp(16),
            "gathered logit - logsumexp, one chunk": logsumexp(rows),
        },
        repeats,
    )


def _dpo_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = (token_logps(logits, batch["input_ids"][:, 1:]) * batch["response_mask"][:, 1:]).sum(-1)
    chosen, rejected = logps.chunk(2)
    torch.nn.functional.logsigmoid(0.1 * (chosen - rejected)).mean().neg().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def batching(dm: PreferenceDataModule, checkpoint: Path, batch_size: int, steps: int) -> dict[str, Any]:
    """Padding and step time of random vs length-grouped batches of the same pairs."""
    dataset = dm.datasets["train"]
    lengths = dm.pair_lengths("train")
    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    grouped_order = list(EpochSampler(lengths, batch_size, lengths=lengths, seed=0))
    out: dict[str, Any] = {}
    batches = {}
    for name, order in (("random", random_order), ("length-grouped", grouped_order)):
        chunks = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)][:steps]
        batches[name] = [dm.collate([dataset[i] for i in chunk]) for chunk in chunks]
        cells = sum(b["input_ids"].numel() for b in batches[name])
        real = sum(int(b["attention_mask"].sum()) for b in batches[name])
        out[f"{name} padding fraction"] = 1 - real / cells
    model, _ = load_causal_lm(checkpoint)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    cursor = {name: 0 for name in batches}

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            _dpo_step(model, optimizer, batches[name][cursor[name] % len(batches[name])])
            cursor[name] += 1

        return run

    times = _race({name: step(name) for name in batches}, steps)
    out.update({f"{name} step s": t for name, t in times.items()})
    rows = [dataset[i] for i in random_order[:batch_size]]
    out["collate s"] = _race({"collate": lambda: dm.collate(rows)}, 50)["collate"]
    return out


def compiled(checkpoint: Path, dm: PreferenceDataModule, batch_size: int, steps: int) -> dict[str, float]:
    """Step time of the eager policy vs ``torch.compile(dynamic=True)`` (the widths of batches vary)."""
    dataset = dm.datasets["train"]
    batches = [
        dm.collate([dataset[j] for j in range(i, i + batch_size)]) for i in range(0, steps * batch_size, batch_size)
    ]
    eager, _ = load_causal_lm(checkpoint)
    fast, _ = load_causal_lm(checkpoint)
    started = time.perf_counter()
    fast_compiled = torch.compile(fast, dynamic=True)
    opt_e, opt_c = (torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (eager, fast))
    _dpo_step(fast_compiled, opt_c, batches[0])
    compile_s = time.perf_counter() - started
    cursor = [0]

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
        def run() -> None:
            _dpo_step(model, optimizer, batches[cursor[0] % len(batches)])
            cursor[0] += 1

        return run

    times = _race({"eager": step(eager, opt_e), "compiled": step(fast_compiled, opt_c)}, steps)
    return {"eager step s": times["eager"], "compiled step s": times["compiled"], "first compiled step s": compile_s}


def prompt_sharing(dm: PreferenceDataModule, checkpoint: Path, batch_size: int, steps: int) -> dict[str, float]:
    """Forward + backward of the policy's per-token log-probs on length-grouped batches: two rows per pair
    (``response_token_logps``) vs one row with the prompt shared (``shared_prompt_token_logps``)."""
    from bmc.logprobs import response_token_logps, shared_prompt_token_logps

    dataset = dm.datasets["train"]
    lengths = dm.pair_lengths("train")
    order = list(EpochSampler(lengths, batch_size, lengths=lengths, seed=0))
    starts = range(0, min(steps * batch_size, len(order) - batch_size + 1), batch_size)
    batches = [dm.collate([dataset[i] for i in order[s : s + batch_size]]) for s in starts]
    model, _ = load_causal_lm(checkpoint)
    model.train()
    cursor: dict[str, int] = {}

    def step(name: str, score: Callable) -> Callable[[], None]:
        def run() -> None:  # each variant walks the same batches in the same order
            logps, _ = score(model, batches[cursor.setdefault(name, 0) % len(batches)])
            logps.sum().backward()
            model.zero_grad(set_to_none=True)
            cursor[name] += 1

        return run

    variants = {"two rows": response_token_logps, "shared prompt": shared_prompt_token_logps}
    times = _race({name: step(name, score) for name, score in variants.items()}, steps)
    return {f"{name} step s": t for name, t in times.items()}


def tokenization(dm: PreferenceDataModule, n_pairs: int) -> dict[str, float]:
    """The preference data map (tokenize + truncate + BMC diff masks): the DataModule's in-memory columns vs a
    ``datasets`` map with one and two processes."""
    from datasets import Dataset

    from bmc.data.columns import ColumnDataset
    from bmc.losses.masks import stopword_token_ids

    pairs = make_pairs(n_pairs, seed=1)
    rows = Dataset.from_list(pairs)
    stopwords = stopword_token_ids(dm.tokenizer)
    kwargs = {"batched": True, "fn_kwargs": {"stopwords": stopwords}, "load_from_cache_file": False}
    candidates = {
        "columns s": lambda: ColumnDataset.from_rows(pairs, partial(dm._encode, stopwords=stopwords), desc="tokenize"),
        "datasets num_proc=1 s": lambda: rows.map(dm._encode, **kwargs),
        "datasets num_proc=2 s": lambda: rows.map(dm._encode, num_proc=2, **kwargs),
    }
    out: dict[str, list[float]] = {}
    for _ in range(2):
        for name, build in candidates.items():
            started = time.perf_counter()
            build()
            out.setdefault(name, []).append(time.perf_counter() - started)
    return {k: min(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bmc.bench.levers")
    parser.add_argument("--size", default="small")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--out", default="levers.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="bmc-levers-"))
    try:
        info = write_workload(folder, 1200, [args.size])
        checkpoint = Path(info["checkpoints"][args.size]["path"])
        _, tokenizer = load_causal_lm(checkpoint)
        dm = PreferenceDataModule(
            train=make_pairs(1200),
            val=make_pairs(8, 1),
            tokenizer=tokenizer,
            truncation=Truncation(256, 160),
            batch_size=32,
        )
        dm.setup()
        report: dict[str, Any] = {
            "logprobs (64 rows x 100 x 512 vocab)": logprob_variants(64, 100, 512, args.repeats),
            "logprobs (16 rows x 100 x 32000 vocab)": logprob_variants(16, 100, 32000, max(3, args.repeats // 4)),
            "batching": batching(dm, checkpoint, 32, args.repeats),
            "prompt sharing": prompt_sharing(dm, checkpoint, 32, args.repeats),
            "tokenization (4000 pairs)": tokenization(dm, 4000),
        }
        if not args.skip_compile:
            report["torch.compile"] = compiled(checkpoint, dm, 32, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
