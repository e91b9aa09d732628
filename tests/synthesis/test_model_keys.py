"""Cache keys of the models the data stages ask: local judges and editors by content, served ones by name and revision
or by the folder they serve, the OpenAI sampler by its revision."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from bmc.cache import checkpoint_fingerprint
from bmc.data.sources import TaskData
from bmc.synthesis.chat import OpenAIChat, build_chat_backend
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.endpoint import OpenAIEndpoint
from bmc.synthesis.ipr import rm_pairs
from bmc.synthesis.judges import build_judge
from bmc.synthesis.model_keys import model_config_key
from bmc.synthesis.pair_sources import _rm_scores, _samples
from bmc.synthesis.sampler import OpenAISampler
from tests.conftest import save_reward_model
from tests.doubles.fake_chat_server import FakeChatServer, completions


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
