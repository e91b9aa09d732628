"""Every published preference layout read as it is (``bmc.data.layouts``): one fixture file per layout, written
here, its first row checked as read and as rendered, and the errors that name file, row and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bmc.data.hf_prefs import DataError, hf_preferences
from bmc.data.render import render_task


def _messages(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


SYSTEM, ASK, FOLLOW = ("system", "Answer briefly."), ("user", "What is 12 + 30?"), ("user", "And 12 + 31?")
FIRST = ("assistant", "42.")

# layout -> (rows, the first row as read: prompt, chosen, rejected)
LAYOUTS = {
    "standard": (
        [{"prompt": "What is 12 + 30?", "chosen": " 42.", "rejected": " 41."}],
        ("What is 12 + 30?", " 42.", " 41."),
    ),
    "standard_implicit": (
        [{"chosen": "Q: what is 12 + 30? A: It is 42.", "rejected": "Q: what is 12 + 30? A: It is 41, I think."}],
        ("Q: what is 12 + 30? A: It is", " 42.", " 41, I think."),
    ),
    "conversational": (  # multi-turn, with a system message, prompt implicit
        [{"chosen": _messages(SYSTEM, ASK, FIRST, FOLLOW, ("assistant", "43.")),
          "rejected": _messages(SYSTEM, ASK, FIRST, FOLLOW, ("assistant", "44."))}],
        (_messages(SYSTEM, ASK, FIRST, FOLLOW), "43.", "44."),
    ),
    "ultrafeedback_binarized": (  # a prompt string beside full conversations, and extra columns
        [{"prompt": "What is 12 + 30?", "prompt_id": "a1", "score_chosen": 9.0, "score_rejected": 3.5,
          "chosen": _messages(ASK, ("assistant", "It is 42.")), "rejected": _messages(ASK, ("assistant", "It is 24.")),
          "messages": _messages(ASK, ("assistant", "It is 42."))}],
        (_messages(ASK), "It is 42.", "It is 24."),
    ),
    "hh_rlhf": (  # two turns of the human, the answer to the second differs
        [{"chosen": "\n\nHuman: What is 12 + 30?\n\nAssistant: 42.\n\nHuman: And 12 + 31?\n\nAssistant: 43.",
          "rejected": "\n\nHuman: What is 12 + 30?\n\nAssistant: 42.\n\nHuman: And 12 + 31?\n\nAssistant: 44, maybe."}],
        (_messages(ASK, FIRST, FOLLOW), "43.", "44, maybe."),
    ),
    "ranked": (  # a prompt and scored completions (raw UltraFeedback's shape), best over worst
        [{"prompt": "What is 12 + 30?",
          "completions": [{"response": " 41.", "score": 2}, {"response": " 42.", "score": 9},
                          {"response": " 40.", "score": 1}]}],
        ("What is 12 + 30?", " 42.", " 40."),
    ),
}  # fmt: skip


def _file(tmp_path: Path, rows: list[dict], name: str = "prefs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read(path: Path, **options):
    return hf_preferences("hf_prefs", str(path), sizes={"sft_val": 1}, **options)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_is_read_as_published(layout: str, tmp_path: Path) -> None:
    rows, (prompt, chosen, rejected) = LAYOUTS[layout]
    second = json.loads(json.dumps(rows[0]).replace("12", "13"))  # the same shape, other numbers
    data = _read(_file(tmp_path, [rows[0], second]))
    # kept with the pair: the ranked scores, and every column no layout reads, as it is (lists included)
    extras = {
        "ranked": {"score_chosen": 9.0, "score_rejected": 1.0},
        "ultrafeedback_binarized": {"prompt_id": "a1", "score_chosen": 9.0, "score_rejected": 3.5,
                                    "messages": _messages(ASK, ("assistant", "It is 42."))},
    }.get(layout, {})  # fmt: skip
    assert data.pairs[0] == {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extras}
    assert len(data.pairs) == 2 and data.sft_train[0]["response"] == data.pairs[1]["chosen"]


class _ChatML:
    """A tokenizer stand-in with SmolLM2's ChatML chat template."""

    chat_template = "chatml"

    def apply_chat_template(self, messages, tokenize: bool, add_generation_prompt: bool) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def test_conversational_layouts_render_through_the_chat_template_and_standard_ones_as_they_are(tmp_path) -> None:
    hh = render_task(_read(_file(tmp_path, LAYOUTS["hh_rlhf"][0] * 2, "hh.jsonl")), _ChatML())
    assert hh.pairs[0]["prompt"] == (
        "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n42.<|im_end|>\n"
        "<|im_start|>user\nAnd 12 + 31?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert hh.sft_train[0]["prompt"] == hh.pairs[0]["prompt"]  # SFT and preference pairs: one rendering
    plain = render_task(_read(_file(tmp_path, LAYOUTS["standard"][0] * 2, "std.jsonl")), _ChatML())
    assert plain.pairs[0]["prompt"] == "What is 12 + 30?"


def test_format_names_the_layout_where_the_columns_leave_it_open(tmp_path: Path) -> None:
    rows = [{"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go."}]
    path = _file(tmp_path, rows)
    assert _read(path).pairs[0]["prompt"] == _messages(("user", "Hi?"))  # auto: HH-RLHF
    as_text = _read(path, format="standard_implicit").pairs[0]
    assert as_text["prompt"] == "\n\nHuman: Hi?\n\nAssistant:" and as_text["chosen"] == " Hello."
    with pytest.raises(DataError, match=r"task.format must be auto or one of .*got 'tsv'"):
        _read(path, format="tsv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "What is 2 + 2?", "chosen": _messages(ASK, FIRST), "rejected": _messages(ASK, ("assistant", "4"))},
         r"row 2, field 'prompt': 'What is 2 \+ 2\?' is not the conversation's last user turn"),
        ({"chosen": _messages(("user", " "), FIRST), "rejected": _messages(("user", " "), ("assistant", "41."))},
         r"row 2, field 'prompt': an empty user turn"),
        ({"chosen": _messages(("robot", "Hi"), FIRST), "rejected": _messages(("robot", "Hi"), ("assistant", "1"))},
         r"row 2, field 'prompt': unknown role 'robot'"),
    ],
)  # fmt: skip
def test_bad_conversational_rows_name_file_row_and_field(row: dict, message: str, tmp_path: Path) -> None:
    good = LAYOUTS["ultrafeedback_binarized"][0][0] if "prompt" in row else LAYOUTS["conversational"][0][0]
    with pytest.raises(DataError, match=r"prefs\.jsonl, " + message):
        _read(_file(tmp_path, [good, row]))


def test_an_empty_response_is_dropped_and_counted_in_every_layout(tmp_path: Path, caplog) -> None:
    """One drop policy: a row whose chosen or rejected response is empty is read, then dropped and counted under
    the same reason whatever its layout, never an error for the whole file."""
    cases = {  # layout -> (a row with an empty response, the reason it is dropped)
        "standard": ({"prompt": "Q?", "chosen": " ", "rejected": "No."}, "empty chosen"),
        "conversational": ({"chosen": _messages(ASK, ("assistant", "")), "rejected": _messages(ASK, FIRST)},
                           "empty chosen"),
        "ultrafeedback_binarized": ({"prompt": ASK[1], "chosen": _messages(ASK, FIRST),
                                     "rejected": _messages(ASK, ("assistant", "  "))}, "empty rejected"),
        "ranked": ({"prompt": "Q?", "completions": [{"response": "", "score": 9}, {"response": "No.", "score": 1}]},
                   "empty chosen"),
    }  # fmt: skip
    for layout, (bad, reason) in cases.items():
        with caplog.at_level("WARNING", logger="bmc.data.hf_prefs"):
            data = _read(_file(tmp_path, [LAYOUTS[layout][0][0], bad], f"{layout}.jsonl"))
        assert len(data.pairs) == 1 and data.report["dropped"] == {f"read: {reason}": 1}, layout
        assert f"{layout}.jsonl: dropped 1 of 2 row(s) with {reason} (rows [2])" in caplog.text


def test_transcripts_without_a_shared_prompt_are_named(tmp_path: Path) -> None:
    good = LAYOUTS["hh_rlhf"][0][0]
    other = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Bye?\n\nAssistant: Bye."}
    with pytest.raises(DataError, match=r"prefs\.jsonl, row 2, fields 'chosen'/'rejected': the transcripts share no"):
        _read(_file(tmp_path, [good, other]))
    texts = {"chosen": "It is 42.", "rejected": "Maybe 41."}
    with pytest.raises(DataError, match=r"prefs\.jsonl, row 1: missing column\(s\) \['prompt'\]: .*share no leading"):
        _read(_file(tmp_path, [texts]))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_data_only_runs_read_every_layout_and_build_no_model(layout: str, make_config, tmp_path, monkeypatch) -> None:
    import bmc.models
    from bmc.synthesize import prepare_data

    monkeypatch.setattr(bmc.models.TinyLlama, "build", lambda *a, **k: pytest.fail("no model for data=original"))
    rows = LAYOUTS[layout][0]
    many = [json.loads(json.dumps(rows[0]).replace("12", str(n))) for n in range(10, 16)]
    data = prepare_data(make_config("task=hf_prefs", f"task.path={_file(tmp_path, many)}", "task.sizes.sft_val=1"))
    assert data.report["pairs_out"] == 6 and data.report["dropped"] == {}
    assert data.report["first_pair"] == data.pairs[0] and isinstance(data.pairs[0]["prompt"], str)  # rendered


UF_RAW = {  # raw UltraFeedback: instruction + completions with overall scores (other keys as published)
    "source": "evol_instruct",
    "instruction": "Name a prime number.",
    "completions": [
        {"model": "a", "response": "Seven.", "overall_score": 8.5},
        {"model": "b", "response": "Nine.", "overall_score": 2.0},
        {"model": "c", "response": "Two is prime.", "overall_score": 8.5},
        {"model": "d", "response": "Eleven.", "overall_score": 6.0},
    ],
}
UF_COLUMNS = {"prompt": "instruction", "score": "overall_score"}


def test_ranked_completions_become_pairs_by_best_worst_or_all_pairs_with_ties_counted(tmp_path, caplog) -> None:
    path = _file(tmp_path, [UF_RAW, {**UF_RAW, "instruction": "Name an even number."}])
    best_worst = _read(path, columns=UF_COLUMNS).pairs
    assert best_worst[0] == {"prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Nine.",
                             "score_chosen": 8.5, "score_rejected": 2.0, "source": "evol_instruct"}  # fmt: skip
    assert len(best_worst) == 2
    with caplog.at_level("WARNING", logger="bmc.data.hf_prefs"):
        all_pairs = _read(path, columns=UF_COLUMNS, pairing="all_pairs").pairs
    # 4 completions: 6 pairs, one tie (8.5 / 8.5) dropped, per prompt
    assert len(all_pairs) == 10
    assert {(p["chosen"], p["rejected"]) for p in all_pairs[:5]} == {
        ("Seven.", "Nine."), ("Seven.", "Eleven."), ("Two is prime.", "Nine."), ("Eleven.", "Nine."),
        ("Two is prime.", "Eleven."),
    }  # fmt: skip
    assert "dropped 2 completion pair(s) with equal scores" in caplog.text
    # completions as strings with a parallel scores column; all tied: the prompt has no pair
    plain = {"prompt": "Hi?", "completions": ["Hello.", "Hey."], "scores": [1, 3]}
    tied = {"prompt": "Bye?", "completions": ["Bye.", "Ciao."], "scores": [2, 2]}
    pairs = _read(_file(tmp_path, [plain, tied], "plain.jsonl")).pairs
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("Hi?", "Hey.", "Hello.")]


def test_ranked_completions_become_ranked_lists_with_ties_as_blocks_and_scores_as_grades(tmp_path, caplog) -> None:
    tied = {**UF_RAW, "instruction": "Bye?", "completions": [{"response": r, "overall_score": 2} for r in ("A", "B")]}
    path = _file(tmp_path, [UF_RAW, tied])
    with caplog.at_level("WARNING", logger="bmc.data.hf_prefs"):
        lists = _read(path, columns=UF_COLUMNS, pairing="lists").pairs
    assert lists == [{
        "prompt": "Name a prime number.", "chosen": "Seven.", "rejected": "Nine.",
        "responses": ["Seven.", "Two is prime.", "Eleven.", "Nine."], "ranks": [0, 0, 1, 2],
        "scores": [8.5, 8.5, 6.0, 2.0], "score_chosen": 8.5, "score_rejected": 2.0, "source": "evol_instruct",
    }]  # fmt: skip
    assert "dropped 1 completion pair(s) with equal scores" in caplog.text  # the all-tied prompt: no list


@pytest.mark.parametrize(
    ("completions", "message"),
    [
        ([{"response": "A.", "overall_score": 1}], r"field .completions.: expected a list of at least 2 .*, got 1"),
        ([{"response": "A."}, {"response": "B.", "overall_score": 1}], r"field 'completions'\[0\]: needs keys"),
        ([{"response": "A.", "overall_score": "high"}, {"response": "B.", "overall_score": 1}],
         r"field 'completions'\[0\]: the score must be a finite number, got 'high'"),
        ([{"response": None, "overall_score": 1}, {"response": "B.", "overall_score": 2}],
         r"field 'completions'\[0\]: the response must be a string, got null"),
    ],
)  # fmt: skip
def test_bad_ranked_rows_name_file_row_and_field(completions, message: str, tmp_path: Path) -> None:
    path = _file(tmp_path, [UF_RAW, {**UF_RAW, "completions": completions}])
    with pytest.raises(DataError, match=rf"prefs.jsonl, row 2, {message}"):
        _read(path, columns=UF_COLUMNS)
    with pytest.raises(DataError, match="task.pairing must be one of"):
        _read(_file(tmp_path, [UF_RAW], "one.jsonl"), columns=UF_COLUMNS, pairing="best")
