"""Multiple-choice questions over a fictional knowledge base (the stand-in for the paper's QA task).

The knowledge base is generated deterministically from ``kb_seed``: ``n_entities`` invented people, each
with one value per attribute (home city, favorite color, favorite food, job, pet) drawn from small pools.
Prompt: ``"Which city does Zorvan live in?\\n(A) Pelmar (B) Quindle (C) Ostrin (D) Brill\\nAnswer:"``;
gold: ``" Zorvan lives in Quindle. The answer is (B)."``.

Every split asks about the same facts; a prompt is a (fact, distractors, option order) triple, so the
held-out splits ask facts seen in training with other distractors and orders. The model therefore has to
memorise the knowledge base during SFT and map the recalled value to its letter. The verifier is exact on
the letter of the first ``"The answer is (X)"``.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from typing import Any

from bmc.tasks.base import ANSWER_SUFFIX, Example, Task

# (question, rationale) templates; the rationale states the fact the chosen option relies on.
TEMPLATES: dict[str, tuple[str, str]] = {
    "city": ("Which city does {e} live in?", "{e} lives in {v}."),
    "color": ("What is {e}'s favorite color?", "{e}'s favorite color is {v}."),
    "food": ("What food does {e} like best?", "{e} likes {v} best."),
    "job": ("What job does {e} have?", "{e} is a {v}."),
    "pet": ("What pet does {e} keep?", "{e} keeps a {v}."),
}
POOLS: dict[str, tuple[str, ...]] = {
    "city": ("Pelmar", "Quindle", "Ostrin", "Brill", "Varnholt", "Kelby", "Dunmere", "Ashfen", "Tolvik",
             "Glent"),
    "color": ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "gray"),
    "food": ("bread", "rice", "soup", "cheese", "apples", "noodles", "fish", "beans", "pie", "honey"),
    "job": ("baker", "tailor", "sailor", "miner", "potter", "weaver", "farmer", "painter", "singer",
            "doctor"),
    "pet": ("cat", "dog", "goat", "parrot", "rabbit", "horse", "lizard", "hamster", "turtle", "frog"),
}  # fmt: skip
_ONSETS = ("Zor", "Quel", "Bram", "Tal", "Vor", "Mir", "Fen", "Dal", "Kes", "Lun", "Ror", "Sil", "Tib", "Yar",
           "Grel", "Hask")  # fmt: skip
_CODAS = ("van", "da", "ix", "orn", "ela", "ith", "us", "ane")
ANSWER_PREFIX = "The answer is"
_ANSWER_RE = re.compile(r"The answer is\s*\(([A-Z])\)")


def make_kb(n_entities: int, attributes: Sequence[str], kb_seed: int) -> dict[str, dict[str, str]]:
    """The fictional knowledge base: entity name -> {attribute: value}, deterministic in its arguments."""
    names = [onset + coda for onset in _ONSETS for coda in _CODAS]
    if not 1 <= n_entities <= len(names):
        raise ValueError(f"n_entities must be in 1..{len(names)}, got {n_entities}")
    rng = random.Random(f"qa-kb/{kb_seed}")
    chosen = rng.sample(names, n_entities)
    return {name: {attr: rng.choice(POOLS[attr]) for attr in attributes} for name in chosen}


class QATask(Task):
    """Multiple-choice recall of a fictional knowledge base.

    Args:
        n_entities: number of fictional people in the knowledge base (more = more facts to memorise).
        attributes: which attributes are asked, a subset of ``TEMPLATES``.
        n_options: options per question (2..10, at most the pool size).
        kb_seed: seed of the knowledge base; fixed across runs so every split and seed shares the facts.
        letter_slip_prob: probability that :meth:`corrupt` keeps the correct rationale and only picks a wrong
            letter (a fact-to-option mapping error) instead of a wrong option with a consistent rationale.
        split_fractions / max_misses: see :class:`bmc.tasks.base.Task`.
    """

    name = "qa"

    def __init__(
        self,
        *,
        n_entities: int = 40,
        attributes: Sequence[str] = ("city", "color", "food", "job"),
        n_options: int = 4,
        kb_seed: int = 1234,
        letter_slip_prob: float = 0.0,
        split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
        max_misses: int = 20_000,
    ) -> None:
        super().__init__(split_fractions=split_fractions, max_misses=max_misses)
        attributes = tuple(str(a) for a in attributes)
        if (
            not attributes
            or any(a not in TEMPLATES for a in attributes)
            or len(set(attributes)) < len(attributes)
        ):
            raise ValueError(f"attributes must be distinct names from {tuple(TEMPLATES)}, got {attributes!r}")
        max_options = min(len(POOLS[a]) for a in attributes)
        if not 2 <= n_options <= max_options:
            raise ValueError(
                f"n_options must be in 2..{max_options} for attributes {attributes}, got {n_options}"
            )
        if not 0.0 <= letter_slip_prob <= 1.0:
            raise ValueError(f"letter_slip_prob must be in [0, 1], got {letter_slip_prob}")
        self.letter_slip_prob = float(letter_slip_prob)
        self.n_entities = int(n_entities)
        self.attributes = attributes
        self.n_options = int(n_options)
        self.kb_seed = int(kb_seed)
        self.kb = make_kb(self.n_entities, attributes, self.kb_seed)
        self._entities = sorted(self.kb)

    def facts(self) -> list[str]:
        """Every fact of the knowledge base as a rationale sentence (e.g. for inspection or pretraining)."""
        return [
            TEMPLATES[attr][1].format(e=entity, v=self.kb[entity][attr])
            for entity in self._entities
            for attr in self.attributes
        ]

    # ------------------------------------------------------------------ generation
    def _generate(self, rng: random.Random) -> Example:
        entity = rng.choice(self._entities)
        attr = rng.choice(self.attributes)
        value = self.kb[entity][attr]
        distractors = rng.sample([v for v in POOLS[attr] if v != value], self.n_options - 1)
        options = [value, *distractors]
        rng.shuffle(options)
        letter = string.ascii_uppercase[options.index(value)]
        listing = " ".join(f"({string.ascii_uppercase[i]}) {opt}" for i, opt in enumerate(options))
        prompt = f"{TEMPLATES[attr][0].format(e=entity)}\n{listing}{ANSWER_SUFFIX}"
        meta: dict[str, Any] = {
            "entity": entity,
            "attribute": attr,
            "value": value,
            "options": options,
            "answer": letter,
        }
        return Example(prompt=prompt, gold=self._render(entity, attr, value, letter), meta=meta)

    @staticmethod
    def _render(entity: str, attr: str, value: str, letter: str) -> str:
        return f" {TEMPLATES[attr][1].format(e=entity, v=value)} {ANSWER_PREFIX} ({letter})."

    # ------------------------------------------------------------------ verifier side
    def score(self, example: Example, response: str) -> float:
        """1.0 iff the letter of the first "The answer is (X)" is the right one (later text is ignored)."""
        match = _ANSWER_RE.search(response)
        return float(match is not None and match.group(1) == example.meta["answer"])

    def corrupt(self, example: Example, rng: random.Random) -> str:
        """A wrong option, with the rationale stating that wrong option's value (or, with probability
        ``letter_slip_prob``, the correct rationale followed by a wrong letter)."""
        meta = example.meta
        options = list(meta["options"])
        wrong = rng.choice([i for i, opt in enumerate(options) if opt != meta["value"]])
        letter = string.ascii_uppercase[wrong]
        if self.letter_slip_prob > 0 and rng.random() < self.letter_slip_prob:
            return self._render(meta["entity"], meta["attribute"], meta["value"], letter)
        return self._render(meta["entity"], meta["attribute"], options[wrong], letter)

    def _rationale_re(self, attr: str) -> re.Pattern[str]:
        template = TEMPLATES[attr][1]
        pattern = re.escape(template).replace(r"\{e\}", "(?P<e>.+?)").replace(r"\{v\}", "(?P<v>.+?)")
        # Anchored at the start: the rationale is the response's first sentence, as in gold. The answer
        # statement is optional so that truncated responses can still be completed.
        return re.compile(r"\s*" + pattern + r"(?:\s*" + ANSWER_PREFIX + r"\s*\((?P<l>[A-Z])\))?")

    def minimal_fix(self, example: Example, response: str) -> str | None:
        """Fix the rationale's entity/value if wrong, then the letter; text before the first error is kept
        verbatim, a missing or garbled answer statement is (re)written and text after it is dropped. A response
        that is only the answer statement (an instruct model's "The answer is (B).") gets its letter fixed.
        None if neither the rationale sentence nor a leading answer statement parses."""
        if self.score(example, response) == 1.0:
            return response
        meta = example.meta
        match = self._rationale_re(meta["attribute"]).match(response)
        if match is None:
            answer = _ANSWER_RE.search(response)
            if answer is None or response[: answer.start()].strip():
                return None  # text the verifier cannot check comes before the answer
            return f"{response[: answer.start(1)]}{meta['answer']})."
        parts = [response[: match.start("e")]]
        parts.append(match.group("e") if match.group("e") == meta["entity"] else meta["entity"])
        parts.append(response[match.end("e") : match.start("v")])
        parts.append(match.group("v") if match.group("v") == meta["value"] else meta["value"])
        if match.group("l") is None:
            parts.append(f". {ANSWER_PREFIX} ({meta['answer']}).")
        else:
            parts.append(response[match.end("v") : match.start("l")])
            parts.append(f"{meta['answer']}).")
        return "".join(parts)

    def max_gold_chars(self) -> int:
        longest_entity = max(len(e) for e in self._entities)
        longest = max(
            len(TEMPLATES[a][1].format(e="", v="")) + longest_entity + max(len(v) for v in POOLS[a])
            for a in self.attributes
        )
        return 1 + longest + len(f" {ANSWER_PREFIX} (X).")

    def __repr__(self) -> str:
        return (
            f"QATask(n_entities={self.n_entities}, attributes={self.attributes!r}, "
            f"n_options={self.n_options}, kb_seed={self.kb_seed}, letter_slip_prob={self.letter_slip_prob})"
        )
