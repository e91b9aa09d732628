"""Content digests of checkpoint folders: a sha256 of the files that define the model, so that cache keys
follow what a folder holds, not its name, sizes or dates.

The files: every regular file at the folder's top level (what ``from_pretrained`` reads: weights, configs,
tokenizer files, adapters, remote code), except hidden files, Markdown (model cards) and a trainer's resume
state (:data:`NOT_MODEL`). Including everything else errs on the safe side: a file that does not change the
model at worst costs a new key, while one left out that does would hand a changed model the old key.

Reading a large folder takes a while, so each file's digest is recorded under :func:`digest_dir`, keyed by
the file's name, size, modification time and inode change time (``st_ctime_ns``), and read again only when
one of these changed. The change time is what a rewrite cannot keep: a file rewritten in place with its old
size and its old modification time put back (``os.utime``) still gets a new change time, so it is read again.
A byte-identical copy with new times is read once and gets the original's digest. A file changed less than
:data:`RACY_NS` before it was read is not recorded (read again next time): a change within the same tick of
the filesystem's clock could leave all four unchanged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: file name patterns of a checkpoint folder that do not define the model: model cards and the resume state
#: of a ``transformers.Trainer`` checkpoint (the optimizer's alone is twice the weights' size)
NOT_MODEL = (
    "*.md",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "training_args.bin",
)
#: the environment variable that moves the digest records (default ``$XDG_CACHE_HOME/bmc/digests``)
DIGEST_DIR_ENV = "BMC_DIGEST_DIR"
#: how recent a file's change time may be for its digest to be recorded: above the tick of the change-time clock
#: (a few ms on local disks, up to a second or two where a network filesystem rounds times)
RACY_NS = 2_000_000_000
_CHUNK = 1 << 20  # bytes read at a time: a multi-GB shard is never held in memory


def digest_dir() -> Path:
    """Where the digest records are kept: ``$BMC_DIGEST_DIR``, else ``bmc/digests`` under the user's cache
    (``$XDG_CACHE_HOME``, default ``~/.cache``). Not inside the checkpoint: it may be read-only (a shared model
    store), and a file added there would be uploaded with it (``export.push_to_hub``). Not under the project's
    cache: the digest is a fact about a folder on this machine, and the keys are made where no config is at
    hand (a sampler's identity, a judge's key)."""
    if os.environ.get(DIGEST_DIR_ENV):
        return Path(os.environ[DIGEST_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bmc" / "digests"


def model_files(folder: Path) -> list[Path]:
    """The files of ``folder`` whose contents make its digest (module docstring), sorted by name."""
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and not f.name.startswith(".") and not any(fnmatch.fnmatch(f.name, p) for p in NOT_MODEL)
    )


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digest(folder: str | os.PathLike) -> str:
    """The sha256 of ``folder``'s model files: their names and each one's content digest. A file whose name,
    size, modification and change times match the record is not read again; the record is rewritten when it
    no longer matches the folder."""
    folder = Path(folder).resolve()
    record_path = digest_dir() / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:32]}.json"
    known = _read_record(record_path)
    started = time.time_ns()  # before any stat: a file changed after this has a later change time
    listing: list[tuple[str, str]] = []  # (name, sha256) of every model file: what the digest is made of
    recorded: dict[str, list] = {}
    for path in model_files(folder):
        stat = path.stat()
        state = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
        entry = known.get(path.name)
        if entry is None or entry[:3] != state:
            log.info("hashing %s (%.1f MB)", path, stat.st_size / 1e6)
            entry = [*state, file_sha256(path)]
        listing.append((path.name, entry[3]))
        if stat.st_ctime_ns < started - RACY_NS:
            recorded[path.name] = entry
    if recorded != known:
        _write_record(record_path, {"folder": str(folder), "files": recorded})
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _read_record(path: Path) -> dict[str, list]:
    """The recorded ``{name: [size, mtime_ns, ctime_ns, sha256]}`` of a folder; none (all read again) when the
    record is missing or unreadable."""
    try:
        return json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_record(path: Path, record: dict) -> None:
    """Write a record atomically (ranks of one run may write the same one at once); where the folder cannot be
    written, the digests are not kept and the files are read again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump(record, handle)
        os.replace(handle.name, path)
    except OSError as error:
        log.warning("could not record checkpoint digests in %s (%s): large folders are read again each run; set "
                    "%s to a writable folder", path.parent, error, DIGEST_DIR_ENV)  # fmt: skip
