"""Post-hoc reading of experiment=real_paper's held-out answers (docs/results-real.md): how many are right
in substance whatever their format, next to the verifier's strict score (which needs "The answer is ...").

    python docs/real_paper_lenient.py <sweep folder>

math_chat: right when the number after "The answer is", or else the last number of the answer, is the
result. qa_chat: right when the letter after "The answer is (", or else the first option value the answer
names, is the correct one. Prints one markdown row per method and task: strict and lenient accuracy, mean
over the seeds.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

from bmc.report import load_sweep
from bmc.summary_file import EVAL_ANSWERS
from bmc.tasks.math import MathTask
from bmc.tasks.qa import QATask

TASKS = {
    "math_chat": MathTask(n_steps=1, min_operand=2, max_operand=30),
    "qa_chat": QATask(n_entities=40, attributes=["city", "color", "food", "job"]),
}
_NUMBER = re.compile(r"-?\d+")


def lenient(task_name: str, example, response: str) -> float:
    task = TASKS[task_name]
    if task.score(example, response) == 1.0:
        return 1.0
    if task_name == "math_chat":
        numbers = _NUMBER.findall(response)
        return float(bool(numbers) and int(numbers[-1]) == int(example.meta["answer"]))
    named = [(response.find(v), v) for v in example.meta["options"] if v in response]
    return float(bool(named) and min(named)[1] == example.meta["value"])


def main() -> None:
    records = [r for r in load_sweep(sys.argv[1]) if r.ok and r.path is not None]
    examples = {name: task.examples("eval", 64, seed=0) for name, task in TASKS.items()}
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for record in records:
        answers = [json.loads(line) for line in (Path(record.path) / EVAL_ANSWERS).read_text().splitlines()]
        by_question = {e.prompt.removesuffix("\nAnswer:"): e for e in examples[record.task]}
        strict, loose = [], []
        for answer in answers:
            example = next(e for q, e in by_question.items() if q in answer["prompt"])
            strict.append(answer["score"] == 1.0)
            loose.append(lenient(record.task, example, answer["response"]))
        rows.setdefault((record.method, record.task), []).append((statistics.fmean(strict), statistics.fmean(loose)))
    print("| method | task | strict accuracy | lenient accuracy | seeds |")
    print("|---|---|---|---|---|")
    for (method, task), seeds in rows.items():
        strict, loose = (statistics.fmean(s[i] for s in seeds) for i in (0, 1))
        print(f"| {method} | {task} | {strict:.3f} | {loose:.3f} | {len(seeds)} |")


if __name__ == "__main__":
    main()
