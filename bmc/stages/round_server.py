"""How an iterative round hands its policy to an ``openai`` sampler's server: ``iterative.serve_command``, with
``{model}`` replaced by the round's policy folder (the start's checkpoint in round 1, ``rounds/<t-1>/model``
after), is started before the round samples and stopped after, e.g.

    iterative.serve_command='vllm serve {model} --served-model-name policy --port 8000'

The round is ready to sample once ``data.sampler.backend.base_url``'s host accepts connections (waited for up to
``iterative.serve_timeout_s``); the samples are keyed by the folder's contents (the backend's ``weights``).
"""

from __future__ import annotations

import logging
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)


@contextmanager
def serving(command: str | None, folder: Path, base_url: str | None, timeout_s: float) -> Iterator[None]:
    """Run ``command`` (None: nothing to start) for ``folder`` while the block samples; stopped after it."""
    if not command:
        yield
        return
    argv = [part.replace("{model}", str(folder)) for part in shlex.split(command)]
    log.info("serving %s for this round: %s", folder, " ".join(argv))
    server = subprocess.Popen(argv)
    try:
        _wait_until_listening(server, base_url, timeout_s)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_listening(server: subprocess.Popen, base_url: str | None, timeout_s: float) -> None:
    url = urlparse(base_url or "")
    if url.hostname is None:
        raise ValueError(f"iterative.serve_command needs data.sampler.backend.base_url, got {base_url!r}")
    port = url.port or (443 if url.scheme == "https" else 80)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"iterative.serve_command exited with status {server.returncode} before serving")
        try:
            socket.create_connection((url.hostname, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"iterative.serve_command: nothing listens on {url.hostname}:{port} after {timeout_s} s")
