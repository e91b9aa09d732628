"""What identifies the models of the synthesis stages in their cache keys (samples, judgments, edits, win
rates): what the model holds, not what it is called.

- A local model (a reward-model judge's ``path``, a ``local`` chat backend's ``path``) is keyed by
  :func:`bmc.cache.checkpoint_fingerprint`: its folder's contents, or a hub id's commit.
- A served model (the ``openai`` sampler and chat backends) cannot be asked what it holds: the OpenAI API has
  no field for it, and vLLM's ``/v1/models`` fills ``created`` with the request's time and ``root`` with a path.
  It is keyed by ``weights``, the folder the server serves, where the config names it (its contents, as a
  local model); else by the served name and the config's ``revision``, a string the user changes when the
  weights behind the name change. With neither, the name alone keys it and a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bmc.cache import checkpoint_fingerprint

log = logging.getLogger(__name__)

#: the options of the ``openai`` backends that key the served model and are never sent to the server
SERVED_KEY_OPTIONS = ("revision", "weights")


def served_model_key(model: str, revision: str | None, weights: str | None, where: str) -> dict[str, Any]:
    """The cache-key entries of the model a server serves under the name ``model`` (module docstring);
    ``where`` names the config block in the warning. Without ``revision`` and ``weights`` the entries are the
    name alone, as before these options existed, so entries cached then stay valid."""
    if weights:
        return {"weights": checkpoint_fingerprint(weights)}
    if revision is not None:
        return {"model": model, "revision": revision}
    log.warning(
        "%s: the served model %r is keyed by its name alone, and nothing a server reports identifies the weights "
        "behind a name (vLLM's /v1/models gives the request's time as `created` and a path as `root`): results "
        "cached for another checkpoint served as %r would be reused. Set %s.revision to a string naming these "
        "weights (a step, a commit), or %s.weights to the folder the server serves (keyed by its contents)",
        where, model, model, where, where,
    )  # fmt: skip
    return {"model": model}


def chat_backend_key(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A chat backend's config (``conf/chat_backend/*.yaml``) as it goes into cache keys: a ``local`` model's
    ``path`` replaced by its checkpoint's fingerprint, an ``openai`` one's ``model``, ``revision`` and
    ``weights`` by :func:`served_model_key`; the other options as they are."""
    key = dict(cfg)
    if key.get("kind") == "local" and key.get("path"):
        key["path"] = checkpoint_fingerprint(key["path"], key.get("revision"))
    elif key.get("kind") == "openai":
        served = {option: key.pop(option, None) for option in SERVED_KEY_OPTIONS}
        key.update(served_model_key(key.pop("model", None), served["revision"], served["weights"], where))
    return key


def model_config_key(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A judge's or an editor's config (``conf/judge/*.yaml``, ``conf/editor/*.yaml``, named ``where``) as it
    goes into cache keys: a reward model's ``path`` replaced by its checkpoint's fingerprint and a ``backend``
    block by :func:`chat_backend_key`; the other options as they are."""
    key = dict(cfg)
    if key.get("kind") == "reward_model" and key.get("path"):
        key["path"] = checkpoint_fingerprint(key["path"], key.get("revision"))
    if isinstance(key.get("backend"), Mapping):
        key["backend"] = chat_backend_key(key["backend"], f"{where}.backend")
    return key
