"""Bad options: an unknown config name lists the choices, out-of-range options fail before a model is built, and the CLI
reports a bad option in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from bmc.pipeline import run
from tests.conftest import ROOT, THREADS, compose_config


@pytest.mark.parametrize(("group", "name"), [("loss", "dpoo"), ("data", "sampeld"), ("model", "gpt9")])
def test_an_unknown_config_name_lists_the_available_choices(group: str, name: str, tmp_path: Path) -> None:
    with pytest.raises(MissingConfigException, match=rf"Could not find '{group}/{name}'") as error:
        compose_config([f"{group}={name}"], tmp_path / "run", tmp_path / "cache")
    assert f"Available options in '{group}'" in str(error.value)
    assert {"loss": "dpo", "data": "sampled", "model": "tiny"}[group] in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=robust", "loss.eps=0.5"], r"loss 'robust': eps=0.5 is out of range \[0.0, 0.5\)"),
        (["loss.beta=-0.1"], r"loss 'dpo': beta=-0.1 is out of range \(0.0, inf\)"),
        (["token_weighting=bmc", "token_weighting.delta=-1"], r"token weighting 'bmc': delta=-1 is out of range"),
        (["regularizer=bcr", "regularizer.delta=-0.05"], r"regularizer 'bcr': delta=-0.05 is out of range"),
        (["loss=dpo", "+loss.gamma=1"], r"loss 'dpo' got unknown option\(s\) \['gamma'\]"),
        (["truncation.max_prompt_length=300"], r"need 0 < max_prompt_length < max_length"),
    ],
)
def test_out_of_range_options_fail_before_any_model_is_built(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    cfg = compose_config(["debug=default", *overrides], tmp_path / "run", tmp_path / "cache")
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not (tmp_path / "cache").exists()  # no SFT model was trained or cached
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("ValueError: ") and summary["metrics"] == {}


def test_the_cli_reports_a_bad_option_in_one_line_without_a_torch_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "debug=default", "loss=robust", "loss.eps=0.5",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, **THREADS},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "ValueError: loss 'robust': eps=0.5 is out of range [0.0, 0.5)" in proc.stderr
    assert "torch" not in proc.stderr and "lightning" not in proc.stderr
    assert not (tmp_path / "cache").exists()
