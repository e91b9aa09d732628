"""How far minimal edits move from the rejected response: the measurement behind the Bridging gates' defaults
(docs/bridging-gates.md).

    python docs/measure_edit_gates.py <tokenizer folder> [<samples cache entry> ...]

For each built-in task, 400 preference prompts: the generator's realistic error as the rejected response and
the task editor's minimal fix of it; for each cached sample entry (``.cache/bmc/samples/<key>/``, e.g. those of
``experiment=real_paper``), the first wrong sample of each prompt and its fix. Prints, per source, the ratio
d(edit, rejected) / len(rejected) in tokens (median, 95th percentile, max) and how many edits moved farther
from the rejected response than the chosen response is.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path

from rapidfuzz.distance import Levenshtein
from transformers import AutoTokenizer

from bmc.tasks import Task
from bmc.tasks.instruct import InstructTask
from bmc.tasks.math import MathTask
from bmc.tasks.qa import QATask

QA = {"n_entities": 40, "attributes": ["city", "color", "food", "job"]}
TASKS: dict[str, Task] = {
    "math": MathTask(),
    "math_styles": MathTask(gold_styles=4),
    "qa": QATask(**QA),
    "instruct": InstructTask(),
    "math_chat": MathTask(n_steps=1, min_operand=2, max_operand=30),
    "qa_chat": QATask(**QA),
}


def report(name: str, triples: list[tuple[str, str, str]], encode) -> None:
    ratios, farther = [], 0
    for chosen, rejected, edit in triples:
        e, c, r = encode(edit), encode(chosen), encode(rejected)
        distance = Levenshtein.distance(e, r)
        ratios.append(distance / len(r))
        farther += distance > Levenshtein.distance(c, r)
    p95 = statistics.quantiles(ratios, n=100)[94] if len(ratios) > 1 else ratios[0]
    print(f"| {name} | {len(ratios)} | {statistics.median(ratios):.2f} | {p95:.2f} | {max(ratios):.2f} | {farther} |")


def from_generator(name: str) -> list[tuple[str, str, str]]:
    task, rng = TASKS[name], random.Random(0)
    triples = []
    for example in task.examples("pref", 400, seed=0):
        rejected = task.corrupt(example, rng)
        fixed = task.minimal_fix(example, rejected)
        if fixed is not None and fixed != rejected:
            triples.append((example.gold, rejected, fixed))
    return triples


def from_samples(entry: Path) -> tuple[str, list[tuple[str, str, str]]]:
    rows = [json.loads(line) for line in (entry / "results.jsonl").open()]
    name = "math_chat" if "Write the calculation" in rows[0]["prompt"] else "qa_chat"
    task = TASKS[name]
    question = {e.prompt.removesuffix("\nAnswer:"): e for e in task.examples("pref", len(rows), seed=0)}
    triples = []
    for row in rows:
        # the rendered prompt holds the question; match it to its example to score and fix the samples
        example = next(e for q, e in question.items() if q in row["prompt"])
        gold = example.gold.lstrip()
        wrong = [c for c in row["completions"] if task.score(example, c) < 1.0]
        fixed = task.minimal_fix(example, wrong[0]) if wrong else None
        if fixed is not None and fixed != wrong[0]:
            triples.append((gold, wrong[0], fixed))
    return f"{name}: SmolLM2-135M-Instruct's samples", triples


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    print("| rejected responses | edits | median ratio | p95 | max | farther than chosen |")
    print("|---|---|---|---|---|---|")
    for name in ("math", "math_styles", "qa", "instruct"):
        report(f"{name}: generator errors", from_generator(name), encode)
    for entry in sys.argv[2:]:
        report(*from_samples(Path(entry)), encode)


if __name__ == "__main__":
    main()
