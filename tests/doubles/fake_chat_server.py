"""A stand-in OpenAI-compatible server on 127.0.0.1, for tests and offline dry runs of the LLM judge, the
LLM editor and the ``openai`` sampler backend: it records every request and answers with a function of the
request's JSON body.

    with FakeChatServer(lambda body: "[[A]]") as server:
        backend = OpenAIChat(server.base_url, "any-model", api_key_env=None)
    with FakeChatServer(lambda body: completions(["a", "b"], ["stop", "length"])) as server:
        ...  # POST .../completions answered with two choices
    with FakeChatServer(lambda body: chat_completion("<revised>cut off", "length")) as server:
        ...  # a chat reply that the token budget cut off
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.doubles.local_server import LocalServer

# A reply is the assistant's content of a chat completion that finished (HTTP 200), a whole JSON body (HTTP 200,
# e.g. :func:`completions` or :func:`chat_completion`), or (status, raw body) to simulate a failure.
Reply = str | dict[str, Any] | tuple[int, str]


def chat_completion(content: str | None, finish_reason: str = "stop") -> dict[str, Any]:
    """The JSON body of an OpenAI chat-completions reply: ``finish_reason`` "length" is a reply the token budget
    cut off."""
    message = {"role": "assistant", "content": content}
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]}


def completions(texts: list[str], finish_reasons: list[str] | None = None) -> dict[str, Any]:
    """The JSON body of an OpenAI completions reply: one choice per text, ``finish_reason`` "stop" unless given."""
    reasons = finish_reasons or ["stop"] * len(texts)
    return {"choices": [{"index": i, "text": t, "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]}


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    raw_body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw_body)


class FakeChatServer(LocalServer):
    """Answers any ``POST`` (``.../chat/completions``, ``.../completions``) with ``reply(body)`` after ``delay_s``
    seconds.

    ``requests`` lists what arrived (in arrival order); ``max_in_flight`` is the most requests handled at once.
    """

    def __init__(self, reply: Callable[[dict[str, Any]], Reply], delay_s: float = 0.0) -> None:
        self.reply, self.delay_s = reply, delay_s
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        super().__init__(self._handler())

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server._lock:
                    server.requests.append(RecordedRequest(self.path, dict(self.headers.items()), raw))
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    time.sleep(server.delay_s)
                    reply = server.reply(json.loads(raw))
                finally:
                    with server._lock:
                        server._in_flight -= 1
                if isinstance(reply, tuple):
                    status, body = reply
                elif isinstance(reply, dict):
                    status, body = 200, json.dumps(reply)
                else:
                    status, body = 200, json.dumps(chat_completion(reply))
                data = body.encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test); nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                """Silence http.server's per-request lines on stderr."""

        return Handler
