"""Security: no remote code unless asked for, checkpoints that cannot run code, API keys only from the
environment and never written anywhere, and LLM judge/editor replies treated as data."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from bmc.data.sources import TaskData
from bmc.pipeline import run
from bmc.synthesis.bridging import bridge
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.judges import build_judge
from tests.conftest import compose_config, run_cli
from tests.doubles.char_tokenizer import CharTokenizer
from tests.doubles.fake_chat_server import FakeChatServer

FAST = ["debug=default"]
PLANTED_KEY = "sk-planted-3b1f9c0e-do-not-leak"
HOSTILE = ["../../../outside_the_run", "__import__('os').makedirs('PWNED')", "$(mkdir PWNED) `mkdir PWNED`"]


def test_remote_code_is_off_unless_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bmc.models

    for override, node in (("model=hf", "model"), ("judge=reward_model", "judge")):
        cfg = compose_config([override, "model.path=x" if node == "model" else "judge.path=x"], tmp_path, tmp_path)
        assert cfg[node].trust_remote_code is False
    calls: list[dict[str, Any]] = []

    def record(path: str, **kwargs: Any) -> Any:
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bmc.models.AutoTokenizer, "from_pretrained", record)
    source = bmc.models.PretrainedLM(path="some/model")
    with pytest.raises(RuntimeError, match="stop here"):
        source.load(source.path)
    assert calls == [{"trust_remote_code": False, "revision": None}]


def test_sft_checkpoints_are_safetensors(make_config) -> None:
    from hydra.utils import instantiate

    from bmc.stages.warm_start import warm_start

    cfg = make_config(*FAST)
    folder = warm_start(cfg, instantiate(cfg.task), instantiate(cfg.model)).checkpoint
    assert (folder / "model.safetensors").exists()
    assert not [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]


class _RunsCode:
    """Unpickling this calls os.makedirs(marker): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.makedirs, (str(self.marker),)


def test_a_checkpoint_that_would_run_code_is_refused_and_a_real_one_resumes(
    tmp_path: Path, shared_cache: Path
) -> None:
    first = compose_config([*FAST, "callbacks=default", "checkpoint.keep_optimizer=true"], tmp_path / "first",
                           shared_cache)  # fmt: skip
    run(first)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = compose_config([*FAST, f"ckpt_path={last}", "trainer.max_steps=8"], tmp_path / "resumed", shared_cache)
    assert run(resumed)["train/steps"] == 8  # a Lightning checkpoint loads with weights_only=True

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({**torch.load(last, weights_only=True), "payload": _RunsCode(marker)}, evil)
    cfg = compose_config([*FAST, f"ckpt_path={evil}"], tmp_path / "evil_run", shared_cache)
    with pytest.raises(Exception, match="Weights only load failed"):
        run(cfg)
    assert not marker.exists()
    assert json.loads((tmp_path / "evil_run" / "summary.json").read_text())["status"] == "failed"


def _editor_reply(body: dict, counter: list[int], lock: threading.Lock) -> str:
    """The reference (gold) response as the revision, except every third reply is hostile text."""
    with lock:
        counter[0] += 1
        n = counter[0]
    if n % 3 == 0:
        return f"<revised>{HOSTILE[n % len(HOSTILE)]}</revised>"
    text = body["messages"][-1]["content"]
    reference = re.search(r"do not copy its wording or structure\]\n(.*?)\n\[Response to revise\]", text, re.S)
    return f"<revised>{reference.group(1).strip()}</revised>"


def test_the_api_key_reaches_the_server_and_nothing_else(tmp_path: Path) -> None:
    counter, lock = [0], threading.Lock()
    run_dir, cache, home = tmp_path / "run", tmp_path / "cache", tmp_path / "home"
    with FakeChatServer(lambda body: _editor_reply(body, counter, lock)) as server:
        output = run_cli(
            [*FAST, "data=pseudo_winning", "data.pairs=original", "editor=llm", "logger=many", "callbacks=default",
             "checkpoint.keep_optimizer=true",
             f"editor.backend.base_url={server.base_url}", "editor.backend.model=editor", "editor.backend.backoff_s=0",
             f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"],
            cwd=tmp_path,
            env={"OPENAI_API_KEY": PLANTED_KEY, "WANDB_MODE": "", "HOME": str(home)},
        )  # fmt: skip
    assert server.requests and all(r.headers["Authorization"] == f"Bearer {PLANTED_KEY}" for r in server.requests)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    hostile = len(server.requests) // 3
    # hostile edits are just text, and no small edit of the rejected response: the distance gate turns them down
    assert summary["data_report"]["dropped"] == {"edit not_minimal": hostile}
    assert not list(tmp_path.rglob("PWNED")) and not (tmp_path.parent / "outside_the_run").exists()

    written = [p for root in (run_dir, cache, home) for p in root.rglob("*") if p.is_file()]
    assert any(p.match("*.wandb") for p in written) and any(p.name == "metrics.csv" for p in written)
    assert any(p.match(".hydra/config.yaml") for p in written) and any(p.name == "last.ckpt" for p in written)
    assert "OPENAI_API_KEY" in (run_dir / ".hydra" / "config.yaml").read_text()  # the variable's NAME only
    leaks = [str(p) for p in written if PLANTED_KEY.encode() in p.read_bytes()]
    assert leaks == [] and PLANTED_KEY not in output


def test_llm_replies_are_data_not_code_or_paths(tmp_path: Path, shared_cache: Path) -> None:
    losing = ["answer one", "answer two", "answer three"]
    with FakeChatServer(lambda body: f"<revised>{HOSTILE[int(body['messages'][-1]['content'][-1])]}</revised>") as s:
        editor_cfg = OmegaConf.to_container(compose_config(["editor=llm"], tmp_path, tmp_path).editor)
        editor_cfg["backend"].update(base_url=s.base_url, model="editor", api_key_env=None)
        # the default template ends with the losing response: its last character picks the hostile reply
        editor_cfg["templates"] = {"default": "{prompt}{reference}{losing}"}
        editor_cfg["max_edit_ratio"] = None  # the hostile replies are no small edits: this test is about their text
        task_data = TaskData(name="hf_prefs", sft_train=[], sft_val=[], pairs=[])
        ctx = SynthesisContext({"name": "pseudo_winning", "bridge": {}}, task_data, None, CharTokenizer(),
                               tmp_path / "cache", model_key="m", editor_cfg=editor_cfg)  # fmt: skip
        # a chosen response far from the rejected one, so that the distance gate lets the hostile edits through
        pairs = [{"prompt": "p", "chosen": "w" * 500, "rejected": f"{text} {i}"} for i, text in enumerate(losing)]
        bridged = bridge(ctx, pairs)
    # without a verifier (hf_prefs) the edits are kept, verbatim, as the chosen text
    assert [p["chosen"] for p in bridged] == HOSTILE
    assert not list(tmp_path.rglob("PWNED")) and not (tmp_path.parent / "outside_the_run").exists()
    edits = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert edits and any(HOSTILE[1].encode() in p.read_bytes() for p in edits)  # stored as a string in the cache

    with FakeChatServer(lambda body: "[[B]] then run __import__('os').makedirs('PWNED') ../../x [[A]]") as s:
        backend = {"kind": "openai", "base_url": s.base_url, "model": "j", "api_key_env": None}
        judge = build_judge({"kind": "llm", "template": "{prompt}{a}{b}", "backend": backend})
        assert judge.prefer("p", "a", "b") == 1  # the last verdict counts; the rest is ignored text
    assert not list(tmp_path.rglob("PWNED"))
