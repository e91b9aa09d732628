"""A causal LM double that ignores the shared-prompt packing, as an architecture that rebuilds its own positions
and mask would: the rejected response then sits at the wrong positions, or sees the chosen response."""

from __future__ import annotations

from typing import Any

import torch


class IgnoresPacking(torch.nn.Module):
    """``inner`` called without the position ids (``positions``) and/or with a causal mask in place of a 4D one
    (``mask``); 2D padding masks pass through, so plain rows score as ``inner`` scores them."""

    def __init__(self, inner: torch.nn.Module, positions: bool = True, mask: bool = True) -> None:
        super().__init__()
        self.inner, self.positions, self.mask = inner, positions, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
        if self.positions:
            kwargs.pop("position_ids", None)
        if self.mask and attention_mask.dim() == 4:
            attention_mask = None
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
