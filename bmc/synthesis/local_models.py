"""The models that judges and editors load in this process, a reward model (judge kind ``reward_model``) or a
local chat backend (kind ``local``): the dtype they load in.

A local model loads in its config's ``dtype`` where one is set; left unset (null, the default) it follows the
trainer's precision (:attr:`bmc.precision.Precision.compute_dtype`: bfloat16 under ``bf16-mixed`` and
``bf16-true``, float32 under ``32-true``), so that judges and editors compute in the precision the policy
trains in. The builders (:func:`bmc.synthesis.judges.build_judge`, :func:`bmc.synthesis.chat.build_chat_backend`)
load by :func:`model_dtype`; what is keyed by a judge's or editor's config (its cached judgments and edits)
is keyed by :func:`with_model_dtypes`, the dtype it actually loads in. The device, the trainer's on this
process's rank, is passed to the builders by the stages (:func:`bmc.devices.accelerator_device`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bmc.precision import Precision

#: the ``kind`` of the config blocks that load a model in this process
LOCAL_MODEL_KINDS = ("reward_model", "local")


def model_dtype(dtype: str | None, precision: Precision) -> str:
    """A local model's dtype: its own ``dtype`` setting, else ``precision``'s compute dtype (``"bfloat16"``)."""
    return dtype if dtype is not None else str(precision.compute_dtype).removeprefix("torch.")


def with_model_dtypes(cfg: Mapping[str, Any], precision: Precision) -> dict[str, Any]:
    """A judge or editor config with the ``dtype`` of each model it loads here (its own block's, its
    ``backend`` block's) set by :func:`model_dtype`; other blocks unchanged."""
    options = dict(cfg)
    if options.get("kind") in LOCAL_MODEL_KINDS:
        options["dtype"] = model_dtype(options.get("dtype"), precision)
    if isinstance(options.get("backend"), Mapping):
        options["backend"] = with_model_dtypes(options["backend"], precision)
    return options
