"""Stage caches are keyed by what a model holds, not by its path or name: a checkpoint rewritten in place (the next
round of an iterative experiment) gets new samples and judgments, a copy of it reuses them, and a served model
is keyed by the folder it serves or by its name and ``revision``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from bmc import digest
from bmc.cache import checkpoint_fingerprint
from bmc.data.sources import TaskData
from bmc.models import PretrainedLM, TinyLlama
from bmc.synthesis.chat import OpenAIChat, build_chat_backend
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.endpoint import OpenAIEndpoint
from bmc.synthesis.ipr import rm_pairs
from bmc.synthesis.judges import build_judge
from bmc.synthesis.model_keys import model_config_key
from bmc.synthesis.pair_sources import _rm_scores, _samples
from bmc.synthesis.sampler import OpenAISampler
from bmc.synthesize import prepare_data
from tests.conftest import save_reward_model
from tests.fake_chat_server import FakeChatServer, completions


def _save_checkpoint(folder: Path, seed: int) -> None:
    torch.manual_seed(seed)
    texts = [f" What is {i} plus {i + 3}? The answer is {2 * i + 3}." for i in range(40)]
    model, tokenizer = TinyLlama(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300).build(
        texts
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_a_checkpoint_rewritten_in_place_invalidates_the_sample_cache(make_config, tmp_path: Path) -> None:
    checkpoint = tmp_path / "policy"
    _save_checkpoint(checkpoint, seed=0)
    overrides = ["debug=default", "model=hf", f"model.path={checkpoint}", "data=sampled", "data.sampler.backend=hf",
                 "data.sampler.max_new_tokens=6"]  # fmt: skip

    def sample_entries() -> int:
        return len([p for p in (tmp_path / "cache" / "samples").iterdir() if p.is_dir()])

    first = prepare_data(make_config(*overrides))
    assert sample_entries() == 1 and first.report["completions"] == 24 * 5
    assert prepare_data(make_config(*overrides)).pairs == first.pairs and sample_entries() == 1  # a cache hit
    _save_checkpoint(checkpoint, seed=1)  # the same path, other weights
    prepare_data(make_config(*overrides))
    assert sample_entries() == 2  # new samples from the new weights, not the old ones under the old path


def test_a_pretrained_base_rewritten_in_place_is_fine_tuned_anew(make_config, tmp_path: Path) -> None:
    checkpoint = tmp_path / "base"
    _save_checkpoint(checkpoint, seed=0)
    overrides = ["debug=default", "model=hf", f"model.path={checkpoint}", "sft.enabled=true", "data=sampled",
                 "data.sampler.backend=hf", "data.sampler.max_new_tokens=6"]  # fmt: skip

    def sft_entries() -> int:
        return len(list((tmp_path / "cache" / "sft").glob("*/_COMPLETE")))

    prepare_data(make_config(*overrides))
    prepare_data(make_config(*overrides))
    assert sft_entries() == 1  # a cache hit
    _save_checkpoint(checkpoint, seed=1)  # the same path, other weights
    prepare_data(make_config(*overrides))
    assert sft_entries() == 2  # the new base is fine-tuned, not the SFT of the old one reused
    assert PretrainedLM(str(checkpoint)).spec()["weights"] == checkpoint_fingerprint(checkpoint)


def test_a_hub_id_is_keyed_by_the_commit_its_revision_resolves_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, a hub id resolves through the local Hugging Face cache (refs/<branch> -> snapshots/<commit>): the
    key names that commit, moves when the branch does, and a pinned commit keys by itself. A hub id that resolves
    nowhere is an error naming it, not a key made of the name alone."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--policy"
    old, new = "a" * 40, "b" * 40
    for commit in (old, new):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(old)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    assert checkpoint_fingerprint("org/policy") == {"hub": "org/policy", "commit": old}
    (repo / "refs" / "main").write_text(new)  # the branch moved: a pushed repo is a new key
    assert checkpoint_fingerprint("org/policy") == {"hub": "org/policy", "commit": new}
    assert checkpoint_fingerprint("org/policy", revision=old)["commit"] == old
    with pytest.raises(ValueError, match=r"'org/absent' \(revision main\) is not a local folder"):
        checkpoint_fingerprint("org/absent")
    # neither a folder nor a hub id (a path on another machine): nothing to read; whatever loads it reports it
    assert checkpoint_fingerprint("/ckpts/missing") == {"path": "/ckpts/missing"}


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


def test_a_local_judges_cached_judgments_follow_its_weights_not_its_path(tmp_path: Path) -> None:
    """rm_score judgments: a reward model retrained in place is judged anew; the same model copied elsewhere
    reads the judgments already made."""
    samples = [{"prompt": "Tom has 3 apples.", "completions": [" 7", " 8", " apples"]}]
    ctx = SynthesisContext({}, TaskData("t", [], [], []), None, None, tmp_path / "cache", None)

    def judgments(path: Path) -> list[tuple]:
        scores = _rm_scores(ctx, samples, {"kind": "reward_model", "path": str(path), "batch_size": 2})
        return [rm_pairs(s) for s in scores]

    def scored_now(path: Path) -> list[tuple]:  # what the model in the folder picks, uncached
        judge = build_judge({"kind": "reward_model", "path": str(path)})
        return [rm_pairs(judge.score([s["prompt"]] * 3, s["completions"])) for s in samples]

    def entries() -> int:
        return len(list((tmp_path / "cache" / "judgments").glob("*/results.jsonl")))

    save_reward_model(tmp_path / "rm", seed=0)
    assert judgments(tmp_path / "rm") == scored_now(tmp_path / "rm") and entries() == 1
    time.sleep(0.05)
    save_reward_model(tmp_path / "rm", seed=1)  # the same path and file sizes, other weights
    assert judgments(tmp_path / "rm") == scored_now(tmp_path / "rm") and entries() == 2
    shutil.copytree(tmp_path / "rm", tmp_path / "rm-copy", copy_function=shutil.copyfile)
    assert judgments(tmp_path / "rm-copy") == scored_now(tmp_path / "rm")
    assert entries() == 2  # the copy is the same model: a cache hit


def test_judge_and_editor_keys_name_local_models_by_content(tiny_lm: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_lm, tmp_path / "copy", copy_function=shutil.copyfile)
    content = checkpoint_fingerprint(tiny_lm)
    editor = {"kind": "llm", "max_tokens": 64, "backend": {"kind": "local", "path": str(tiny_lm), "revision": None}}
    assert model_config_key(editor, "editor") == {
        "kind": "llm", "max_tokens": 64, "backend": {"kind": "local", "path": content, "revision": None},
    }  # fmt: skip
    moved = {**editor, "backend": {**editor["backend"], "path": str(tmp_path / "copy")}}
    assert model_config_key(moved, "editor") == model_config_key(editor, "editor")
    judge = {"kind": "reward_model", "path": str(tiny_lm), "batch_size": 4}
    assert model_config_key(judge, "judge") == {"kind": "reward_model", "path": content, "batch_size": 4}
    assert model_config_key({"kind": "verifier"}, "judge") == {"kind": "verifier"}


def test_a_served_judge_is_keyed_by_name_and_revision_or_by_the_folder_it_serves(
    tiny_lm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "judge", "max_concurrency": 8}
    cfg = {"kind": "llm", "backend": {**backend, "revision": None, "weights": None}}
    with caplog.at_level(logging.WARNING, logger="bmc.synthesis.model_keys"):
        assert model_config_key(cfg, "judge") == {"kind": "llm", "backend": backend}  # the key before revisions
    assert "judge.backend: the served model 'judge' is keyed by its name alone" in caplog.text
    assert "judge.backend.revision" in caplog.text and "judge.backend.weights" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bmc.synthesis.model_keys"):
        revised = model_config_key({"kind": "llm", "backend": {**backend, "revision": "v2"}}, "judge")
        served = model_config_key({"kind": "llm", "backend": {**backend, "weights": str(tiny_lm)}}, "judge")
    assert revised["backend"] == {**backend, "revision": "v2"}
    without_model = {k: v for k, v in backend.items() if k != "model"}
    assert served["backend"] == {**without_model, "weights": checkpoint_fingerprint(tiny_lm)}
    assert caplog.text == ""
    # the options key the cache only: the backend is built without them and never sends them
    built = build_chat_backend({**backend, "revision": "v2", "weights": str(tiny_lm), "api_key_env": None})
    assert isinstance(built, OpenAIChat) and built.model == "judge"


def test_the_openai_samplers_cache_follows_its_revision_and_warns_without_one(
    tiny_lm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    pairs = [{"prompt": q, "chosen": "yes", "rejected": "no"} for q in ("What is 2+2?", "Say hi.")]

    def sample(server: FakeChatServer, **key: Any) -> list[dict[str, Any]]:
        backend = {"kind": "openai", "base_url": server.base_url, "model": "policy", "api_key_env": None, **key}
        sampler = {"backend": backend, "n": 2, "max_new_tokens": 4, "prompts_per_batch": 2, "seed": 0}
        ctx = SynthesisContext({"sampler": sampler}, TaskData("t", [], [], pairs), None, tokenizer, tmp_path, None)
        return _samples(ctx)

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        return completions([f"{body['prompt'][-4:]}|{k}" for k in range(body["n"])])

    with FakeChatServer(reply) as server:
        with caplog.at_level(logging.WARNING, logger="bmc.synthesis.model_keys"):
            sample(server)
        assert "data.sampler.backend: the served model 'policy' is keyed by its name alone" in caplog.text
        assert len(server.requests) == 2
        sample(server, revision="step-100")
        assert len(server.requests) == 4  # another revision: sampled anew
        sample(server, revision="step-100")
        assert len(server.requests) == 4  # the same one: read from the cache
        sample(server, weights=str(tiny_lm))
        assert len(server.requests) == 6
    assert all(set(r.json) == {"model", "prompt", "n", "temperature", "top_p", "max_tokens", "seed"}
               for r in server.requests)  # fmt: skip
    assert len(list((tmp_path / "samples").glob("*/results.jsonl"))) == 3
    sampler = OpenAISampler(OpenAIEndpoint(server.base_url, "policy"), weights=str(tiny_lm))
    assert sampler.identity() == {"backend": "openai", "weights": checkpoint_fingerprint(tiny_lm)}
    assert OpenAISampler(OpenAIEndpoint(server.base_url, "policy"), revision="r1").identity() == {
        "backend": "openai", "model": "policy", "revision": "r1",
    }  # fmt: skip
