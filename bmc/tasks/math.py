"""Multi-step arithmetic word problems (the synthetic stand-in for the paper's math task).

Prompt: ``"Mia has 47 marbles. She finds 85 more, then gives away 12. How many marbles does she have
now?\\nAnswer:"``; gold response: ``" 47+85=132; 132-12=120. The answer is 120."``. The verifier is exact on
the number after the first ``"The answer is"``. Intermediate results never go negative.

With ``gold_styles > 1`` each gold response is written in one of several wordings (``" First 47+85=132,
then 132-12=120. ..."``), drawn per example. The SFT policy then learns all of them and its samples for a
prompt often use another wording than that prompt's gold, as with human-written references: this is the
setting where BMC's Bridging (a minimal fix of the policy's own wrong answer) differs from the gold.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from bmc.tasks.base import ANSWER_SUFFIX, Example, Task

NAMES: tuple[tuple[str, str], ...] = (
    ("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Sam", "he"),
    ("Zoe", "she"), ("Max", "he"), ("Ivy", "she"), ("Ben", "he"),
)  # fmt: skip
OBJECTS: tuple[str, ...] = ("marbles", "stickers", "coins", "stamps", "shells", "pencils", "cards", "beads")
VERBS: dict[str, tuple[str, ...]] = {
    "+": ("finds {n} more", "buys {n} more", "wins {n} more", "gets {n} more"),
    "-": ("gives away {n}", "loses {n}", "sells {n}"),
}
ANSWER_PREFIX = "The answer is"
#: (opening, separator between steps) of each gold wording; style 0 is the terse default
GOLD_STYLES: tuple[tuple[str, str], ...] = (
    ("", "; "),
    ("First ", ", then "),
    ("We compute ", " and "),
    ("Step by step: ", ", so "),
)

_STEP_RE = re.compile(r"(\d+)\s*([+\-])\s*(\d+)\s*=\s*(-?\d+)")
_ANSWER_RE = re.compile(r"The answer is\s*(-?\d+)")
# int() refuses strings over ~4300 digits; nothing that long can be a correct answer anyway.
_MAX_DIGITS = 30

Step = tuple[int, str, int, int]  # (left operand, op, right operand, result)


def _to_int(text: str) -> int | None:
    digits = text.lstrip("-")
    if not digits.isdigit() or len(digits) > _MAX_DIGITS:
        return None
    return int(text)


def _apply(x: int, op: str, b: int) -> int:
    return x + b if op == "+" else x - b


def _render_step(step: Step) -> str:
    x, op, b, r = step
    return f"{x}{op}{b}={r}"


def _render(steps: Sequence[Step], style: int = 0) -> str:
    opening, separator = GOLD_STYLES[style]
    return f" {opening}" + separator.join(_render_step(s) for s in steps) + f". {ANSWER_PREFIX} {steps[-1][3]}."


def _chain(start: int, ops: Sequence[tuple[str, int]]) -> list[Step]:
    steps: list[Step] = []
    value = start
    for op, b in ops:
        result = _apply(value, op, b)
        steps.append((value, op, b, result))
        value = result
    return steps


def _digit_swap(value: int) -> int | None:
    text = str(value)
    if len(text) < 2 or text[-1] == text[-2]:
        return None
    swapped = int(text[:-2] + text[-1] + text[-2])
    # A leading zero after the swap (e.g. 30 -> 03) is not something a model would write.
    return swapped if len(str(swapped)) == len(text) else None


class MathTask(Task):
    """Arithmetic word problems with ``n_steps`` additions/subtractions on ``min_operand..max_operand``.

    Args:
        n_steps: number of operations after the starting amount.
        min_operand / max_operand: range of the starting amount and of every operand.
        ops: operations to draw from, a subset of ``("+", "-")``.
        gold_styles: how many of :data:`GOLD_STYLES` the gold responses are drawn from (1: terse only).
        split_fractions / max_misses: see :class:`bmc.tasks.base.Task`.
    """

    name = "math"

    def __init__(
        self,
        *,
        n_steps: int = 2,
        min_operand: int = 10,
        max_operand: int = 99,
        ops: Sequence[str] = ("+", "-"),
        gold_styles: int = 1,
        split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
        max_misses: int = 20_000,
    ) -> None:
        super().__init__(split_fractions=split_fractions, max_misses=max_misses)
        ops = tuple(str(o) for o in ops)
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        if not 0 <= min_operand <= max_operand:
            raise ValueError(f"need 0 <= min_operand <= max_operand, got {min_operand}, {max_operand}")
        if not ops or any(o not in VERBS for o in ops):
            raise ValueError(f"ops must be a non-empty subset of {tuple(VERBS)}, got {ops!r}")
        if "+" not in ops and min_operand * (n_steps + 1) > max_operand:
            raise ValueError(
                f"with only subtractions, {n_steps} steps of >= {min_operand} cannot start from "
                f"<= {max_operand}"
            )
        if not 1 <= gold_styles <= len(GOLD_STYLES):
            raise ValueError(f"gold_styles must be in 1..{len(GOLD_STYLES)}, got {gold_styles}")
        self.gold_styles = int(gold_styles)
        self.n_steps = int(n_steps)
        self.min_operand = int(min_operand)
        self.max_operand = int(max_operand)
        self.ops = ops

    # ------------------------------------------------------------------ generation
    def _draw_ops(self, rng: random.Random, start: int) -> list[tuple[str, int]]:
        ops: list[tuple[str, int]] = []
        value = start
        for i in range(self.n_steps):
            # Subtraction is only offered when some operand keeps the running total non-negative.
            allowed = [o for o in self.ops if o == "+" or value >= self.min_operand]
            op = rng.choice(allowed)
            if op == "+":
                hi = self.max_operand
            elif "+" in self.ops:
                hi = min(self.max_operand, value)
            else:
                # Without additions, leave enough for the remaining subtractions.
                hi = min(self.max_operand, value - self.min_operand * (self.n_steps - 1 - i))
            b = rng.randint(self.min_operand, hi)
            ops.append((op, b))
            value = _apply(value, op, b)
        return ops

    def _generate(self, rng: random.Random) -> Example:
        name, pronoun = rng.choice(NAMES)
        obj = rng.choice(OBJECTS)
        if "+" in self.ops:
            start = rng.randint(self.min_operand, self.max_operand)
        else:
            start = rng.randint(self.min_operand * (self.n_steps + 1), self.max_operand)
        ops = self._draw_ops(rng, start)
        phrases = [rng.choice(VERBS[op]).format(n=b) for op, b in ops]
        story = f"{pronoun.capitalize()} " + ", then ".join(phrases) + "."
        prompt = f"{name} has {start} {obj}. {story} How many {obj} does {pronoun} have now?{ANSWER_SUFFIX}"
        steps = _chain(start, ops)
        # drawn only when there is a choice, so the default task's examples do not change
        style = rng.randrange(self.gold_styles) if self.gold_styles > 1 else 0
        meta: dict[str, Any] = {
            "start": start,
            "ops": [[op, b] for op, b in ops],
            "steps": [list(s) for s in steps],
            "answer": steps[-1][3],
            "style": style,
        }
        return Example(prompt=prompt, gold=_render(steps, style), meta=meta)

    # ------------------------------------------------------------------ verifier side
    @staticmethod
    def _gold_steps(example: Example) -> list[Step]:
        return _chain(int(example.meta["start"]), [(str(op), int(b)) for op, b in example.meta["ops"]])

    def score(self, example: Example, response: str) -> float:
        """1.0 iff the number after the first "The answer is" equals the answer (later text is ignored)."""
        match = _ANSWER_RE.search(response)
        if match is None:
            return 0.0
        return float(_to_int(match.group(1)) == int(example.meta["answer"]))

    def corrupt(self, example: Example, rng: random.Random) -> str:
        """An arithmetic slip (+-1, +-10 i.e. a carry/borrow error, or a swap of the last two digits) in
        one step, propagated consistently through the later steps to the final answer."""
        steps = self._gold_steps(example)
        style = int(example.meta.get("style", 0))
        ops = [(op, b) for _, op, b, _ in steps]
        order = list(range(len(steps)))
        rng.shuffle(order)
        for i in order:
            right = steps[i][3]
            candidates = [right + 1, right - 1, right + 10, right - 10, _digit_swap(right)]
            rng.shuffle(candidates)
            for wrong in candidates:
                if wrong is None or wrong < 0 or wrong == right:
                    continue
                tail = _chain(wrong, ops[i + 1 :])
                # Keep every number non-negative: a realistic slip does not make "12-15" appear.
                if any(s[3] < 0 for s in tail):
                    continue
                x, op, b, _ = steps[i]
                return _render([*steps[:i], (x, op, b, wrong), *tail], style)
        # Unreachable in practice (+1 on the last step always qualifies); kept for safety.
        x, op, b, r = steps[-1]
        return _render([*steps[:-1], (x, op, b, r + 1)], style)

    def minimal_fix(self, example: Example, response: str) -> str | None:
        """Fix the first wrong step and everything that follows from it, keeping correct text verbatim.

        A step is correct if its operands are the running total and the problem's operand (either order
        for "+") and its result is right; a step with right operands and a wrong result only gets its
        result replaced, other wrong steps are rewritten. Missing steps are inserted, surplus steps dropped,
        the final answer is corrected and text after the answer statement is dropped. Returns None when no
        step can be parsed before the answer statement.
        """
        if self.score(example, response) == 1.0:
            return response
        gold = self._gold_steps(example)
        answer_match = _ANSWER_RE.search(response)
        region_end = answer_match.start() if answer_match else len(response)
        parsed = [m for m in _STEP_RE.finditer(response, 0, region_end)]
        if not parsed:
            return None

        pieces: list[str] = []
        cursor = 0
        for k, match in enumerate(parsed[: len(gold)]):
            pieces.append(response[cursor : match.start()])
            pieces.append(self._fix_step(match, gold[k]))
            cursor = match.end()
        if len(parsed) < len(gold):
            pieces.append("; " + "; ".join(_render_step(s) for s in gold[len(parsed) :]))
        else:
            # Surplus steps (and the text between them) are dropped; what follows the last one is kept.
            cursor = parsed[-1].end()
        if answer_match is not None and len(parsed) >= len(gold):
            pieces.append(response[cursor : answer_match.start(1)])
        else:
            # No answer statement (e.g. a truncated response) or steps were inserted before it: write it.
            pieces.append(f". {ANSWER_PREFIX} ")
        pieces.append(f"{gold[-1][3]}.")
        return "".join(pieces)

    @staticmethod
    def _fix_step(match: re.Match[str], want: Step) -> str:
        x, op, b, r = want
        got_x, got_op, got_b = _to_int(match.group(1)), match.group(2), _to_int(match.group(3))
        operands_ok = got_op == op and ((got_x, got_b) == (x, b) or (op == "+" and (got_x, got_b) == (b, x)))
        if not operands_ok:
            return _render_step(want)
        if _to_int(match.group(4)) == r:
            return match.group(0)
        start, end = match.span(4)
        offset = match.start()
        text = match.group(0)
        return text[: start - offset] + str(r) + text[end - offset :]

    def max_gold_chars(self) -> int:
        grows = "+" in self.ops

        def digits(k: int) -> int:
            # Largest running total after k operations: all additions of the largest operand.
            return len(str(self.max_operand * (k + 1 if grows else 1)))

        operand = len(str(self.max_operand))
        steps = sum(digits(k) + 1 + operand + 1 + digits(k + 1) for k in range(self.n_steps))
        wording = max(len(o) + len(s) * (self.n_steps - 1) for o, s in GOLD_STYLES[: self.gold_styles])
        return 1 + steps + wording + len(f". {ANSWER_PREFIX} ") + digits(self.n_steps) + 1

    def __repr__(self) -> str:
        return (
            f"MathTask(n_steps={self.n_steps}, min_operand={self.min_operand}, "
            f"max_operand={self.max_operand}, ops={self.ops!r}, gold_styles={self.gold_styles})"
        )
