"""The two comparison implementations, each run in its own process by ``python -m bmc.bench``:
TRL's ``DPOTrainer`` and a bare PyTorch DPO loop. (This framework is timed through ``train.py`` itself.)

    python -m bmc.bench.runners '<json spec>'

The spec names the implementation (``trl``: TRL in its fastest offline settings; ``trl_defaults``: the same with
TRL's default gradient checkpointing; ``bare``), the mode (``in_step``: the reference forward runs
in every step; ``precomputed``: reference log-probs are computed before training), the checkpoint, the pairs,
the number of steps, the batch size, the learning rate, beta, the device, the precision and where the clock
writes.
"""

from __future__ import annotations

import json
import sys
import tempfile
from typing import Any

import torch
import torch.nn.functional as F

from bmc.bench.clock import StepClock
from bmc.data.sources import split_pairs
from bmc.data.tokenize import encode_prompts, encode_responses, pad_sequences
from bmc.models import frozen_copy, load_causal_lm

#: the bench's precisions, each implementation's dtype for its matmuls: Lightning's ``trainer.precision`` of the
#: same name (``32-true`` for float32), TRL's ``bf16`` flag, autocast in the bare loop
PRECISIONS = {"float32": torch.float32, "bf16-mixed": torch.bfloat16}
LIGHTNING_PRECISION = {"float32": "32-true", "bf16-mixed": "bf16-mixed"}

#: the pipeline's split (data.val_fraction and the task seed of hf_prefs), so every implementation trains on
#: exactly the pairs train.py trains on
VAL_FRACTION, SPLIT_SEED = 0.1, 0


def train_pairs(path: str) -> list[dict[str, str]]:
    with open(path) as f:
        pairs = [json.loads(line) for line in f]
    return split_pairs(pairs, VAL_FRACTION, SPLIT_SEED)[0]


def run_trl(spec: dict[str, Any], clock: StepClock) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Tick(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock.tick()

    model, tokenizer = load_causal_lm(spec["checkpoint"])
    on_gpu = spec["device"] == "gpu"
    # TRL 1.16 always computes log-probs through its fused LM head (chunks of positions, no full logits)
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["lr"],
        beta=spec["beta"],
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a fraction of the steps, as optim.warmup_ratio
        max_grad_norm=1.0,
        max_steps=spec["steps"],
        max_length=spec["max_length"],
        precompute_ref_log_probs=spec["mode"] == "precomputed",
        logging_steps=spec["steps"] + 1,  # never, like a run without a logger
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
        bf16=spec["precision"] == "bf16-mixed",
        # TRL's default is True (less memory, one more forward); train.py and the bare loop keep activations
        gradient_checkpointing=spec["impl"] == "trl_defaults",
        disable_tqdm=True,
        seed=spec["seed"],
    )
    dataset = Dataset.from_list(train_pairs(spec["pairs"]))
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[Tick()])
    trainer.train()


def _sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logps * batch["response_mask"][:, 1:]).sum(-1)


def run_bare(spec: dict[str, Any], clock: StepClock) -> None:
    """Concatenated forward, DPO loss, AdamW: nothing else (no scheduler, no clipping, no logging)."""
    device = torch.device("cuda" if spec["device"] == "gpu" else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16-mixed")
    model, tokenizer = load_causal_lm(spec["checkpoint"])
    model.to(device).train()
    pairs = train_pairs(spec["pairs"])
    prompts = encode_prompts(tokenizer, [p["prompt"] for p in pairs])
    chosen = encode_responses(tokenizer, [p["chosen"] for p in pairs])
    rejected = encode_responses(tokenizer, [p["rejected"] for p in pairs])
    size, beta = spec["batch_size"], spec["beta"]

    def batch(rows: list[int]) -> dict[str, torch.Tensor]:
        padded = pad_sequences(
            [prompts[i] for i in rows] * 2, [chosen[i] for i in rows] + [rejected[i] for i in rows], 0
        )
        return {k: v.to(device) for k, v in padded.items()}

    reference = frozen_copy(model)
    precomputed = None
    if spec["mode"] == "precomputed":
        with torch.no_grad(), autocast:
            sums = [
                _sequence_logps(reference, batch(list(range(s, min(s + 64, len(pairs))))))
                for s in range(0, len(pairs), 64)
            ]
        precomputed = torch.cat([torch.stack(s.chunk(2)) for s in sums], 1).T  # (pairs, [chosen, rejected])
        del reference

    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"])
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(spec["seed"])).tolist()
    for step in range(spec["steps"]):
        rows = order[step * size : (step + 1) * size]
        inputs = batch(rows)
        with autocast:
            policy = _sequence_logps(model, inputs)
            if precomputed is None:
                with torch.no_grad():
                    refs = _sequence_logps(reference, inputs)
            else:
                refs = precomputed[rows].T.reshape(-1).to(device)
        margin = (policy[:size] - refs[:size]) - (policy[size:] - refs[size:])
        loss = -F.logsigmoid(beta * margin).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick()


RUNNERS = {"trl": run_trl, "trl_defaults": run_trl, "bare": run_bare}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    clock = StepClock(spec["out"], spec["warmup"])
    RUNNERS[spec["impl"]](spec, clock)
    clock.write()


if __name__ == "__main__":
    main(sys.argv[1:])
