"""On-disk cache for expensive stages (SFT checkpoints, evaluations, tokenized data).

A stage's key is a hash of everything that determines its output, so runs and sweep jobs with the same
inputs share one entry, and any change to an input makes a new one. An entry is built by one process at
a time: the ranks of a multi-process run and parallel sweep jobs wait for the first to finish, then read it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bmc.digest import folder_digest

log = logging.getLogger(__name__)

_COMPLETE = "_COMPLETE"


def cache_key(payload: Any) -> str:
    """A short stable hash of a JSON-serialisable payload (dict key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_fingerprint(path: str | os.PathLike, revision: str | None = None) -> dict[str, Any]:
    """What identifies a model checkpoint in cache keys: a local folder by the sha256 of its model files'
    contents (:func:`bmc.digest.folder_digest`), so that a checkpoint rewritten in place (an iterative round) is
    a new key whatever its file sizes and dates, and a byte-identical copy elsewhere is the same key; a hub id,
    which is not a local folder, by the commit its ``revision`` resolves to (:func:`hub_commit`), so that a repo
    pushed to is a new key too."""
    folder = Path(path)
    if not folder.is_dir():
        if not _is_repo_id(str(path)):  # no folder and no hub id: nothing to read, and loading it will fail
            return {"path": str(path)}
        return {"hub": str(path), "commit": hub_commit(str(path), revision)}
    return {"sha256": folder_digest(folder)}


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit of the hub repo ``repo_id`` at ``revision`` (a branch, tag or commit; None: the default
    branch) that ``from_pretrained`` loads: the hub's current one, or with ``HF_HUB_OFFLINE=1`` the one in the
    local cache. It is the name of the snapshot folder that the repo's ``config.json`` is downloaded into."""
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(repo_id, "config.json", revision=revision)
    except Exception as error:  # offline and not cached, unknown repo, no access: name what was asked for
        raise ValueError(
            f"model {repo_id!r} (revision {revision or 'main'}) is not a local folder and does not resolve to a hub "
            f"commit: {type(error).__name__}: {error}"
        ) from error
    return Path(config).parent.name


def weights_fingerprint(model: torch.nn.Module) -> str:
    """What identifies a model held in memory (a trained policy not yet saved) in cache keys: a hash of every
    tensor of its state dict (name, dtype, shape and bytes), so equal weights give one key, however made."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        # the bytes as uint8: bfloat16 has no numpy dtype
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; the kernel releases it when the holder dies, so a killed
    builder never blocks the next run."""
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish %s", lock_path.with_suffix(""))
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_hit(root: str | os.PathLike, stage: str, payload: Any) -> Path | None:
    """The complete cache folder of ``stage`` for ``payload``, or None where none is written yet."""
    target = Path(root) / stage / cache_key(payload)
    if not (target / _COMPLETE).exists():
        return None
    log.info("cache hit: %s %s", stage, target)
    return target


def cached_dir(root: str | os.PathLike, stage: str, payload: Any, build: Callable[[Path], None]) -> Path:
    """Return the cache folder of ``stage`` for ``payload``, building it with ``build(folder)`` on a miss.

    The folder is built under a temporary name and renamed into place only once ``build`` returns, so a
    killed run never leaves a half-written entry that a later run would trust. Building holds a lock
    (``<key>.lock`` beside the entry): concurrent processes asking for the same entry build it once.
    """
    hit = cache_hit(root, stage, payload)
    if hit is not None:
        return hit
    target = Path(root) / stage / cache_key(payload)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f"{target.name}.lock"):
        if (target / _COMPLETE).exists():  # built by the process that held the lock before us
            log.info("cache hit: %s %s", stage, target)
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(staging)
            (staging / "cache_payload.json").write_text(json.dumps(payload, sort_keys=True, indent=1, default=str))
            (staging / _COMPLETE).touch()
            shutil.rmtree(target, ignore_errors=True)  # an incomplete entry from before the lock existed
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("cache write: %s %s", stage, target)
    return target
