"""``python -m bmc.bench.token_kl_memory``: the peak memory of one training step of TDPO2 against DPO, at
SmolLM2-135M's shapes (a randomly initialised Llama: hidden 576, 30 layers, 9 heads, 3 key-value heads, MLP 1536,
vocabulary 49152) on 2 pairs of a 64-token prompt and two 192-token responses (shared prompt, as ``model=hf``).

Three objectives, each at two LM-head chunk sizes: DPO with precomputed reference log-probs (no reference model),
DPO with the frozen reference in the step (``reference.precompute=false``), and TDPO2, whose sequential KL always
runs the reference in the step (:mod:`bmc.sequence_kl`). One step = the loss's forward and backward and an AdamW
step, through ``PreferenceModule``; each measurement runs in its own process and reports that process's peak
resident memory (weights, gradients, AdamW state and the step's activations). The first-batch scoring check is
not part of a step: the shared-prompt layout is taken as checked.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from bmc.bench.clock import peak_rss_mb

OBJECTIVES = ("dpo_precomputed", "dpo_ref_in_step", "tdpo2")
CHUNKS = (256, 1024)
PAIRS, PROMPT, RESPONSE = 2, 64, 192


def smollm2_shaped_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
        vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def batch() -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows of the same prompts, every token a response token after the prompt."""
    from bmc.data.tokenize import pad_sequences

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 49152, (PROMPT,), generator=g).tolist() for _ in range(PAIRS)]
    responses = [torch.randint(0, 49152, (RESPONSE,), generator=g).tolist() for _ in range(2 * PAIRS)]
    rows = pad_sequences(prompts + prompts, responses, pad_id=0)
    rows["diff_mask"] = torch.zeros_like(rows["response_mask"])
    return rows


def measure(objective: str, chunk: int) -> dict[str, float]:
    """One step of ``objective`` at ``chunk`` positions per LM-head chunk, in this process."""
    from bmc.models import frozen_copy
    from bmc.module import PreferenceModule

    policy = smollm2_shaped_model().train()
    rows = batch()
    reference = None if objective == "dpo_precomputed" else frozen_copy(policy)
    if objective == "dpo_precomputed":  # the values do not matter to memory, their presence does
        rows["ref_token_logps"] = -torch.rand(rows["input_ids"].shape[0], rows["input_ids"].shape[1] - 1)
    loss = {"name": "tdpo2", "beta": 0.1, "alpha": 0.5} if objective == "tdpo2" else {"name": "dpo", "beta": 0.1}
    module = PreferenceModule(
        policy, reference, loss=loss, token_weighting={"name": "uniform"}, regularizer={"name": "none"},
        optim={"lr": 1e-6}, share_prompt=True, logprob_chunk=chunk,
    )  # fmt: skip
    module._shares_prompt = {id(m): True for m in (policy, reference) if m is not None}
    module.log_dict = lambda *args, **kwargs: None
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-6)
    before = peak_rss_mb()
    started = time.perf_counter()
    module._step(rows, "train").backward()
    optimizer.step()
    seconds = time.perf_counter() - started
    return {"objective": objective, "chunk": chunk, "peak_rss_mb": peak_rss_mb(), "setup_rss_mb": before,
            "step_seconds": seconds}  # fmt: skip


def table(results: list[dict[str, float]]) -> str:
    """A markdown table: one row per chunk size, the peak of each objective."""
    lines = ["| chunk | " + " | ".join(OBJECTIVES) + " |", "|---" * (len(OBJECTIVES) + 1) + "|"]
    for chunk in CHUNKS:
        peaks = {r["objective"]: r["peak_rss_mb"] for r in results if r["chunk"] == chunk}
        lines.append(f"| {chunk} | " + " | ".join(f"{peaks[o]:.0f} MB" for o in OBJECTIVES) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=2, metavar=("OBJECTIVE", "CHUNK"), help="measure one, in this process")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    results = []
    for chunk in CHUNKS:
        for objective in OBJECTIVES:
            command = [sys.executable, "-m", "bmc.bench.token_kl_memory", "--one", objective, str(chunk)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
            print(f"[token_kl_memory] {results[-1]}", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()
