"""``export.push_to_hub``: the exported folder reaches the Hub (a local fake of its API, tests/doubles/fake_hub.py) byte
for byte, with the token of ``HF_TOKEN`` and nothing else; the summary records the repo and the commit; a run
that could not push fails before training, and the token is written nowhere."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import huggingface_hub.constants
import pytest
from omegaconf import OmegaConf

from bmc.pipeline import run
from bmc.stages.export import push_to_hub
from tests.conftest import compose_config
from tests.doubles.fake_hub import FakeHub

FAST = ["debug=default", "eval.enabled=false"]
REPO = "me/bmc-policy"
PLANTED_TOKEN = "hf_planted_7d2e41a9_do_not_leak"
EXPORTED = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake Hub is local: the tests run in huggingface_hub's online mode even where the machine is offline
    (huggingface_hub reads HF_HUB_OFFLINE once, at import)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_exported_folder_is_pushed_with_the_token_and_the_token_is_written_nowhere(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd
) -> None:
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    caplog.set_level(logging.DEBUG)  # every record of every logger, huggingface_hub's included
    with FakeHub() as hub:
        cfg = make_config(*FAST, f"export.push_to_hub={REPO}", f"export.hub_endpoint={hub.endpoint}")
        run(cfg)
    run_dir = tmp_path / "run"
    exported = _files(run_dir / "model")
    assert EXPORTED <= exported.keys()
    repo = hub.repos[REPO]
    assert repo.private is True and repo.files == exported and len(repo.commits) == 1
    assert [(r.method, r.path) for r in hub.requests] == [
        ("POST", "/api/repos/create"),
        ("POST", f"/api/models/{REPO}/preupload/main"),
        ("POST", f"/api/models/{REPO}/commit/main"),
    ]
    assert all(r.headers["authorization"] == f"Bearer {PLANTED_TOKEN}" for r in hub.requests)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model_dir"] == str(run_dir / "model")
    assert summary["export/hub_repo"] == REPO and summary["export/hub_commit"] == repo.commits[0]
    assert summary["export/hub_commit_url"] == f"{hub.endpoint}/{REPO}/commit/{repo.commits[0]}"

    leaks = [str(p) for p in run_dir.rglob("*") if p.is_file() and PLANTED_TOKEN.encode() in p.read_bytes()]
    assert leaks == []
    # the resolved config is what Hydra writes to .hydra/config.yaml and the loggers record as hyperparameters
    assert PLANTED_TOKEN not in OmegaConf.to_yaml(cfg, resolve=True)
    output = capfd.readouterr()
    assert PLANTED_TOKEN not in caplog.text + output.out + output.err
    assert f"pushed {run_dir / 'model'} to the Hub repo {REPO}" in caplog.text


def test_a_public_repo_and_a_second_push_to_the_same_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``export.private=false`` creates a public repo; pushing again (a rerun) commits on top of the repo that
    exists, which keeps its visibility."""
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)))
    with FakeHub() as hub:
        cfg = compose_config([f"export.push_to_hub={REPO}", f"export.hub_endpoint={hub.endpoint}",
                              "export.private=false"], tmp_path / "run")  # fmt: skip
        first = push_to_hub(cfg, folder)
        (folder / "config.json").write_text('{"a": 2}')
        cfg.export.private = True
        second = push_to_hub(cfg, folder)
    repo = hub.repos[REPO]
    assert repo.private is False and repo.files == _files(folder) and repo.commits == [first.commit, second.commit]
    assert first.repo_id == second.repo_id == REPO and first.commit != second.commit
    assert [r.path for r in hub.requests].count("/api/repos/create") == 2


@pytest.mark.parametrize(
    ("token", "overrides", "message"),
    [
        (None, [], "export.push_to_hub needs HF_TOKEN in the environment"),
        ("", [], "export.push_to_hub needs HF_TOKEN in the environment"),
        (PLANTED_TOKEN, ["export.enabled=false"], "export.push_to_hub uploads the exported folder"),
        (PLANTED_TOKEN, ["export.push_to_hub=bmc-policy"], "must be a repo id <namespace>/<name>"),
        (PLANTED_TOKEN, ["export.push_to_hub='me/bad name'"], "Repo id must use alphanumeric chars"),
    ],
    ids=["no HF_TOKEN", "empty HF_TOKEN", "no export", "no namespace", "bad name"],
)
def test_a_push_that_cannot_happen_fails_before_training(
    token: str | None, overrides: list[str], message: str, make_config, tmp_path: Path, monkeypatch
) -> None:
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    with FakeHub() as hub:
        cfg = make_config(*FAST, f"export.push_to_hub={REPO}", f"export.hub_endpoint={hub.endpoint}", *overrides)
        with pytest.raises(ValueError, match=message):
            run(cfg)
    assert hub.requests == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and message in summary["error"] and summary["metrics"] == {}
    # no stage ran: no SFT checkpoint in the cache, no exported model
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "model").exists()


def test_offline_mode_fails_before_training(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="cannot upload in huggingface_hub's offline mode"):
        run(make_config(*FAST, f"export.push_to_hub={REPO}"))
