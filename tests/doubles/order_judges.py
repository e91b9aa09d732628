"""Judges that prefer by a fixed order of the texts (with a bias towards slot A), or always slot A: verdicts known in
advance."""

from __future__ import annotations

from collections.abc import Sequence

from bmc.synthesis.judges import Judge


class OrderJudge(Judge):
    """Knows each response's quality; slot A gets ``slot_a_bonus`` extra (a position bias)."""

    def __init__(self, quality: dict[str, float], slot_a_bonus: float = 0.0) -> None:
        super().__init__()
        self.quality, self.bonus = quality, slot_a_bonus

    def _verdicts(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[int]:
        diffs = [self.quality[a] + self.bonus - self.quality[b] for a, b in pairs]
        return [(d > 0) - (d < 0) for d in diffs]


class AlwaysFirst(Judge):
    """Pure position bias: whatever sits in slot A wins."""

    def _verdicts(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[int]:
        return [1] * len(pairs)
