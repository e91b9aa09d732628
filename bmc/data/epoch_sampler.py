"""The training order of the preference stage, resumable mid-epoch and shared across ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized

import torch
from torch.utils.data import DistributedSampler


class EpochSampler(DistributedSampler):
    """The training order of the preference stage: a function of (seed, epoch) only (Lightning calls
    :meth:`set_epoch`), so a run resumed from a checkpoint sees the batches an uninterrupted run would.

    Rank ``r`` of ``world_size`` takes positions r, r + world_size, ... of that one order, so the ranks'
    batches together are the batch one process draws with ``batch_size * world_size``. With ``lengths``, the
    order groups pairs of similar length to cut padding: shuffle, cut into groups of ``group_batches`` global
    batches, sort each group by length, cut it into global batches and shuffle those (the only batch that
    may be short stays last). As a ``DistributedSampler``, Lightning never wraps it in a second one.

    :meth:`resume` makes the next pass over a given epoch start after the batches a killed run had trained on
    (:meth:`PreferenceDataModule.load_state_dict`), so a run resumed mid-epoch sees the batches an
    uninterrupted one would.
    """

    def __init__(
        self,
        dataset: Sized,
        batch_size: int,
        lengths: Sequence[int] | None = None,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        group_batches: int = 64,
    ) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.lengths = None if lengths is None else list(lengths)
        self.batch_size = batch_size
        self.global_batch = batch_size * world_size
        self.group = self.global_batch * group_batches
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, batches: int) -> None:
        """Skip the first ``batches`` batches of this rank in the next pass, if that pass is over ``epoch``."""
        self._resume = (epoch, batches)

    def __iter__(self) -> Iterator[int]:
        order = list(self._order())
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            order = order[resume[1] * self.batch_size :]
        return iter(order)

    def _order(self) -> Iterator[int]:
        if self.lengths is None:
            return super().__iter__()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.group):
            group = sorted(order[start : start + self.group], key=self.lengths.__getitem__, reverse=True)
            batches += [group[i : i + self.global_batch] for i in range(0, len(group), self.global_batch)]
        last = batches[-1:]
        shuffled = [batches[i] for i in torch.randperm(len(batches) - len(last), generator=generator).tolist()]
        order = [index for batch in shuffled + last for index in batch]
        order += order[: self.total_size - len(order)]  # as DistributedSampler: every rank gets as many
        return iter(order[self.rank : self.total_size : self.num_replicas])
