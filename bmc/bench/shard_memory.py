"""Training state per rank under DDP and FSDP2, measured on two CPU processes (gloo): what each rank holds of the
parameters, the gradients and AdamW's state after one optimizer step, at SmolLM2-135M's shapes (random weights;
the ``smollm2-135m`` config of :mod:`bmc.bench.workload`) in float32. docs/sharding.md has the table.

    python -m bmc.bench.shard_memory --out docs/shard-memory-cpu-smollm2.json

Each rank counts the bytes of the tensors it holds: the whole of each under DDP (every rank a replica), its own
shard of each under FSDP2 (``DTensor.to_local``; the policy sharded as trainer=fsdp2 shards it,
:func:`bmc.sharding.fully_shard_model`). Beside them, each process's peak resident memory (``ru_maxrss``): that
also counts what the three leave out (the Python process and torch themselves, activations, DDP's gradient
buckets, FSDP2's gathered layer weights while a layer runs), and the random initialisation of the whole model
that every rank does before FSDP2 shards it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaConfig, LlamaForCausalLM

from bmc.bench.workload import NAMED_CONFIGS
from bmc.precision import resolve_precision
from bmc.sharding import fully_shard_model

MODES = ("ddp", "fsdp2")
FORK = mp.get_context("fork")
MB = 1e6


def _bytes(tensors: list[torch.Tensor]) -> int:
    """The bytes of ``tensors`` as this rank holds them (a DTensor's local shard)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local)


def _rank(rank: int, world: int, port: int, mode: str, config: dict[str, Any], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**config, tie_word_embeddings=True))
        params = list(model.parameters())  # tied embeddings counted once
        if mode == "fsdp2":
            fully_shard_model(model, init_device_mesh("cpu", (world,)), resolve_precision("32-true"))
            params, wrapped = list(model.parameters()), model
        else:
            wrapped = DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        tokens = torch.randint(0, config["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(rank))
        wrapped(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        record = {
            "parameters_mb": _bytes(params) / MB,
            "gradients_mb": _bytes([p.grad for p in params if p.grad is not None]) / MB,
            "adamw_state_mb": _bytes(state) / MB,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,  # KiB on Linux
        }
        record["total_mb"] = record["parameters_mb"] + record["gradients_mb"] + record["adamw_state_mb"]
        Path(out, f"{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def measure(mode: str, config: dict[str, Any], world: int = 2) -> list[dict[str, float]]:
    """Each rank's record (MB of parameters, gradients, AdamW state, their total, peak RSS) after one AdamW step
    of a Llama of ``config`` under ``mode`` (``ddp`` or ``fsdp2``) on ``world`` CPU processes."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        # forked: the ranks start with torch and transformers imported (a spawned process imports them anew)
        ranks = [FORK.Process(target=_rank, args=(rank, world, port, mode, config, out)) for rank in range(world)]
        for process in ranks:
            process.start()
        for process in ranks:
            process.join()
        if any(process.exitcode != 0 for process in ranks):
            raise RuntimeError(f"shard_memory {mode}: rank exit codes {[p.exitcode for p in ranks]}")
        return [json.loads(Path(out, f"{rank}.json").read_text()) for rank in range(world)]


def format_table(report: dict[str, Any]) -> str:
    """The report as a markdown table, one row per mode and rank."""
    lines = ["| strategy | rank | parameters MB | gradients MB | AdamW state MB | total MB | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, ranks in report["modes"].items():
        for rank, r in enumerate(ranks):
            lines.append(f"| {mode} | {rank} | {r['parameters_mb']:.1f} | {r['gradients_mb']:.1f} | "
                         f"{r['adamw_state_mb']:.1f} | {r['total_mb']:.1f} | {r['peak_rss_mb']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bmc.bench.shard_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(NAMED_CONFIGS))
    parser.add_argument("--out", default="shard-memory.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = NAMED_CONFIGS[args.model]
    report = {"model": args.model, "config": config, "world_size": 2, "dtype": "float32",
              "torch": torch.__version__, "modes": {mode: measure(mode, config) for mode in MODES}}  # fmt: skip
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(format_table(report))
    return report


if __name__ == "__main__":
    main()
