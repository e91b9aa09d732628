"""split_pairs: disjoint, seeded, and holding out whole prompts."""

from __future__ import annotations

import pytest

from bmc.data.sources import split_pairs


def test_split_pairs_is_disjoint_and_seeded() -> None:
    pairs = [{"prompt": str(i)} for i in range(20)]
    train, val = split_pairs(pairs, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in val}
    assert split_pairs(pairs, 0.25, seed=3) == (train, val)


def test_split_pairs_holds_out_whole_prompts_and_keeps_the_seeded_pair_split_of_one_pair_per_prompt() -> None:
    import random

    pairs = [{"prompt": f"p{i // 2}", "chosen": f"c{i}"} for i in range(20)]  # two pairs per prompt
    train, val = split_pairs(pairs, 0.25, seed=3)
    assert len(train) + len(val) == 20 and len(val) == 6  # whole prompts until at least 5 pairs are held out
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in val}
    single = [{"prompt": str(i)} for i in range(20)]
    order = list(range(20))
    random.Random(3).shuffle(order)  # the split before prompts were grouped: a shuffle of the pairs
    assert split_pairs(single, 0.25, seed=3) == ([single[i] for i in order[5:]], [single[i] for i in order[:5]])
    with pytest.raises(ValueError, match="at least 2 prompts"):
        split_pairs([{"prompt": "same"}] * 4, 0.25, seed=0)
