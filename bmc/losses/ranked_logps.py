"""The inputs of a listwise loss: B ranked lists of K responses each (METHODS.md section 6).

A list holds one prompt's responses best first, τ(1) first. Tied responses share a tie block: ``ranks`` gives each
response the index of its block (0 for the best block), non-decreasing along a list. Lists of different lengths
share one (B, K) tensor, K the longest list of the batch; ``valid`` marks the real entries, the rest is padding
whose values no loss reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from bmc.losses.registry import SequenceLogps


@dataclass
class RankedLogps:
    """Per-response sequence scores of B ranked lists, each tensor (B, K).

    ``logps``: the policy's scores lp(y) (BMC-weighted S(y) with token weighting); ``tokens``: unweighted
    response token counts n(y); ``ranks``: tie-block index, 0 = best; ``valid``: False on padding; ``ref``: the
    reference's scores, None for a reference-free loss; ``scores``: the data's grades ψ (a reward model's scores,
    a layout's ratings), None when the data gives a ranking only.
    """

    logps: Tensor
    tokens: Tensor
    ranks: Tensor
    valid: Tensor
    ref: Tensor | None = None
    scores: Tensor | None = None

    def __post_init__(self) -> None:
        shapes = {name: tuple(t.shape) for name, t in self._tensors().items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"RankedLogps: tensors of different shapes {shapes}")
        if self.valid.shape[-1] < 2 or not bool(self.valid[:, :2].all()):
            raise ValueError("RankedLogps: every list needs at least 2 responses, first in each row")

    def _tensors(self) -> dict[str, Tensor]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: t for name, t in fields.items() if t is not None}

    def logratios(self) -> Tensor:
        """(B, K) r = lp(y) − ref(y), 0 on padding; raises when the reference scores were not computed."""
        if self.ref is None:
            raise ValueError("this listwise loss needs reference log-probs but RankedLogps.ref is None")
        return torch.where(self.valid, self.logps - self.ref, 0.0)

    def sizes(self) -> Tensor:
        """(B,) the number of responses K_b of each list."""
        return self.valid.sum(-1)

    def last(self) -> Tensor:
        """(B,) the column of each list's last (worst) response."""
        return self.sizes() - 1

    def grades(self) -> Tensor:
        """(B, K) ψ: the data's scores, else from the ranking, the number of responses ranked strictly below
        (K − position without ties; a tie block shares one grade). 0 on padding."""
        if self.scores is not None:
            return torch.where(self.valid, self.scores, 0.0)
        below = (self.ranks[:, None, :] > self.ranks[:, :, None]) & self.valid[:, None, :]
        return torch.where(self.valid, below.sum(-1).to(self.logps.dtype), 0.0)

    def best_worst(self) -> SequenceLogps:
        """Each list's best (τ(1)) and worst response as a pair: what regularizers and pair metrics read."""
        rows, last = torch.arange(self.logps.shape[0], device=self.logps.device), self.last()

        def pick(t: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
            return (None, None) if t is None else (t[:, 0], t[rows, last])

        (chosen, rejected), (n_w, n_l), (ref_w, ref_l) = pick(self.logps), pick(self.tokens), pick(self.ref)
        return SequenceLogps(chosen, rejected, n_w, n_l, ref_w, ref_l)

    def with_best(self, chosen: Tensor) -> RankedLogps:
        """The lists with the best response's score replaced by ``chosen`` (B,): a regularizer acting inside the
        logit (``dpop``) lowers τ(1)'s score as it lowers y_w's in a pair."""
        logps = torch.cat([chosen[:, None], self.logps[:, 1:]], dim=1)
        return dataclasses.replace(self, logps=logps)


def ranked_from_rows(
    list_index: Tensor,
    ranks: Tensor,
    logps: Tensor,
    tokens: Tensor,
    ref: Tensor | None = None,
    scores: Tensor | None = None,
) -> RankedLogps:
    """:class:`RankedLogps` from (N,) per-row values of a batch of lists laid out list after list, each list's rows
    best first, ``list_index`` naming each row's list (0, 0, 0, 1, 1, ...). Gradients flow back to the rows."""
    sizes = torch.bincount(list_index)
    starts = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(list_index.shape[0], device=list_index.device) - starts[list_index]
    shape, where = (sizes.shape[0], int(sizes.max())), (list_index, position)

    def padded(values: Tensor | None) -> Tensor | None:
        return None if values is None else values.new_zeros(shape).index_put(where, values)

    valid = padded(torch.ones_like(list_index, dtype=torch.bool))
    return RankedLogps(padded(logps), padded(tokens), padded(ranks), valid, padded(ref), padded(scores))
