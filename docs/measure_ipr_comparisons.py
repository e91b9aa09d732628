"""Judge comparisons per prompt of IPR's full ranking (binary insertion, ``data.ranking=full``) against its best/worst
search (``best_worst``, 2N - 3), the numbers in bmc/synthesis/ipr.py's docstring.

    python docs/measure_ipr_comparisons.py [--n 4 5 8] [--draws 2000]

Distinct qualities: the exact mean over every sampling order of N completions. Ties: a verifier's (each completion
right or wrong with probability 1/2), the mean over ``--draws`` seeded draws. Every comparison is two judge calls.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bmc

from bmc.synthesis.ipr import rank, rank_full  # noqa: E402
from bmc.synthesis.judges import Judge  # noqa: E402


class QualityJudge(Judge):
    """Prefers the higher quality; equal qualities tie."""

    def __init__(self, quality: dict[str, float]) -> None:
        super().__init__()
        self.quality = quality

    def _verdicts(self, prompt: str, pairs: Sequence[tuple[str, str]]) -> list[int]:
        return [(self.quality[a] > self.quality[b]) - (self.quality[a] < self.quality[b]) for a, b in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[4, 5, 8])
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    for n in args.n:
        texts = [f"r{i}" for i in range(n)]
        judge = QualityJudge({t: i for i, t in enumerate(texts)})
        orders = [list(order) for order in itertools.permutations(texts)]
        full = statistics.mean(rank_full(judge, "x", order).comparisons for order in orders)
        best_worst = statistics.mean(rank(judge, "x", order).comparisons for order in orders)
        rng = random.Random(0)
        tied_full, tied_best_worst = [], []
        for _ in range(args.draws):
            verifier = QualityJudge({t: float(rng.random() < 0.5) for t in texts})
            tied_full.append(rank_full(verifier, "x", texts).comparisons)
            tied_best_worst.append(rank(verifier, "x", texts).comparisons)
        print(f"N={n}: distinct qualities: full {full:.2f} vs best/worst {best_worst:.2f}; verifier ties: full "
              f"{statistics.mean(tied_full):.2f} vs best/worst {statistics.mean(tied_best_worst):.2f} comparisons")


if __name__ == "__main__":
    main()
