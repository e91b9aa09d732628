"""The main job's shape: every method preset runs under debug, each stage builds only what it needs, runs are
named after the presets that ran, the prompts are rendered once, the package imports without cycles, and the tests are
laid out like it."""

from __future__ import annotations

import ast
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from bmc.data.render import render_task
from bmc.data.sources import TaskData
from bmc.module import PreferenceModule
from bmc.pipeline import run
from bmc.report.records import RunRecord
from bmc.synthesis.sampler import task_completions
from bmc.tasks import MathTask
from tests.conftest import CONF, ROOT

METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_preset_runs_end_to_end_under_debug(method: str, make_config, tmp_path: Path) -> None:
    metrics = run(make_config("debug=default", f"method={method}"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["presets"]["method"] == method
    # method=sft is the warm start as is, also under the debug preset's step budget
    assert metrics["train/steps"] == (0 if method == "sft" else 6)
    assert metrics["data/pairs_out"] >= 2 and math.isfinite(metrics["val/loss"])
    assert metrics["eval/num_prompts"] == 8
    if method in ("dpo_bc", "dpo_bmc"):  # the debug sampler's errors are fixable: every pair is bridged
        assert metrics["data/edits_accepted"] == 1.0 and summary["data_report"]["chosen_verifier_accept"] == 1.0


def test_debug_preset_caps_every_training_stage_and_samples_from_the_task(make_config) -> None:
    cfg = make_config("debug=default", "method=rm_score")
    assert cfg.stage_max_steps == 4 and cfg.data.sampler.backend == "task"
    assert cfg.trainer.max_steps == 6 and cfg.judge.train.steps == 400  # the reward model's own setting stays


def test_task_completions_hold_the_gold_and_realistic_errors_in_a_seeded_order() -> None:
    task = MathTask()
    examples = task.examples("pref", 6, seed=0)
    samples = task_completions(task, examples, n=4, seed=1)
    assert [s["prompt"] for s in samples] == [e.prompt for e in examples]
    for sample, example in zip(samples, examples):
        assert len(sample["completions"]) == 4 and sample["truncated"] == [False] * 4
        scores = [task.score(example, c) for c in sample["completions"]]
        assert scores.count(1.0) >= 1 and min(scores) < 1.0  # the gold, and at least one wrong answer
        assert all(task.minimal_fix(example, c) is not None for c in sample["completions"] if c != example.gold)
    assert task_completions(task, examples, n=4, seed=1) == samples
    assert task_completions(task, examples, n=4, seed=2) != samples


def _write_rows(path: Path, n: int) -> Path:
    rows = [{"prompt": f"What is {i} plus one?", "chosen": f" It is {i + 1}.", "rejected": f" It is {i + 2}."}
            for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_only_run_of_the_tasks_own_pairs_builds_no_model(make_config, tmp_path: Path, monkeypatch) -> None:
    import bmc.models
    from bmc.synthesize import prepare_data

    def refuse(*args, **kwargs):
        raise AssertionError("data=original must not build, train or load a model")

    for name in ("build", "load"):
        monkeypatch.setattr(bmc.models.TinyLlama, name, refuse)
    path = _write_rows(tmp_path / "prefs.jsonl", 12)
    data = prepare_data(make_config("task=hf_prefs", f"task.path={path}", "task.sizes.sft_val=2", "data=original"))
    assert data.policy.model is None and data.policy.checkpoint is None
    assert data.report["pairs_out"] == len(data.pairs) == 12
    assert data.report["edit_distance_before"] > 0  # token counts come from the tokenizer the warm start would save
    assert not (tmp_path / "cache" / "sft").exists()
    # the built-in task too, whose SFT would otherwise train up to 2000 steps first
    assert prepare_data(make_config("data=original")).report["pairs_out"] == 1000


class _Template:
    """A tokenizer stand-in with a chat template: renders messages as tagged turns."""

    chat_template = "tagged"

    def apply_chat_template(self, messages, tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def test_conversational_prompts_are_rendered_once_for_sft_and_preference_pairs() -> None:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    data = TaskData(
        name="conv",
        sft_train=[{"prompt": prompt, "response": " Hello."}],
        sft_val=[{"prompt": prompt, "response": " Hello."}],
        pairs=[{"prompt": prompt, "chosen": " Hello.", "rejected": " Go away."}],
    )
    rendered = render_task(data, _Template())
    text = "<system>Be brief.</system><user>Hi?</user><assistant>"
    assert rendered.sft_train[0]["prompt"] == rendered.sft_val[0]["prompt"] == rendered.pairs[0]["prompt"] == text
    assert rendered.pairs[0]["chosen"] == " Hello." and data.pairs[0]["prompt"] == prompt  # the input is kept
    plain = render_task(data, None)  # no chat template (the tiny model): plain lines, the same for every stage
    assert plain.sft_train[0]["prompt"] == plain.pairs[0]["prompt"] == "system: Be brief.\nuser: Hi?\nassistant:"
    assert plain.corpus() == ["system: Be brief.\nuser: Hi?\nassistant: Hello."]


def test_run_folder_wandb_tags_and_summary_name_the_loss_preset() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["loss=bmc", "data=sampled"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert cfg.loss.name == "dpo"  # the registry's loss: BMC is DPO with BMC token weighting
    assert OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=True).endswith("_bmc_sampled_s0")
    assert "loss:bmc" in OmegaConf.to_container(cfg.logger.wandb.tags, resolve=True)
    from bmc.stages.summary import preset_names

    assert preset_names()["loss"] == "bmc" and preset_names()["data"] == "sampled"


def test_report_rows_use_the_recorded_preset_over_the_loss_name() -> None:
    config = {"loss": {"name": "dpo", "beta": 0.05}, "presets": {"loss": "bmc"}}
    assert RunRecord(name="r", status="completed", config=config, metrics={}).setting("loss") == "bmc"
    older = {"loss": {"name": "dpo", "beta": 0.05}}  # a summary.json written before presets were recorded
    assert RunRecord(name="r", status="completed", config=older, metrics={}).setting("loss") == "dpo"


class RecordingModule(PreferenceModule):
    """A user's subclass, swapped in by ``module._target_``."""

    built: list[str] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        RecordingModule.built.append(kwargs["loss"]["name"])


def test_the_lightning_module_is_built_from_its_target(make_config) -> None:
    RecordingModule.built.clear()
    run(make_config("debug=default", "loss=ipo", f"module._target_={__name__}.RecordingModule", "eval.enabled=false"))
    assert RecordingModule.built == ["ipo"]


def _imports(path: Path) -> set[str]:
    """The ``bmc`` modules a source file imports at run time (``TYPE_CHECKING`` blocks excluded)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bmc"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bmc"))
    return found


def test_the_package_has_no_import_cycle_and_no_test_doubles() -> None:
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "bmc").rglob("*.py")}  # fmt: skip
    graph = {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dependency in sorted(graph[name]):
            if state.get(dependency) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*trail, name, dependency])}")
            if dependency not in state:
                visit(dependency, [*trail, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert "bmc.pipeline" in graph and graph["bmc.pipeline"]  # the walk saw the package
    assert not [n for n in files if "testing" in n or "fake" in n]  # test doubles live in tests/


#: test files of the tests/ root that test no one module: the config presets and these house rules
UNMAPPED_TESTS = {"test_config.py", "test_house.py"}
#: the tests/ root's other modules: fixtures, the conformance matrix (docs/architectures.md's source) and the real
#: checkpoint's builder (``python -m tests.real_checkpoint``)
ROOT_MODULES = {"__init__.py", "conftest.py", "conformance.py", "real_checkpoint.py"}


def _tested_module(test: Path) -> Path | None:
    """The module a test file is named after: tests/<sub>/test_<m>.py or test_<m>_<topic>.py tests bmc/<sub>/<m>.py
    (the longest such module; test_main.py tests __main__.py), None when there is none."""
    package = ROOT / "bmc" / test.parent.relative_to(ROOT / "tests")
    parts = test.stem.removeprefix("test_").split("_")
    for n in range(len(parts), 0, -1):
        name = "_".join(parts[:n])
        module = package / ("__main__.py" if name == "main" else f"{name}.py")
        if module.is_file():
            return module
    return None


def test_no_module_name_repeats_in_the_package() -> None:
    """A module is found by its name alone: two ``rounds.py`` under bmc/ are two rooms with one door sign."""
    names = Counter(p.name for p in (ROOT / "bmc").rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not [name for name, count in names.items() if count > 1]


def test_the_tests_are_laid_out_like_the_package() -> None:
    tests = ROOT / "tests"
    files = sorted(tests.rglob("*.py"))
    assert _tested_module(tests / "test_winrate_stats.py") == ROOT / "bmc" / "winrate_stats.py"
    assert _tested_module(tests / "synthesis" / "test_pair_sources_gates.py") == ROOT / "bmc/synthesis/pair_sources.py"
    assert _tested_module(tests / "bench" / "test_main.py") == ROOT / "bmc" / "bench" / "__main__.py"
    assert _tested_module(tests / "stages" / "test_pairwise.py") is None  # bmc/losses/pairwise.py is not a stage
    unmapped = [p.relative_to(tests) for p in files if p.name.startswith("test_") and p.parent.name != "end_to_end"
                and not (p.parent == tests and p.name in UNMAPPED_TESTS) and _tested_module(p) is None]  # fmt: skip
    assert not unmapped, f"name these tests after the bmc module they test, or move them to end_to_end/: {unmapped}"
    doubles = [p.relative_to(tests) for p in files if not p.name.startswith("test_") and p.name != "__init__.py"
               and p.parent.name != "doubles" and not (p.parent == tests and p.name in ROOT_MODULES)]  # fmt: skip
    assert not doubles, f"test doubles and shared builders live in tests/doubles/: {doubles}"
    assert not [p for p in files if p.parent.name == "doubles" and p.name.startswith("test_")]
    assert not [d for d in {p.parent for p in files} if not (d / "__init__.py").is_file()]
    # a helper two test files share is a double: no test file imports another
    imported = {(p.relative_to(tests), m) for p in files for m in _test_imports(p)}
    assert not imported, f"import shared helpers from tests/doubles/, not from a test file: {sorted(imported)}"


def _test_imports(path: Path) -> set[str]:
    """The test modules (``tests....test_*``) a file of tests/ imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("tests.") and n.rsplit(".", 1)[-1].startswith("test_")}


def test_generation_stops_at_every_end_token_of_the_generation_config() -> None:
    """A chat model lists its end-of-turn tokens in ``generation_config.eos_token_id`` beside EOS: an answer
    ends at the first of any, and counts as finished."""
    from types import SimpleNamespace

    import torch

    from bmc.generation import generate, stop_token_ids
    from bmc.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["It is 42. The answer is 42."] * 4, vocab_size=300)
    end_of_turn = len(tokenizer) - 1
    answer = tokenizer(" It is", add_special_tokens=False)["input_ids"]
    seen = {}

    class Scripted(torch.nn.Module):  # "generates" the answer, then end-of-turn, then more text
        generation_config = SimpleNamespace(eos_token_id=[tokenizer.eos_token_id, end_of_turn])

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, eos_token_id, **kwargs):
            seen["eos_token_id"] = eos_token_id
            tail = [*answer, end_of_turn, *answer]
            return torch.cat([input_ids, torch.tensor([tail] * input_ids.shape[0])], dim=1)

    model = Scripted()
    assert stop_token_ids(model, tokenizer) == [tokenizer.eos_token_id, end_of_turn]
    ((text, truncated),) = generate(model, tokenizer, ["Q?"], max_new_tokens=8, progress=False)
    assert text == " It is" and not truncated and seen["eos_token_id"] == [tokenizer.eos_token_id, end_of_turn]
