"""A model folder's content digest for cache keys: a folder rewritten in place with its sizes and dates kept
gets a new key, a byte-identical copy the same key, and the recorded digests are reused and kept outside it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bmc import digest
from bmc.cache import checkpoint_fingerprint

# ------------------------------------------------------------------ checkpoint folders: keyed by their contents


def _write_model(folder: Path, value: float) -> None:
    """A checkpoint folder of fixed file sizes: the weights' bytes depend on ``value``, their size does not."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((8, 8), value)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """The files whose bytes are read to digest them, by name; digests of files written a moment ago are
    recorded too (a test's files are never older than the racy-time margin)."""
    counts: Counter = Counter()
    real = digest.file_sha256

    def counting(path: Path) -> str:
        counts[path.name] += 1
        return real(path)

    monkeypatch.setattr(digest, "file_sha256", counting)
    monkeypatch.setattr(digest, "RACY_NS", 0)
    return counts


def test_a_folder_rewritten_in_place_with_its_sizes_and_dates_kept_gets_a_new_key(
    tmp_path: Path, reads: Counter
) -> None:
    folder = tmp_path / "policy"
    _write_model(folder, 0.0)
    weights = folder / "model.safetensors"
    old = weights.stat()

    def name_size_mtime() -> list[tuple[str, int, int]]:  # what keyed a folder before content keys
        return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())]

    listing = name_size_mtime()
    first = checkpoint_fingerprint(folder)
    assert reads == {"model.safetensors": 1, "config.json": 1, "tokenizer.json": 1}
    time.sleep(0.05)  # past the tick of the change-time clock, as any later rewrite is
    save_file({"w": torch.full((8, 8), 1.0)}, weights)  # other weights of the same size
    os.utime(weights, ns=(old.st_atime_ns, old.st_mtime_ns))  # and the old date put back
    assert name_size_mtime() == listing  # the old key could not tell
    second = checkpoint_fingerprint(folder)
    assert second != first
    assert reads["model.safetensors"] == 2 and reads["config.json"] == reads["tokenizer.json"] == 1  # only it
    _write_model(tmp_path / "fresh", 1.0)
    assert checkpoint_fingerprint(tmp_path / "fresh") == second  # the key of what it now holds


def test_a_byte_identical_copy_with_new_dates_gets_the_same_key(tmp_path: Path, reads: Counter) -> None:
    _write_model(tmp_path / "policy", 0.5)
    original = checkpoint_fingerprint(tmp_path / "policy")
    assert set(original) == {"sha256"} and len(original["sha256"]) == 64
    time.sleep(0.05)
    shutil.copytree(tmp_path / "policy", tmp_path / "copy", copy_function=shutil.copyfile)  # new dates
    assert (tmp_path / "copy" / "model.safetensors").stat().st_mtime_ns != (
        tmp_path / "policy" / "model.safetensors"
    ).stat().st_mtime_ns
    assert checkpoint_fingerprint(tmp_path / "copy") == original
    assert checkpoint_fingerprint(tmp_path / "copy") == original
    assert reads["model.safetensors"] == 2  # the original once, the copy once


def test_the_recorded_digests_are_reused_and_kept_outside_the_folder(
    tmp_path: Path, reads: Counter, digest_records: Path
) -> None:
    folder = tmp_path / "policy"
    _write_model(folder, 0.0)
    before = sorted(p.name for p in folder.iterdir())
    key = checkpoint_fingerprint(folder)
    assert sum(reads.values()) == 3
    for _ in range(3):
        assert checkpoint_fingerprint(folder) == key
    assert sum(reads.values()) == 3  # nothing read again: the record of each file's size and times answers
    assert sorted(p.name for p in folder.iterdir()) == before  # the folder (possibly read-only) is not written
    (record,) = [p for p in digest_records.glob("*.json") if json.loads(p.read_text())["folder"] == str(folder)]
    assert sorted(json.loads(record.read_text())["files"]) == before


def test_files_that_do_not_define_the_model_do_not_change_its_key(tmp_path: Path, reads: Counter) -> None:
    """A model card, hidden files and a trainer's resume state are not read; tokenizer and adapter files are."""
    folder = tmp_path / "policy"
    _write_model(folder, 0.0)
    key = checkpoint_fingerprint(folder)
    (folder / "README.md").write_text("# a model card")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs")
    (folder / "optimizer.pt").write_bytes(b"\0" * 64)
    (folder / "rng_state_0.pth").write_bytes(b"\1" * 8)
    (folder / "trainer_state.json").write_text("{}")
    assert checkpoint_fingerprint(folder) == key
    assert set(reads) == {"model.safetensors", "config.json", "tokenizer.json"}
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    with_adapter = checkpoint_fingerprint(folder)
    assert with_adapter != key
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.1"}))
    assert checkpoint_fingerprint(folder) not in (key, with_adapter)


def test_an_unwritable_record_folder_warns_and_reads_the_files_each_time(
    tmp_path: Path, reads: Counter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _write_model(tmp_path / "policy", 0.0)
    expected = checkpoint_fingerprint(tmp_path / "policy")
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(digest.DIGEST_DIR_ENV, str(tmp_path / "a-file" / "digests"))  # cannot be made
    with caplog.at_level(logging.WARNING, logger="bmc.digest"):
        assert checkpoint_fingerprint(tmp_path / "policy") == expected
        assert checkpoint_fingerprint(tmp_path / "policy") == expected
    assert reads["model.safetensors"] == 3
    assert "could not record checkpoint digests" in caplog.text and digest.DIGEST_DIR_ENV in caplog.text


# ------------------------------------------------------------------ judges and served models


