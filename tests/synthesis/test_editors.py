"""Editors for BMC's Bridging phase: the built-in tasks' minimal fix and the LLM editor behind a local server."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bmc.generation import Completion
from bmc.synthesis.editors import Edit, LLMEditor, TaskEditor, build_editor, extract_revision
from bmc.tasks import TASKS
from tests.conftest import compose_config
from tests.doubles.fake_chat_server import FakeChatServer, chat_completion

# ------------------------------------------------------------------ task editor


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_editor_fixes_wrong_responses_and_keeps_the_text_before_the_first_error(name: str) -> None:
    task = TASKS[name]()
    examples = task.examples("pref", 40, seed=0)
    editor = build_editor({"kind": "task"}, task=task, examples=examples, task_type=name)
    assert isinstance(editor, TaskEditor)
    rng = random.Random(0)
    wrong = [task.corrupt(e, rng) for e in examples]
    assert all(task.score(e, w) < 1.0 for e, w in zip(examples, wrong))
    fixed = [e.text for e in editor.edit_many([e.prompt for e in examples], [e.gold for e in examples], wrong)]
    for example, y_l, y_tilde in zip(examples, wrong, fixed):
        assert task.score(example, y_tilde) == 1.0, (y_l, y_tilde)
        first_error = len(os.path.commonprefix([y_l, example.gold]))
        assert y_tilde.startswith(y_l[:first_error]), (y_l, y_tilde)
    # A correct response is already fine: returned unchanged.
    assert editor.edit(examples[0].prompt, examples[0].gold, examples[0].gold) == Edit(examples[0].gold)


def test_qa_editor_fixes_an_answer_only_response_by_its_letter() -> None:
    task = TASKS["qa"]()
    example = task.examples("pref", 1, seed=0)[0]
    wrong = next(letter for letter in "ABCD" if letter != example.meta["answer"])
    editor = TaskEditor(task, [example])
    # an instruct model's answer without the rationale: the letter is the minimal fix, later text goes
    fixed = editor.edit(example.prompt, example.gold, f"The answer is ({wrong}).\n\nBecause it is.").text
    assert fixed == f"The answer is ({example.meta['answer']})." and task.score(example, fixed) == 1.0
    # text before the answer that is not the rationale cannot be checked: no fix
    assert editor.edit(example.prompt, example.gold, f"Hmm. The answer is ({wrong}).").problem == "no fix"


def test_task_editor_crafted_cases() -> None:
    task = TASKS["math"]()
    example = task.examples("pref", 1, seed=0)[0]
    editor = TaskEditor(task, [example])
    # An early slip propagates; the fix keeps the correct first operands and repairs what follows.
    gold_steps = example.gold.split("; ")
    slipped = gold_steps[0].rsplit("=", 1)[0] + "=1"
    fixed = editor.edit(example.prompt, example.gold, " " + slipped.strip() + ". The answer is 1.").text
    assert fixed is not None and task.score(example, fixed) == 1.0 and fixed.startswith(slipped.split("=")[0])
    assert editor.edit(example.prompt, example.gold, " I do not know.") == Edit(None, "no fix")  # nothing to fix
    with pytest.raises(KeyError, match="no task example"):
        editor.edit("another prompt", "a", "b")
    with pytest.raises(ValueError, match="editor=task needs a built-in task"):
        build_editor({"kind": "task"})


# ------------------------------------------------------------------ LLM editor


@pytest.mark.parametrize(
    "reply,truncated,expected",
    [
        ("<revised>\n 12+3=15. The answer is 15.\n</revised>", False, Edit("12+3=15. The answer is 15.")),
        ("Here it is:\n<REVISED>fixed</Revised>\nHope this helps.", False, Edit("fixed")),
        ("I will wrap it in <revised> tags.\n<revised>second</revised>", False, Edit("second")),
        # finished without the closing tag: the block runs to the end
        ("<revised>all of it", False, Edit("all of it")),
        # the token budget cut the block off: the edit stops mid-way
        ("<revised>cut off by the token bud", True, Edit(None, "truncated", "<revised>cut off by the token bud")),
        ("Let me think about what is wrong", True, Edit(None, "truncated", "Let me think about what is wrong")),
        # cut off after the block closed: the edit is whole
        ("<revised>whole</revised> And a long note that", True, Edit("whole")),
        # no <revised> block: the model answered instead of editing
        ("just the answer</revised>", False, Edit(None, "unparseable", "just the answer</revised>")),
        ("12+3=15. The answer is 15.", False, Edit(None, "unparseable", "12+3=15. The answer is 15.")),
        ("<revised>  </revised>", False, Edit(None, "empty", "<revised>  </revised>")),
        ("", False, Edit(None, "empty", "")),
    ],
)
def test_extract_revision(reply: str, truncated: bool, expected: Edit) -> None:
    assert extract_revision(Completion(reply, truncated)) == expected
    assert expected.failed == (expected.text is None)


@pytest.fixture
def editor_cfg(tmp_path: Path) -> dict:
    """``conf/editor/llm.yaml`` as Hydra composes it for ``editor=llm``."""
    return OmegaConf.to_container(compose_config(["editor=llm"], tmp_path / "run", tmp_path / "cache").editor)


def _configured(editor_cfg: dict, server: FakeChatServer, **overrides: object) -> dict:
    editor_cfg["backend"].update(base_url=server.base_url, model="editor", api_key_env=None, backoff_s=0.0)
    return {**editor_cfg, **overrides}


PROMPT = "Ivy has 72 stickers. She finds 83 more. How many stickers does she have now?\nAnswer:"
WINNING = " 72+83=155. The answer is 155."
LOSING = " 72+83=165. The answer is 165."


def test_llm_editor_asks_for_a_minimal_edit_with_the_reference_and_strips_the_tags(
    editor_cfg: dict,
) -> None:
    with FakeChatServer(lambda body: "<revised>\n72+83=155. The answer is 155.\n</revised>") as server:
        editor = build_editor(_configured(editor_cfg, server), task_type="math")
        assert isinstance(editor, LLMEditor)
        edited = editor.edit(PROMPT, WINNING, LOSING).text
    assert edited == " 72+83=155. The answer is 155."  # tags stripped, the losing response's leading space kept
    body = server.requests[0].json
    assert body["temperature"] == 0.0 and body["model"] == "editor"
    system, user = body["messages"]
    assert "smallest possible change" in system["content"]
    text = user["content"]
    assert "[Problem]" in text  # the math template
    assert PROMPT in text and LOSING.strip() in text and WINNING.strip() in text
    assert text.index(WINNING.strip()) < text.index("[Response to revise]") < text.index(LOSING.strip())
    assert "<revised>" in text


def test_llm_editor_without_reference_never_shows_the_winning_response(editor_cfg: dict) -> None:
    with FakeChatServer(lambda body: "<revised>72+83=155. The answer is 155.</revised>") as server:
        editor = build_editor(_configured(editor_cfg, server, use_reference=False), task_type="math")
        assert editor.edit(PROMPT, WINNING, LOSING) == Edit(" 72+83=155. The answer is 155.")
    text = server.requests[0].json["messages"][-1]["content"]
    assert LOSING.strip() in text and WINNING.strip() not in text and "reference" not in text.lower()


def test_llm_editor_picks_the_template_by_task_type_and_keeps_order(editor_cfg: dict) -> None:
    def revise(body: dict) -> str:
        text = body["messages"][-1]["content"]
        losing = text.split("[Response to revise]\n")[1].split("\n\n")[0]
        return "" if losing == "empty" else f"<revised>{losing.upper()}</revised>"

    losing = [f"answer {i}" for i in range(6)] + ["empty"]
    with FakeChatServer(revise, delay_s=0.01) as server:
        editor = build_editor(_configured(editor_cfg, server), task_type="hf_prefs")
        edits = editor.edit_many(["p"] * len(losing), ["w"] * len(losing), losing)
    assert edits == [Edit(f"ANSWER {i}") for i in range(6)] + [Edit(None, "empty", "")]  # in order
    assert all("[Prompt]" in r.json["messages"][-1]["content"] for r in server.requests)  # the default template


def test_a_cut_off_edit_is_rejected_as_truncated_not_accepted(editor_cfg: dict) -> None:
    """An editor whose reply the token budget cut off (finish_reason length, an unclosed block): no edit."""
    cut = "<revised>\n72+83=155. The answer is"
    with FakeChatServer(lambda body: chat_completion(cut, "length")) as server:
        editor = build_editor(_configured(editor_cfg, server, max_tokens=12), task_type="math")
        edit = editor.edit(PROMPT, WINNING, LOSING)
    assert edit == Edit(None, "truncated", cut) and edit.failed
    assert server.requests[0].json["max_tokens"] == 12
    backend = f"OpenAIChat(base_url={server.base_url!r}, model='editor', api_key_env=None)"
    assert repr(editor) == f"LLMEditor(backend={backend})"  # what an error about its replies names


def test_llm_editor_rejects_bad_templates(editor_cfg: dict) -> None:
    with pytest.raises(ValueError, match="editor template 'math'"):
        LLMEditor(backend=None, templates={"math": "{prompt} {winning} {losing}"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no 'default' one"):
        LLMEditor(backend=None, templates={"math": "{prompt}{reference}{losing}"}, task_type="qa")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['use_refrence'\]"):
        build_editor({**editor_cfg, "backend": {**editor_cfg["backend"], "model": "m"}, "use_refrence": False})
    with pytest.raises(ValueError, match=r"unknown editor 'human': editor.kind must be one of \['llm', 'task'\]"):
        build_editor({"kind": "human"})
