"""FSDP2 (``torch.distributed.fsdp.fully_shard``) of a policy, as Lightning's ``ModelParallelStrategy`` expects it
applied in ``configure_model``: each decoder layer its own shard unit, then the whole model.

Parameters become DTensors holding this rank's shard; a layer's forward gathers its full weights from every
rank and frees them again after it. Under a bfloat16 precision the gathered weights are cast to bfloat16 and
gradients reduced in float32 (:class:`MixedPrecisionPolicy`), while the sharded weights the optimizer steps
stay in the dtype Lightning left them in (float32 under ``bf16-mixed``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType
from typing import Any, TypeVar

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from bmc.models import decoder_layers
from bmc.precision import Precision

T = TypeVar("T")
#: the method of a sharded policy that runs a function as its forward (:func:`as_root_forward`)
_ROOT_FORWARD = "_bmc_root_forward"


def mixed_precision_policy(precision: Precision) -> MixedPrecisionPolicy:
    """FSDP2's mixed precision for a trainer precision: bfloat16 compute and float32 gradient reduction where
    the precision computes in bfloat16 (``bf16-mixed``, ``bf16-true``), else FSDP2's default (no casts)."""
    if precision.compute_dtype == torch.bfloat16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def fully_shard_model(model: torch.nn.Module, mesh: DeviceMesh, precision: Precision) -> int:
    """``fully_shard`` each decoder layer of ``model`` (:func:`bmc.models.decoder_layers`), then ``model`` itself
    (its embeddings, final norm and LM head), over the ranks of ``mesh``; returns how many layers.

    Per layer, so that one layer's full weights at a time exist on a rank (a single unit would gather the whole
    model for every forward). A model that names no decoder layer is sharded as one unit."""
    policy = mixed_precision_policy(precision)
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    setattr(model, _ROOT_FORWARD, MethodType(_call, model))
    register_fsdp_forward_method(model, _ROOT_FORWARD)
    return len(layers)


def as_root_forward(model: torch.nn.Module, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, run as a forward of ``model``: where ``fully_shard_model`` sharded it, FSDP2's hooks around
    it gather the shards of ``model``'s own parameters first (embeddings, final norm, LM head: those of no layer)
    and set up their gradients' reduction after the backward, as ``model(...)`` does; else just ``fn(*args)``.

    For what calls parts of the model apart rather than its ``forward``: the chunked LM head of
    :mod:`bmc.logprobs` runs the decoder stack and then the head, which outside a forward would meet sharded
    weights (``model=hf`` on trainer=fsdp2)."""
    root_forward = getattr(model, _ROOT_FORWARD, None)
    return root_forward(fn, *args) if root_forward is not None else fn(*args)


def _call(model: torch.nn.Module, fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def sharded_compute_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype FSDP2 casts ``model``'s gathered weights to for its forward (its MixedPrecisionPolicy's
    ``param_dtype``), whatever dtype the shards are stored in; None where no part of ``model`` is sharded with a
    cast. The policy is kept in FSDP2's private per-module state, read here alone."""
    dtypes = [m._get_fsdp_state()._mp_policy.param_dtype for m in model.modules() if isinstance(m, FSDPModule)]
    return next((dtype for dtype in dtypes if dtype is not None), None)
