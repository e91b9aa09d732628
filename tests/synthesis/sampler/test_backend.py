"""Sampler backends (``data.sampler.backend``): hf, openai against the fake server, vllm with a fake ``vllm``
module; the same cache entries, resumption, truncation counts, retries and the API key kept out of files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from bmc.data.render import render_task
from bmc.data.sources import TaskData
from bmc.data.tokenize import encode_prompts
from bmc.precision import resolve_precision
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.endpoint import ChatError, OpenAIEndpoint
from bmc.synthesis.pair_sources import _samples, samples_from_policy
from bmc.synthesis.sampler import OpenAISampler, SamplingSettings, build_sampler_backend
from tests.conftest import compose_config
from tests.doubles.fake_chat_server import FakeChatServer, completions
from tests.doubles.fake_vllm import fake_vllm

SECRET = "sk-test-SAMPLER9secret"
KEY_ENV = "BMC_TEST_SAMPLER_KEY"
QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hi.", "Count to 3.", "Spell cat."]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _deterministic(body: dict[str, Any]) -> dict[str, Any]:
    """n samples that name their prompt, seed and position; the second is cut off. Choices arrive in reverse
    index order, as a server may send them."""
    texts = [f"{body['prompt'][-12:]}|{body['seed']}|{k}" for k in range(body["n"])]
    reply = completions(texts, ["length" if k == 1 else "stop" for k in range(body["n"])])
    reply["choices"].reverse()
    return reply


def _endpoint(server: FakeChatServer, **options: Any) -> OpenAIEndpoint:
    return OpenAIEndpoint(server.base_url, "policy", **{"api_key_env": None, "backoff_s": 0.0, **options})


def _expected(prompts: list[str], settings: SamplingSettings) -> list[dict[str, Any]]:
    samples = []
    for i, prompt in enumerate(prompts):
        seed = settings.prompt_seed(i)
        texts = [f"{prompt[-12:]}|{seed}|{k}" for k in range(settings.n)]
        samples.append({"prompt": prompt, "completions": texts, "truncated": [k == 1 for k in range(settings.n)]})
    return samples


@pytest.fixture
def chat_ctx(tiny_lm: Path, tmp_path: Path) -> SynthesisContext:
    """A synthesis context whose prompts are user turns rendered with a chat template, and the tiny policy."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    tokenizer.chat_template = CHAT_TEMPLATE
    pairs = [{"prompt": q, "chosen": "yes", "rejected": "no"} for q in QUESTIONS]
    task_data = render_task(TaskData("t", [], [], pairs, user_turns=True), tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    return SynthesisContext({}, task_data, model, tokenizer, tmp_path / "cache", model_key={"tiny": 1})


def _with_sampler(ctx: SynthesisContext, backend: Any, cache: Path, **context: Any) -> SynthesisContext:
    """``ctx`` with a sampler config and ``cache``; ``context``: more of SynthesisContext's arguments."""
    sampler = {"backend": backend, "n": 3, "max_new_tokens": 4, "prompts_per_batch": 2, "seed": 7}
    return SynthesisContext(
        {"sampler": sampler}, ctx.task_data, ctx.model, ctx.tokenizer, cache, ctx.model_key, **context
    )


def test_openai_sampler_sends_each_prompt_once_with_n_and_returns_the_samples_in_order() -> None:
    settings = SamplingSettings(n=3, temperature=0.7, top_p=0.9, max_new_tokens=5, prompts_per_batch=5, seed=2)
    with FakeChatServer(_deterministic) as server:
        drawn = OpenAISampler(_endpoint(server, max_concurrency=3)).sample_batch(QUESTIONS, 0, settings)
    assert drawn == [list(zip(s["completions"], s["truncated"])) for s in _expected(QUESTIONS, settings)]
    by_prompt = {r.json["prompt"]: r for r in server.requests}
    assert sorted(by_prompt) == sorted(QUESTIONS) and len(server.requests) == 5
    for i, question in enumerate(QUESTIONS):
        request = by_prompt[question]
        assert request.path == "/v1/completions" and "Authorization" not in request.headers
        assert request.json == {
            "model": "policy", "prompt": question, "n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 5,
            "seed": settings.prompt_seed(i),
        }  # fmt: skip


def test_openai_and_hf_write_the_same_cache_entries_from_the_same_rendered_prompts(
    chat_ctx: SynthesisContext, tmp_path: Path
) -> None:
    rendered = [p["prompt"] for p in chat_ctx.task_data.pairs]
    assert all(p.startswith("<|user|>") and p.endswith("<|assistant|>") for p in rendered)
    hf_ctx = _with_sampler(chat_ctx, "hf", tmp_path / "hf")
    hf = _samples(hf_ctx)
    with FakeChatServer(_deterministic) as server:
        backend = {"kind": "openai", "base_url": server.base_url, "model": "policy", "api_key_env": None}
        served_ctx = _with_sampler(chat_ctx, backend, tmp_path / "served")
        served = _samples(served_ctx)
    # the server is asked for exactly the text hf samples from: the chat-template rendering
    assert sorted(r.json["prompt"] for r in server.requests) == sorted(rendered)
    assert [s["prompt"] for s in hf] == [s["prompt"] for s in served] == rendered
    for entry in (*hf, *served):
        assert set(entry) == {"prompt", "completions", "truncated"} and len(entry["completions"]) == 3
        assert all(isinstance(t, str) for t in entry["completions"])
        assert all(isinstance(c, bool) for c in entry["truncated"])
    assert served == _expected(rendered, SamplingSettings(n=3, max_new_tokens=4, prompts_per_batch=2, seed=7))
    # one results.jsonl per cache entry, under samples/<key>/, in the same format
    for root, samples in ((tmp_path / "hf", hf), (tmp_path / "served", served)):
        (results,) = (root / "samples").glob("*/results.jsonl")
        assert [json.loads(line) for line in results.read_text().splitlines()] == samples
    assert served_ctx.report["truncated_completions"] == len(QUESTIONS)  # the second sample of each
    assert served_ctx.report["completions"] == hf_ctx.report["completions"] == 3 * len(QUESTIONS)
    assert hf_ctx.report["truncated_completions"] == sum(sum(s["truncated"]) for s in hf)


def test_hf_samples_in_the_trainers_precision_and_keys_its_samples_by_it(
    chat_ctx: SynthesisContext, tmp_path: Path
) -> None:
    autocast: list[torch.dtype | None] = []  # what each forward of the policy autocasts to (None: nothing)

    def record(module: torch.nn.Module, args: tuple) -> None:
        autocast.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)

    chat_ctx.model.lm_head.register_forward_pre_hook(record)

    def sample(value: str) -> tuple[SynthesisContext, set]:
        autocast.clear()
        ctx = _with_sampler(chat_ctx, "hf", tmp_path / "cache", precision=resolve_precision(value))
        _samples(ctx)
        return ctx, set(autocast)

    full, forwards = sample("32-true")
    assert forwards == {None}
    assert build_sampler_backend("hf", full).identity() == {"tiny": 1}  # entries from before the rule stay valid
    bf16, forwards = sample("bf16")
    assert forwards == {torch.bfloat16}  # Lightning's bf16 is bf16-mixed: autocast, as training runs
    assert build_sampler_backend("hf", bf16).identity() == {"tiny": 1, "precision": "bf16-mixed"}
    assert len(list((tmp_path / "cache" / "samples").glob("*/results.jsonl"))) == 2
    _, forwards = sample("bf16-mixed")
    assert forwards == set()  # the same entry: read, not drawn


def test_a_killed_openai_run_resumes_with_only_the_missing_prompts(chat_ctx: SynthesisContext, tmp_path: Path) -> None:
    rendered = [p["prompt"] for p in chat_ctx.task_data.pairs]
    dead = set(rendered[2:])  # the server "dies" after the first batch of 2 prompts

    def dies(body: dict[str, Any]) -> Any:
        return (400, '{"error": "gone"}') if body["prompt"] in dead else _deterministic(body)

    with FakeChatServer(dies) as server:
        backend = {"kind": "openai", "base_url": server.base_url, "model": "policy", "api_key_env": None}
        with pytest.raises(ChatError, match="HTTP 400"):
            _samples(_with_sampler(chat_ctx, backend, tmp_path / "cache"))
    (journal,) = (tmp_path / "cache" / "samples").glob("*.journal.jsonl")
    assert sorted(json.loads(line)["index"] for line in journal.read_text().splitlines()) == [0, 1]
    with FakeChatServer(_deterministic) as server:
        backend = {"kind": "openai", "base_url": server.base_url, "model": "policy", "api_key_env": None}
        resumed = _samples(_with_sampler(chat_ctx, backend, tmp_path / "cache"))
    assert sorted(r.json["prompt"] for r in server.requests) == sorted(dead)
    assert resumed == _expected(rendered, SamplingSettings(n=3, max_new_tokens=4, prompts_per_batch=2, seed=7))
    assert not journal.exists()


@pytest.mark.parametrize("status", [500, 429])
def test_openai_sampler_retries_a_failed_request_then_succeeds(status: int) -> None:
    attempts: list[str] = []

    def flaky(body: dict[str, Any]) -> Any:
        attempts.append(body["prompt"])
        return (status, '{"error": "busy"}') if attempts.count(body["prompt"]) <= 2 else _deterministic(body)

    settings = SamplingSettings(n=2, prompts_per_batch=3)
    with FakeChatServer(flaky) as server:
        drawn = OpenAISampler(_endpoint(server, max_retries=2)).sample_batch(QUESTIONS[:3], 0, settings)
    assert drawn == [list(zip(s["completions"], s["truncated"])) for s in _expected(QUESTIONS[:3], settings)]
    assert len(server.requests) == 3 * 3  # two failures and a success per prompt


def test_openai_sampler_rejects_a_reply_with_the_wrong_number_of_samples() -> None:
    with FakeChatServer(lambda body: completions(["only one"])) as server:
        with pytest.raises(ChatError, match="no 2 completions .* for prompt 4.*max_n_per_request=1"):
            OpenAISampler(_endpoint(server)).sample_batch(["x"], 4, SamplingSettings(n=2))


def test_a_server_that_ignores_n_gets_one_request_per_sample_with_max_n_per_request(tmp_path: Path) -> None:
    """llama-cpp-python's server returns one choice whatever `n` asks: with max_n_per_request=1, each of a
    prompt's n samples is its own request, seeded apart, in order; with 2, n=3 takes requests of 2 and 1."""

    def one_choice_per_request(body: dict[str, Any]) -> dict[str, Any]:
        return completions([f"{body['prompt']}|{body['seed']}|{k}" for k in range(min(body["n"], 2))])

    settings = SamplingSettings(n=3, max_new_tokens=4, prompts_per_batch=2, seed=1)
    stride = OpenAISampler.REQUEST_SEED_STRIDE
    for per_request, sizes in ((1, [1, 1, 1]), (2, [2, 1])):
        with FakeChatServer(one_choice_per_request) as server:
            sampler = OpenAISampler(_endpoint(server, max_concurrency=2), max_n_per_request=per_request)
            drawn = sampler.sample_batch(["p", "q"], 5, settings)
        for index, prompt in ((5, "p"), (6, "q")):
            seeds = [settings.prompt_seed(index) + j * stride for j in range(len(sizes))]
            requests = sorted((r.json for r in server.requests if r.json["prompt"] == prompt), key=lambda b: b["seed"])
            assert [(b["n"], b["seed"]) for b in requests] == list(zip(sizes, seeds))
            texts = [t for seed, n in zip(seeds, sizes) for t in (f"{prompt}|{seed}|{k}" for k in range(n))]
            assert drawn[index - 5] == [(t, False) for t in texts]
        assert sampler.identity() == {"backend": "openai", "model": "policy", "n_per_request": per_request}
    assert OpenAISampler(_endpoint(server)).identity() == {"backend": "openai", "model": "policy"}  # keys kept
    with pytest.raises(ValueError, match="max_n_per_request must be >= 1"):
        OpenAISampler(_endpoint(server), max_n_per_request=0)


def test_the_api_key_is_sent_but_never_cached_or_configured(
    chat_ctx: SynthesisContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeChatServer(_deterministic) as server:
        backend = {"kind": "openai", "base_url": server.base_url, "model": "policy", "api_key_env": KEY_ENV}
        _samples(_with_sampler(chat_ctx, backend, tmp_path / "cache"))
    assert all(r.headers["Authorization"] == f"Bearer {SECRET}" for r in server.requests)
    files = [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]
    assert files and not any(SECRET in f.read_text() for f in files)
    cfg = compose_config(
        ["data=ipr", "sampler_backend@data.sampler.backend=openai", f"data.sampler.backend.api_key_env={KEY_ENV}",
         "data.sampler.backend.base_url=http://127.0.0.1:1/v1", "data.sampler.backend.model=policy"]
    )  # fmt: skip
    assert SECRET not in OmegaConf.to_yaml(cfg) and cfg.data.sampler.backend.api_key_env == KEY_ENV


def test_max_concurrency_bounds_the_prompts_in_flight_and_cuts_the_wall_time() -> None:
    settings = SamplingSettings(n=2, prompts_per_batch=12)
    prompts = [f"prompt {i}" for i in range(12)]
    walls = {}
    for limit in (1, 4):
        with FakeChatServer(_deterministic, delay_s=0.05) as server:
            start = time.perf_counter()
            drawn = OpenAISampler(_endpoint(server, max_concurrency=limit)).sample_batch(prompts, 0, settings)
            walls[limit] = time.perf_counter() - start
        assert server.max_in_flight == limit
        assert drawn == [list(zip(s["completions"], s["truncated"])) for s in _expected(prompts, settings)]
    assert walls[4] < 0.6 * walls[1]  # 12 x 50 ms in sequence vs 3 rounds of 4


def test_vllm_backend_calls_the_engine_with_hf_token_ids_and_caches_like_the_others(
    chat_ctx: SynthesisContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, list] = {"LLM": [], "generate": []}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(calls))
    backend = {"kind": "vllm", "model": "/ckpts/policy", "dtype": "bfloat16"}
    ctx = _with_sampler(chat_ctx, backend, tmp_path / "cache")
    samples = _samples(ctx)
    (engine,) = calls["LLM"]
    assert engine["model"] == "/ckpts/policy" and engine["dtype"] == "bfloat16"
    assert engine["tensor_parallel_size"] == 1 and engine["trust_remote_code"] is False
    assert "gpu_memory_utilization" not in engine  # a CPU-trained policy leaves the GPU to vLLM's default share
    rendered = [p["prompt"] for p in chat_ctx.task_data.pairs]
    requests = [r for batch, _ in calls["generate"] for r in batch]
    assert requests == [{"prompt_token_ids": ids} for ids in encode_prompts(chat_ctx.tokenizer, rendered)]
    params = [p for _, batch in calls["generate"] for p in batch]
    settings = SamplingSettings(n=3, max_new_tokens=4, prompts_per_batch=2, seed=7)
    assert [p["seed"] for p in params] == [settings.prompt_seed(i) for i in range(len(rendered))]
    assert all((p["n"], p["max_tokens"], p["temperature"], p["top_p"]) == (3, 4, 0.8, 0.95) for p in params)
    assert all(chat_ctx.tokenizer.eos_token_id in p["stop_token_ids"] for p in params)
    assert samples[0] == {
        "prompt": rendered[0],
        "completions": [f"{settings.prompt_seed(0)}|{k}" for k in range(3)],
        "truncated": [False, True, True],
    }
    assert ctx.report["truncated_completions"] == 2 * len(rendered)
    # a second run reads the cache: no engine is built
    again = _samples(_with_sampler(chat_ctx, backend, tmp_path / "cache"))
    assert again == samples and len(calls["LLM"]) == 1


def test_vllm_backend_without_the_package_names_it(chat_ctx: SynthesisContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ImportError, match="optional package `vllm`"):
        build_sampler_backend({"kind": "vllm", "model": "/ckpts/policy"}, chat_ctx)


def test_backend_configs_compose_and_mistakes_are_named(chat_ctx: SynthesisContext) -> None:
    default = compose_config(["data=ipr"]).data
    assert OmegaConf.to_container(default.sampler.backend) == {"kind": "hf"}
    served = OmegaConf.to_container(compose_config(["data=ipr", "sampler_backend@data.sampler.backend=openai"]).data)
    assert served["sampler"]["backend"]["base_url"] == served["sampler"]["backend"]["model"] == "???"
    with pytest.raises(ValueError, match=r"needs \['base_url', 'model'\].*sampler_backend@data.sampler.backend=openai"):
        build_sampler_backend(served["sampler"]["backend"], chat_ctx)
    vllm = OmegaConf.to_container(compose_config(["data=ipr", "sampler_backend@data.sampler.backend=vllm"]).data)
    with pytest.raises(ValueError, match=r"needs \['model'\]"):
        build_sampler_backend(vllm["sampler"]["backend"], chat_ctx)
    kinds = r"data.sampler.backend.kind must be one of \['hf', 'openai', 'task', 'vllm'\]"
    with pytest.raises(ValueError, match=rf"unknown sampler backend 'tgi': {kinds}"):
        build_sampler_backend("tgi", chat_ctx)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['temprature'\]"):
        build_sampler_backend({"kind": "openai", "base_url": "http://x/v1", "model": "m", "temprature": 1}, chat_ctx)
    # only hf samples in this process, so only it needs the starting policy's model built
    assert samples_from_policy({"pairs": "ipr", "sampler": {"backend": {"kind": "hf"}}})
    assert samples_from_policy({"pairs": "ipr", "sampler": {"backend": "hf"}})
    assert not samples_from_policy({"pairs": "ipr", "sampler": served["sampler"]})
    assert not samples_from_policy({"pairs": "ipr", "sampler": {"backend": "task"}})


def test_a_served_prompt_keeps_bos_once_where_the_server_adds_it(tiny_lm: Path) -> None:
    """A chat template's output that starts with BOS, for a tokenizer that adds BOS itself (Llama 3): the server
    would encode two; the sampler sends the text without it. A tokenizer that adds none keeps the text as it is."""
    from tokenizers.processors import TemplateProcessing

    from bmc.data.tokenize import encode_prompts

    plain = AutoTokenizer.from_pretrained(tiny_lm)
    adds_bos = AutoTokenizer.from_pretrained(tiny_lm)
    bos = adds_bos.bos_token
    adds_bos._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, adds_bos.bos_token_id)]
    )
    prompts = [f"{bos}<|user|>hello\n<|assistant|>", "<|user|>hi\n<|assistant|>"]
    settings = SamplingSettings(n=1, max_new_tokens=3, prompts_per_batch=2, seed=0)
    sent = {}
    for name, tokenizer in (("adds", adds_bos), ("plain", plain)):
        with FakeChatServer(_deterministic) as server:
            OpenAISampler(_endpoint(server), tokenizer).sample_batch(prompts, 0, settings)
        sent[name] = sorted(r.json["prompt"] for r in server.requests)
        # what the server's encoding (special tokens on) gives equals what the hf backend samples from
        served_ids = sorted(tokenizer(p)["input_ids"] for p in sent[name])
        assert served_ids == sorted(encode_prompts(tokenizer, prompts))
    assert sent["adds"] == sorted(["<|user|>hello\n<|assistant|>", "<|user|>hi\n<|assistant|>"])
    assert sent["plain"] == sorted(prompts)
