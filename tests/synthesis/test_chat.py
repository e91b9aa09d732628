"""Chat backends: the OpenAI-compatible HTTP client against a local stand-in server, and the local-model one."""

from __future__ import annotations

import logging
import socket
import traceback
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bmc.generation import Completion, generate
from bmc.precision import resolve_precision
from bmc.synthesis.chat import LocalChat, OpenAIChat, build_chat_backend, render_messages
from bmc.synthesis.endpoint import ChatError
from bmc.synthesis.local_models import with_model_dtypes
from tests.conftest import compose_config
from tests.doubles.fake_chat_server import FakeChatServer, chat_completion

SECRET = "sk-test-Q7f3SECRETkey"
KEY_ENV = "BMC_TEST_API_KEY"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]


def _client(server: FakeChatServer, **options: object) -> OpenAIChat:
    return OpenAIChat(server.base_url, "test-model", **{"api_key_env": KEY_ENV, "backoff_s": 0.0, **options})


def _echo_auth(status: int):
    """A server that fails with ``status`` and, carelessly, echoes the request back in its error body."""
    return lambda body: (status, f'{{"error": "bad request", "echo": "Bearer {SECRET}", "model": "{body["model"]}"}}')


def _assert_secret_absent(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


def test_request_is_well_formed_and_the_key_only_in_the_authorization_header(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    with FakeChatServer(lambda body: "hello there") as server:
        client = _client(server, max_tokens=77)
        assert client.complete(MESSAGES) == Completion("hello there", truncated=False)
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.json == {"model": "test-model", "messages": MESSAGES, "temperature": 0.0, "max_tokens": 77}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {SECRET}"
    other_headers = {k: v for k, v in request.headers.items() if k != "Authorization"}
    _assert_secret_absent(request.raw_body.decode(), str(other_headers), repr(client), caplog.text)
    assert KEY_ENV in repr(client)  # the repr names the variable, never its value


def test_retries_on_500_then_succeeds_and_logs_no_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    attempts = []

    def flaky(body: dict) -> str | tuple[int, str]:
        attempts.append(body)
        return _echo_auth(500)(body) if len(attempts) <= 2 else "finally"

    with FakeChatServer(flaky) as server:
        assert _client(server, max_retries=4).complete(MESSAGES).text == "finally"
    assert len(server.requests) == len(attempts) == 3
    assert caplog.text.count("retry") == 2 and "HTTP 500" in caplog.text
    _assert_secret_absent(caplog.text)
    assert "***" in caplog.text  # the echoed key was redacted, not dropped silently


@pytest.mark.parametrize("status", [500, 503, 429])
def test_gives_up_after_max_retries_with_a_clear_error(status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeChatServer(_echo_auth(status)) as server:
        client = _client(server, max_retries=2)
        with pytest.raises(ChatError) as info:
            client.complete(MESSAGES)
    assert len(server.requests) == 3  # the first attempt and 2 retries
    message = str(info.value)
    assert server.base_url + "/chat/completions" in message and f"HTTP {status}" in message and "3 attempt" in message
    _assert_secret_absent(message, repr(info.value), "".join(traceback.format_exception(info.value)))


@pytest.mark.parametrize("status", [400, 401, 404])
def test_other_4xx_fail_at_once(status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeChatServer(_echo_auth(status)) as server:
        with pytest.raises(ChatError, match=f"HTTP {status}") as info:
            _client(server, max_retries=3).complete(MESSAGES)
    assert len(server.requests) == 1
    _assert_secret_absent(str(info.value), "".join(traceback.format_exception(info.value)))


def test_connection_errors_are_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIChat(f"http://127.0.0.1:{port}/v1", "m", api_key_env=KEY_ENV, max_retries=1, backoff_s=0.0)
    with pytest.raises(ChatError, match="2 attempt") as info:
        client.complete(MESSAGES)
    assert f"127.0.0.1:{port}" in str(info.value) and "refused" in str(info.value).lower()


def test_timeout_is_retried_then_reported() -> None:
    with FakeChatServer(lambda body: "too late", delay_s=0.3) as server:
        client = OpenAIChat(server.base_url, "m", api_key_env=None, timeout_s=0.05, max_retries=1, backoff_s=0.0)
        with pytest.raises(ChatError, match="timed out"):
            client.complete(MESSAGES)
        assert len(server.requests) == 2


def test_missing_key_variable_is_named_and_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BMC_NO_SUCH_KEY", raising=False)
    with FakeChatServer(lambda body: "unused") as server:
        with pytest.raises(ChatError, match="BMC_NO_SUCH_KEY"):
            _client(server, api_key_env="BMC_NO_SUCH_KEY").complete(MESSAGES)
    assert server.requests == []


def test_no_key_for_a_local_server_sends_no_authorization_header() -> None:
    with FakeChatServer(lambda body: "ok") as server:
        assert _client(server, api_key_env=None).complete(MESSAGES).text == "ok"
    assert "Authorization" not in server.requests[0].headers


def test_a_reply_without_choices_is_an_error() -> None:
    with FakeChatServer(lambda body: (200, '{"object": "error"}')) as server:
        with pytest.raises(ChatError, match="no chat completion"):
            _client(server, api_key_env=None).complete(MESSAGES)
    assert len(server.requests) == 1


def test_a_reply_carries_its_finish_reason_and_a_null_content_is_no_text() -> None:
    replies = {"long": chat_completion("<revised>cut off by the bud", "length"), "done": chat_completion("Done."),
               "refused": chat_completion(None, "content_filter"), "bare": {"choices": [{"message": {"content": "x"}}]}}

    with FakeChatServer(lambda body: replies[body["messages"][-1]["content"]]) as server:
        got = _client(server, api_key_env=None).complete_many([[{"role": "user", "content": k}] for k in replies])
    assert got == [Completion("<revised>cut off by the bud", True), Completion("Done.", False),
                   Completion("", False), Completion("x", False)]  # fmt: skip


def test_a_local_reply_that_runs_out_of_tokens_is_truncated(tiny_lm: Path) -> None:
    backend = build_chat_backend({"kind": "local", "path": str(tiny_lm), "max_new_tokens": 3})
    # the tiny random model emits no end token within 3 tokens
    (reply,) = backend.complete_many([MESSAGES])
    assert reply.truncated and reply.text
    assert str(tiny_lm) in repr(backend)  # the folder an error about its replies names


def test_complete_many_runs_concurrently_within_the_limit_and_keeps_order() -> None:
    def echo(body: dict) -> str:
        return "re: " + body["messages"][-1]["content"]

    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(12)]
    with FakeChatServer(echo, delay_s=0.05) as server:
        replies = _client(server, api_key_env=None, max_concurrency=4).complete_many(conversations)
    assert replies == [Completion(f"re: q{i}", truncated=False) for i in range(12)]
    assert 1 < server.max_in_flight <= 4


def test_render_messages_plain_and_with_a_chat_template(tiny_lm: Path) -> None:
    backend = build_chat_backend({"kind": "local", "path": str(tiny_lm), "max_new_tokens": 4})
    assert render_messages(backend.tokenizer, MESSAGES) == "system: Be brief.\nuser: Say hi.\nassistant:"
    backend.tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert render_messages(backend.tokenizer, MESSAGES) == "<system>Be brief.<user>Say hi.<assistant>"


def test_local_chat_is_greedy_and_deterministic(tiny_lm: Path) -> None:
    backend = build_chat_backend({"kind": "local", "path": str(tiny_lm), "max_new_tokens": 6, "batch_size": 2})
    assert isinstance(backend, LocalChat)
    conversations = [MESSAGES, [{"role": "user", "content": "hello"}], MESSAGES]
    replies = backend.complete_many(conversations)
    assert replies[0] == replies[2] == backend.complete(MESSAGES)
    prompt = render_messages(backend.tokenizer, MESSAGES)
    expected, truncated = generate(backend.model, backend.tokenizer, [prompt], 6)[0]
    assert replies[0] == Completion(expected.strip(), truncated)


def test_factory_rejects_unknown_kinds_and_options(tiny_lm: Path) -> None:
    kinds = r"\['local', 'openai'\]"
    with pytest.raises(ValueError, match=rf"unknown chat backend 'anthropic': backend.kind must be one of {kinds}"):
        build_chat_backend({"kind": "anthropic"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['temprature'\]"):
        build_chat_backend({"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m", "temprature": 0})
    with pytest.raises(ValueError, match="needs `model`, the name the server serves"):
        build_chat_backend({"kind": "openai", "base_url": "http://127.0.0.1:1/v1"})
    with pytest.raises(ValueError, match="needs `model`"):  # chat_backend/openai.yaml's ??? left unset
        build_chat_backend({"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "???"})
    with pytest.raises(ValueError, match="needs `path`"):
        build_chat_backend({"kind": "local"})
    with pytest.raises(ValueError, match="needs `path`"):
        build_chat_backend({"kind": "local", "path": "???"})
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIChat("http://127.0.0.1:1/v1", "m", max_concurrency=0)


@pytest.mark.parametrize("group", ["editor", "judge"])
def test_one_override_switches_the_judge_or_editor_between_a_server_and_a_local_model(group: str, tiny_lm: Path):
    served = compose_config([f"{group}=llm", f"{group}.backend.model=my-model"])[group].backend
    assert (served.kind, served.model, served.max_concurrency) == ("openai", "my-model", 8)
    cfg = compose_config([f"{group}=llm", f"chat_backend@{group}.backend=local", f"{group}.backend.path={tiny_lm}"])
    backend = OmegaConf.to_container(cfg[group].backend)
    assert backend["kind"] == "local" and "base_url" not in backend  # the whole block is replaced, not merged
    local = build_chat_backend(backend)
    assert isinstance(local, LocalChat) and local.max_new_tokens == 256
    assert isinstance(local.complete_many([[{"role": "user", "content": "hello"}]], max_tokens=4)[0].text, str)


@pytest.mark.parametrize(
    ("precision", "dtype", "loaded"),
    [
        ("32-true", None, torch.float32),
        ("bf16", None, torch.bfloat16),  # Lightning's alias of bf16-mixed
        ("bf16-true", None, torch.bfloat16),
        ("16-mixed", None, torch.float16),
        ("bf16-mixed", "float32", torch.float32),  # an explicit dtype wins over the rule
        ("32-true", "bfloat16", torch.bfloat16),
    ],
)
def test_a_local_backend_loads_in_the_trainers_precision_unless_its_dtype_is_set(
    tiny_lm: Path, precision: str, dtype: str | None, loaded: torch.dtype
) -> None:
    cfg = {"kind": "local", "path": str(tiny_lm), "dtype": dtype, "max_new_tokens": 4}
    backend = build_chat_backend(cfg, precision=resolve_precision(precision))
    assert {p.dtype for p in backend.model.parameters()} == {loaded}
    assert isinstance(backend.complete(MESSAGES).text, str)
    # what its cached judgments and edits are keyed by: the dtype it loads in
    resolved = with_model_dtypes({"kind": "llm", "backend": cfg}, resolve_precision(precision))
    assert resolved["backend"]["dtype"] == str(loaded).removeprefix("torch.")
    served = {"kind": "llm", "backend": {"kind": "openai", "model": "m"}}
    assert with_model_dtypes(served, resolve_precision(precision)) == served  # nothing loads here


def test_the_local_backend_config_leaves_the_dtype_to_the_precision(tiny_lm: Path) -> None:
    cfg = compose_config(["judge=llm", "chat_backend@judge.backend=local", f"judge.backend.path={tiny_lm}",
                          "trainer.precision=bf16"])  # fmt: skip
    backend = OmegaConf.to_container(cfg.judge.backend)
    assert backend["dtype"] is None
    local = build_chat_backend(backend, precision=resolve_precision(cfg.trainer.precision))
    assert next(local.model.parameters()).dtype == torch.bfloat16
