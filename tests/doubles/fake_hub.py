"""A stand-in Hugging Face Hub on 127.0.0.1, for tests of ``export.push_to_hub``: the three endpoints that
``HfApi.create_repo`` and ``HfApi.upload_folder`` call (huggingface_hub 2.x, with or without hf_xet) when every
file is a regular git blob. It records every request and keeps each repo's visibility and files.

    with FakeHub() as hub:
        api = HfApi(endpoint=hub.endpoint, token="hf_test")
        api.create_repo("me/model", private=True, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id="me/model")
    hub.repos["me/model"].files  # {"config.json": b"...", ...}

- ``POST /api/repos/create``: creates the repo (409 if it exists, which ``exist_ok=True`` accepts);
- ``POST /api/models/{repo}/preupload/{revision}``: answers ``uploadMode: regular`` for every file, so the files
  travel base64-encoded in the commit's body (no LFS or xet transfer, whose endpoints this fake lacks);
- ``POST /api/models/{repo}/commit/{revision}``: the NDJSON commit (a header line, then one line per file).

Any other request is recorded and answered 404, so a test sees a client that calls more than these.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.doubles.local_server import LocalServer

_REPO_ACTION = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>preupload|commit)/(?P<revision>[^/?]+)")


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case (HTTP header names are case-insensitive)
    body: bytes


@dataclass
class FakeRepo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)  # path in the repo -> content, after the last commit
    commits: list[str] = field(default_factory=list)  # commit oids, oldest first


class FakeHub(LocalServer):
    """``endpoint`` is the URL to give ``HfApi(endpoint=...)``; ``requests`` lists what arrived, in order;
    ``repos`` maps a repo id (``namespace/name``) to its :class:`FakeRepo`."""

    def __init__(self) -> None:
        self.requests: list[HubRequest] = []
        self.repos: dict[str, FakeRepo] = {}
        self._lock = threading.Lock()
        super().__init__(self._handler())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, request: HubRequest) -> tuple[int, dict[str, Any]]:
        """The status and JSON body the Hub would send back."""
        if request.method == "POST" and request.path == "/api/repos/create":
            return self._create_repo(json.loads(request.body))
        match = _REPO_ACTION.match(request.path)
        if request.method != "POST" or match is None:
            return 404, {"error": f"the fake Hub does not serve {request.method} {request.path}"}
        repo = self.repos.get(match["repo"])
        if repo is None:
            return 404, {"error": "Repository not found"}
        if match["action"] == "preupload":
            files = json.loads(request.body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        return self._commit(match["repo"], repo, request.body)

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
        self.repos[repo_id] = FakeRepo(private=payload.get("visibility") == "private")
        return 200, {"url": f"{self.endpoint}/{repo_id}"}

    def _commit(self, repo_id: str, repo: FakeRepo, body: bytes) -> tuple[int, dict[str, Any]]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return 400, {"error": "a commit starts with its header line"}
        added = {}
        for line in lines[1:]:
            if line["key"] != "file" or line["value"].get("encoding") != "base64":
                return 400, {"error": f"the fake Hub takes only inline base64 files, got {line['key']}"}
            added[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        repo.files.update(added)
        oid = hashlib.sha1(body + str(len(repo.commits)).encode()).hexdigest()
        repo.commits.append(oid)
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                request = HubRequest(self.command, self.path, headers, body)
                with hub._lock:
                    hub.requests.append(request)
                    status, reply = hub.answer(request)
                data = json.dumps(reply).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815 (the names http.server dispatches to)

            def log_message(self, format: str, *args: Any) -> None:
                """Silence http.server's per-request lines on stderr."""

        return Handler
