"""The length-grouped sampler: a seeded permutation of batches of similar length."""

from __future__ import annotations

import random

import torch

from bmc.data.epoch_sampler import EpochSampler


def test_length_grouped_sampler_is_a_seeded_permutation_of_similar_length_batches() -> None:
    lengths = [random.Random(i).randint(5, 100) for i in range(1000)]
    sampler = EpochSampler(lengths, batch_size=32, lengths=lengths, seed=3, group_batches=8)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and len(sampler) == 1000
    assert order == list(EpochSampler(lengths, batch_size=32, lengths=lengths, seed=3, group_batches=8))
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order every epoch
    batches = [order[i : i + 32] for i in range(0, 1000, 32)]

    def padding(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert padding(batches) < 0.2 * padding([shuffled[i : i + 32] for i in range(0, 1000, 32)])
    maxima = [max(lengths[i] for i in b) for b in batches[:-1]]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)  # batches come in a random order
    assert len(batches[-1]) == 1000 % 32 and all(len(b) == 32 for b in batches[:-1])

    # two ranks with half the batch each: together they draw exactly the single process's batches
    ranks = [
        list(EpochSampler(lengths, batch_size=16, lengths=lengths, world_size=2, rank=r, seed=3, group_batches=8))
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 500
    for k, batch in enumerate(batches[:-1]):
        assert sorted(ranks[0][16 * k : 16 * k + 16] + ranks[1][16 * k : 16 * k + 16]) == sorted(batch)
