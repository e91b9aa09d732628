"""Holm–Bonferroni: which of a family of m tests reject at α when any one rejecting by chance counts as an error.

Holm (1979), "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6, 65–70. With the
p-values sorted ``p_(1) ≤ … ≤ p_(m)``, reject ``H_(1), …, H_(k)`` for the largest k such that
``p_(j) ≤ α / (m − j + 1)`` for every j ≤ k. Equivalently, each test's adjusted p-value

    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j))

is compared with α. This bounds the family-wise error rate by α under any dependence between the tests (the
cells of one report table share the baseline row, so they are dependent), and rejects at least what
Bonferroni (``m · p ≤ α``) does. The smallest threshold, the one the smallest p-value must pass, is α / m.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given: a test rejects at α when its adjusted p is ≤ α."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    # the running maximum makes the decisions step down: a test never rejects when a smaller p did not
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()
