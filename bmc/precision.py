"""The trainer's precision, as every computation outside ``fit`` applies it.

Lightning accepts ``trainer.precision`` as an int (16, 32, 64), an alias (``"16"``, ``"bf16"``, ``"32"``,
``"64"``) or one of its unified strings, and maps each to the unified one (``bf16`` is ``bf16-mixed``, 16 is
``16-mixed``). :func:`resolve_precision` normalises through that same mapping, once, into a :class:`Precision`,
so that the reference precompute, sampling, evaluation and the local judges and editors compute as training
does, whatever spelling the config uses:

- ``16-mixed`` / ``bf16-mixed``: the weights as loaded, the forward under autocast to the half dtype;
- ``16-true`` / ``bf16-true`` / ``64-true``: the weights cast to that dtype (Lightning casts the module at
  ``fit``) and new tensors created in it during the forward, no autocast;
- ``32-true`` (Lightning's default): the weights as loaded, no autocast;
- ``transformer-engine`` / ``transformer-engine-float16``: the weights cast to bfloat16 / float16 and
  autocast to it, what Lightning runs the operations outside Transformer Engine's FP8 layers in (the FP8
  layers themselves exist only inside ``fit``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

import torch
from lightning_fabric.connector import _convert_precision_to_unified_args
from lightning_fabric.plugins.precision.precision import (
    _PRECISION_INPUT_INT,
    _PRECISION_INPUT_STR,
    _PRECISION_INPUT_STR_ALIAS,
)

#: every value Lightning accepts for ``precision``, as its own error message lists them
ACCEPTED: tuple[Any, ...] = get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_INT) + get_args(
    _PRECISION_INPUT_STR_ALIAS
)

#: Lightning's unified precision -> (autocast dtype, weights dtype); None: no autocast / the weights as loaded
_RULES: dict[str, tuple[torch.dtype | None, torch.dtype | None]] = {
    "32-true": (None, None),
    "64-true": (None, torch.float64),
    "16-mixed": (torch.float16, None),
    "bf16-mixed": (torch.bfloat16, None),
    "16-true": (None, torch.float16),
    "bf16-true": (None, torch.bfloat16),
    "transformer-engine": (torch.bfloat16, torch.bfloat16),
    "transformer-engine-float16": (torch.float16, torch.float16),
}


@dataclass(frozen=True)
class Precision:
    """A precision as Lightning trains in it: ``name``, its unified string (``bf16-mixed`` for ``bf16``);
    ``autocast_dtype``, the dtype the forward autocasts to (None: no autocast); ``weights_dtype``, the dtype
    Lightning casts the model to (None: it leaves the weights as loaded)."""

    name: str
    autocast_dtype: torch.dtype | None
    weights_dtype: torch.dtype | None

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype a model loaded in float32 computes in: what a local model loads in by default."""
        return self.autocast_dtype or self.weights_dtype or torch.float32

    def convert(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` cast to :attr:`weights_dtype` in place (nothing to do without one), as Lightning's
        ``convert_module`` casts it at ``fit``: the weights before training are then the ones training starts
        from, and a second cast at ``fit`` changes nothing."""
        return model.to(self.weights_dtype) if self.weights_dtype is not None else model

    def forward_context(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The context a forward on ``device`` runs in, as Lightning's precision plugin runs the training
        forward: autocast without its weight cache, and new tensors in the weights' dtype where the weights
        are cast. ``16-mixed`` autocasts to bfloat16 on the CPU, as Lightning trains it there."""
        return _forward_context(self, torch.device(device))

    def key_fields(self) -> dict[str, str]:
        """What a cache key of values computed under this precision holds of it: nothing for ``32-true``, the
        way everything outside ``fit`` computed before the precision rule, so that entries made then stay
        valid; the unified name otherwise."""
        return {} if self.name == "32-true" else {"precision": self.name}


@contextlib.contextmanager
def _forward_context(precision: Precision, device: torch.device) -> Iterator[None]:
    autocast = precision.autocast_dtype
    if precision.name == "16-mixed" and device.type == "cpu":
        autocast = torch.bfloat16
    default_dtype = torch.get_default_dtype()
    try:
        if precision.weights_dtype is not None:
            torch.set_default_dtype(precision.weights_dtype)
        with torch.autocast(device.type, dtype=autocast, cache_enabled=False, enabled=autocast is not None):
            yield
    finally:
        torch.set_default_dtype(default_dtype)


def resolve_precision(value: Any) -> Precision:
    """The :class:`Precision` of a ``trainer.precision`` value, by Lightning's own mapping of its spellings
    (None is its default, ``32-true``). A value Lightning does not accept raises ValueError naming those it
    does."""
    try:
        with warnings.catch_warnings():
            # the alias warning ("16", "bf16"): the Trainer gives it once; this runs once per stage
            warnings.simplefilter("ignore")
            name = _convert_precision_to_unified_args(value) or "32-true"
    except ValueError:
        name = None
    if name not in _RULES:
        raise ValueError(f"trainer.precision={value!r} is not a precision Lightning accepts: one of {list(ACCEPTED)}")
    return Precision(name, *_RULES[name])


#: Lightning's default precision: the weights as loaded, no autocast
DEFAULT_PRECISION = resolve_precision("32-true")
