"""A stand-in OpenAI-compatible chat server on 127.0.0.1, for tests and offline dry runs of the LLM judge
and editor: it records every request and answers with a function of the request's JSON body.

    with FakeChatServer(lambda body: "[[A]]") as server:
        backend = OpenAIChat(server.base_url, "any-model", api_key_env=None)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A reply is the assistant's content (HTTP 200), or (status, raw body) to simulate a failure.
Reply = str | tuple[int, str]


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    raw_body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw_body)


class FakeChatServer:
    """Answers ``POST .../chat/completions`` with ``reply(body)`` after ``delay_s`` seconds.

    ``requests`` lists what arrived (in arrival order); ``max_in_flight`` is the most requests handled at once.
    """

    def __init__(self, reply: Callable[[dict[str, Any]], Reply], delay_s: float = 0.0) -> None:
        self.reply, self.delay_s = reply, delay_s
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # A short poll interval: shutdown() waits for the serving loop's next poll.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

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
                status, body = (
                    reply
                    if isinstance(reply, tuple)
                    else (
                        200,
                        json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}),
                    )
                )
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
