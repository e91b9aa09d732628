"""iterative.serve_command (bmc/stages/round_server.py): a round's policy folder handed to a server started
for the round's sampling and stopped after it."""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from bmc.stages.round_server import serving


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_command_serves_the_rounds_folder_while_the_block_runs_and_stops_after(tmp_path: Path) -> None:
    folder = tmp_path / "rounds" / "1" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    port = _free_port()
    # a stand-in server whose served directory is the {model} argument: its listing shows which folder it got
    command = f"{sys.executable} -m http.server {port} --bind 127.0.0.1 --directory {{model}}"
    with serving(command, folder, f"http://127.0.0.1:{port}/v1", timeout_s=30):
        listing = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert "config.json" in listing
    with pytest.raises(OSError):  # stopped: nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_server_that_exits_before_listening_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="iterative.serve_command exited with status 3 before serving"):
        with serving(f"{sys.executable} -c 'raise SystemExit(3)'", tmp_path, "http://127.0.0.1:9/v1", 30):
            pass
