"""The HTTP client of every OpenAI-compatible server the synthesis talks to: the ``openai`` chat backend of the
judge and editor, and the ``openai`` sampler backend.

It uses only the standard library. Its API key is read from the environment variable that the config NAMES
(never from the config itself), at call time, and goes only into the ``Authorization`` header: it is not stored
on the object, logged, or put in any exception message.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlparse

log = logging.getLogger(__name__)

T = TypeVar("T")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ChatError(RuntimeError):
    """A chat request failed for good (after retries, or at once for a non-retryable error)."""


def _retryable(status: int) -> bool:
    """Rate limiting (429) and server-side failures (5xx) may pass on another try; other 4xx are the request's
    fault and would fail again."""
    return status == 429 or status >= 500


def _redact(text: str, secret: str | None) -> str:
    # A server may echo request headers in an error body; the key must not reach a log line or exception.
    return text.replace(secret, "***") if secret else text


def _body_excerpt(err: urllib.error.HTTPError) -> str:
    try:
        return err.read()[:300].decode("utf-8", errors="replace").strip() or err.reason
    except OSError:
        return str(err.reason)


class OpenAIEndpoint:
    """An OpenAI-compatible server: POSTs JSON to ``{base_url}/<route>`` with retries, backoff and a cap on the
    requests in flight, shared by every thread that uses this object.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (vLLM, llama.cpp server, TGI, or the OpenAI API).
        model: the ``model`` field of each request.
        api_key_env: NAME of the environment variable holding the API key, read at each call; None for a
            server without authentication (no ``Authorization`` header is sent).
        timeout_s: socket timeout of one attempt.
        max_retries: further attempts after a failed one, on HTTP 429/5xx, connection errors and timeouts
            (other 4xx fail at once); attempt k waits ``backoff_s * 2**k`` seconds before retrying.
        max_concurrency: requests in flight at once, over all threads (callers that fan out across prompts
            and the requests of each prompt share this one bound).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        max_concurrency: int = 8,
    ) -> None:
        if max_retries < 0 or backoff_s < 0 or timeout_s <= 0 or max_concurrency < 1:
            raise ValueError(
                "need max_retries >= 0, backoff_s >= 0, timeout_s > 0 and max_concurrency >= 1, "
                f"got {max_retries}, {backoff_s}, {timeout_s}, {max_concurrency}"
            )
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.timeout_s, self.max_retries, self.backoff_s = float(timeout_s), int(max_retries), float(backoff_s)
        self.max_concurrency = int(max_concurrency)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        # A local server is never reached through a proxy from the environment (it could not reach it, and
        # would see the key).
        handlers = [urllib.request.ProxyHandler({})] if urlparse(self.base_url).hostname in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"
        )

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ChatError(
                f"environment variable {self.api_key_env} is not set; it must hold the API key for {self.base_url} "
                "(set api_key_env to null for a server without authentication)"
            )
        return key

    def post(self, route: str, body: Mapping[str, Any], answer: Callable[[Any], T], what: str) -> T:
        """``answer(parsed JSON reply)`` of ``POST {base_url}/{route}`` with ``body`` (its ``model`` field added).

        ``answer`` raises KeyError, IndexError, TypeError or ValueError on a reply that holds no ``what`` (e.g.
        ``"chat completion"``), which becomes a ChatError quoting the reply; it is not retried: the server
        answered, and would answer the same.
        """
        url = f"{self.base_url}/{route}"
        key = self._api_key()
        data = json.dumps({"model": self.model, **body}).encode("utf-8")
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "POST %s failed (%s); retry %d/%d in %.1f s", url, problem, attempt, self.max_retries, delay
                )
                time.sleep(delay)  # outside the slot: a backing-off request leaves room for the others
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with self._slots, self._opener.open(request, timeout=self.timeout_s) as response:
                    payload = response.read()
            except urllib.error.HTTPError as err:
                problem = f"HTTP {err.code}: {_redact(_body_excerpt(err), key)}"
                if not _retryable(err.code):
                    raise ChatError(f"POST {url} failed with {problem}") from None
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                reason = err.reason if isinstance(err, urllib.error.URLError) else err
                problem = _redact(f"{type(err).__name__}: {reason}", key)
                continue
            try:
                return answer(json.loads(payload))
            except (ValueError, KeyError, IndexError, TypeError) as error:
                excerpt = _redact(payload[:300].decode("utf-8", errors="replace"), key)
                why = f" ({error})" if isinstance(error, ValueError) else ""  # the answer's own account of it
                raise ChatError(f"POST {url} returned no {what}{why}: {excerpt!r}") from None
        # `from None` above: the chained urllib exception adds nothing the message lacks.
        raise ChatError(f"POST {url} failed after {self.max_retries + 1} attempt(s); last error: {problem}")
