"""The quality gates on edits in BMC's Bridging phase (bmc.synthesis.bridging): every reason an edit is turned
down, what happens to its pair, and the report and warning that say so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bmc.data.sources import TaskData
from bmc.synthesis.bridging import bridge
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.editors import EditGates, build_editor
from bmc.synthesis.failures import ReplyFailureError
from tests.conftest import compose_config
from tests.doubles.char_tokenizer import CharTokenizer
from tests.doubles.fake_chat_server import FakeChatServer, Reply, chat_completion

# rejected response -> the editor's reply, and the reason it is turned down (None: kept)
REPLIES: dict[str, tuple[Reply, str | None]] = {
    "the cat sat on teh mat": ("<revised>the cat sat on the mat</revised>", None),
    "two plus two is five": ("Two plus two is four, as everyone knows.", "unparseable"),
    "the sky is green": ("<revised>   </revised>", "empty"),
    # the token budget cut the edit off mid-way; it is nearer to y_l than y_w is, and would pass every other gate
    "the sun is cold": (chat_completion("<revised>the sun is", "length"), "truncated"),
    "water is dry": ("<revised>water is dry</revised>", "identical to rejected"),
    # chosen is 1 edit from rejected; the "fix" is 5 away: it moved further from y_l than y_w is
    "ice is hot": ("<revised>ice is very cold</revised>", "not_minimal"),
    # nearer than the (long) chosen response, but 13 edits on a 2-token response: over max_edit_ratio 2.0
    "no": ("<revised>yes, certainly</revised>", "not_minimal"),
}
CHOSEN = {"ice is hot": "ice is not", "no": "a long answer that explains everything in great detail"}


def _bridge(
    tmp_path: Path, replies: dict[str, tuple[Reply, str | None]] = REPLIES, **gates: object
) -> tuple[list[dict[str, str]], dict]:
    def reply(body: dict) -> Reply:
        losing = body["messages"][-1]["content"].split("\x00")[-1]
        return replies[losing][0]

    editor_cfg = OmegaConf.to_container(compose_config(["editor=llm"], tmp_path, tmp_path).editor)
    editor_cfg["templates"] = {"default": "{prompt}{reference}\x00{losing}"}
    pairs = [{"prompt": f"q{i}", "chosen": CHOSEN.get(r, "gold"), "rejected": r} for i, r in enumerate(replies)]
    with FakeChatServer(reply) as server:
        editor_cfg["backend"].update(base_url=server.base_url, model="editor", api_key_env=None, backoff_s=0.0)
        task_data = TaskData(name="hf_prefs", sft_train=[], sft_val=[], pairs=pairs)
        ctx = SynthesisContext({"name": "pseudo_winning", "bridge": {}}, task_data, None, CharTokenizer(),
                               tmp_path / "cache", model_key="m", editor_cfg={**editor_cfg, **gates})  # fmt: skip
        return bridge(ctx, pairs), ctx.report


def test_each_gate_turns_its_edit_down_and_the_report_counts_it(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        bridged, report = _bridge(tmp_path, max_failure_share=0.5)
    assert bridged == [{"prompt": "q0", "chosen": "the cat sat on the mat", "rejected": "the cat sat on teh mat"}]
    expected = {"unparseable": 1, "empty": 1, "truncated": 1, "identical to rejected": 1, "not_minimal": 2}
    assert report["edit_rejections"] == expected
    assert dict(report["dropped"]) == {f"edit {reason}": n for reason, n in expected.items()}
    assert report["editor_calls"] == 7 and report["edits_accepted"] == pytest.approx(1 / 7)
    assert "6 of 7 edits (86%) failed the quality gates" in caplog.text and "truncated 1" in caplog.text
    # 3 replies gave no edit at all: within the share set here, reported
    assert report["editor_failure_share"] == pytest.approx(3 / 7)
    assert "3 of 7 replies (43%) of LLMEditor(" in caplog.text and "editor.max_failure_share=0.5" in caplog.text


def test_keep_original_keeps_the_turned_down_pairs_as_they_were_and_the_ratio_is_a_setting(tmp_path: Path) -> None:
    bridged, report = _bridge(
        tmp_path, on_reject="keep_original", max_edit_ratio=None, warn_drop_fraction=1.0, max_failure_share=0.5
    )
    # no ratio bound: the short response's rewrite is kept; the edit farther than y_w still is not; the turned
    # down pairs keep their original chosen response
    assert [p["chosen"] for p in bridged] == [
        "the cat sat on the mat", "gold", "gold", "gold", "gold", "ice is not", "yes, certainly",
    ]  # fmt: skip
    assert report["edit_rejections"] == {
        "unparseable": 1, "empty": 1, "truncated": 1, "identical to rejected": 1, "not_minimal": 1,
    }  # fmt: skip
    assert not report["dropped"] and report["edits_kept_original"] == 5


def test_an_editor_whose_replies_give_no_edit_past_the_share_stops_the_stage(tmp_path: Path) -> None:
    # 3 of 7 replies (43%) give no edit: more than the default 20%
    with pytest.raises(ReplyFailureError) as failed:
        _bridge(tmp_path)
    message = str(failed.value)
    assert message.startswith("bridging: 3 of 7 replies (43%) of LLMEditor(backend=OpenAIChat(base_url='http://127.0.0.1:")
    assert "model='editor'" in message and "gave no edit (empty 1, truncated 1, unparseable 1)" in message
    assert "more than editor.max_failure_share=0.2" in message
    assert "'Two plus two is four, as everyone knows.'" in message  # the first failed reply, quoted


def test_one_failed_reply_in_ten_is_reported_as_its_share(tmp_path: Path) -> None:
    replies = {f"teh answer {i}": (f"<revised>the answer {i}</revised>", None) for i in range(9)}
    replies["cut"] = (chat_completion("<revised>cu", "length"), "truncated")
    bridged, report = _bridge(tmp_path, replies)
    assert len(bridged) == 9 and report["edit_rejections"] == {"truncated": 1}
    assert report["editor_failure_share"] == pytest.approx(0.1) and dict(report["dropped"]) == {"edit truncated": 1}


def test_gate_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="editor.on_reject must be one of"):
        EditGates(on_reject="ignore")
    with pytest.raises(ValueError, match="editor.max_edit_ratio must be > 0"):
        build_editor({"kind": "task", "max_edit_ratio": 0})
    with pytest.raises(ValueError, match="warn_drop_fraction"):
        EditGates(warn_drop_fraction=1.5)
    with pytest.raises(ValueError, match=r"editor.max_failure_share must be a share in \[0, 1\], got 2"):
        build_editor({"kind": "task", "max_failure_share": 2})
