"""The truncation rule keeps a prompt's frame (bmc.data.tokenize): a prompt cut to its budget keeps its BOS and the
chat template's header at its start, and the end of the user turn and the assistant header at its end; the tokens
right after the head go. A row whose frame leaves no room for content is dropped, counted and reported, in the
preference and the SFT DataModules alike."""

from __future__ import annotations

import logging

import pytest
from tokenizers.processors import TemplateProcessing

from bmc.data.datamodule import PreferenceDataModule, SFTDataModule
from bmc.data.render import render_prompt
from bmc.data.tokenize import PromptFrame, Truncation, prompt_frame
from bmc.tokenizer import train_bpe_tokenizer

# Gemma's format: BOS put first by the tokenizer itself, a header before the user's content and the model's header
# (the generation prompt) after it
GEMMA = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# ChatML with a default system turn, as SmolLM2's and Qwen2.5's templates write one when a conversation has none
CHATML_WITH_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HEAD = ["<bos>", "<start_of_turn>", "user", "Ċ"]  # Ċ: the byte-level BPE's newline
TAIL = ["<end_of_turn>", "Ċ", "<start_of_turn>", "m", "o", "d", "el", "Ċ"]
DIGITS = "0123456789"  # ten tokens: the tokenizer splits digits one by one


def _gemma_like():
    tokenizer = train_bpe_tokenizer(["user: hello\nassistant: hi there"] * 4, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<end_of_turn>", "<start_of_turn>"]})
    tokenizer.chat_template = GEMMA
    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return tokenizer


def _chat(tokenizer, question: str) -> str:
    return render_prompt(question, tokenizer, user_turn=True)


def test_a_cut_prompt_keeps_its_head_and_its_end_and_loses_the_tokens_after_the_head() -> None:
    frame = PromptFrame(head=(1, 2, 3), tail=(8, 9))
    prompt = [1, 2, 3, *range(10, 20), 8, 9]  # header, ten tokens of content, end of turn + assistant header
    rule = Truncation(max_length=12, max_prompt_length=8)
    # budget: max(8, 12 - 7) = 8 tokens: the head and the last 5 (a cut from the left kept [14, ..., 19, 8, 9])
    assert rule.apply(prompt, [[30, 31, 32, 33, 34, 35, 36]], frame) == (
        [1, 2, 3, 17, 18, 19, 8, 9],
        [[30, 31, 32, 33]],
        True,
    )
    # short responses leave the prompt more: max(8, 12 - 2) = 10 tokens
    assert rule.apply(prompt, [[30, 31]], frame) == ([1, 2, 3, 15, 16, 17, 18, 19, 8, 9], [[30, 31]], True)
    # a prompt that starts otherwise (its own system turn) keeps the start it shares with the frame's head
    own_start = [1, 5, 6, *range(10, 20), 8, 9]
    assert rule.apply(own_start, [[30] * 7], frame) == ([1, 15, 16, 17, 18, 19, 8, 9], [[30] * 4], True)
    # no frame (a plain prompt, a tokenizer without BOS): the end, as a cut from the left keeps it
    assert rule.apply(prompt, [[30] * 7]) == ([14, 15, 16, 17, 18, 19, 8, 9], [[30] * 4], True)


def test_a_prompt_whose_frame_leaves_no_room_for_its_content_is_dropped() -> None:
    frame = PromptFrame(head=(1, 2, 3), tail=(8, 9))
    prompt = [1, 2, 3, *range(10, 20), 8, 9]
    long_responses = [[30] * 20]
    assert Truncation(max_length=12, max_prompt_length=5).apply(prompt, long_responses, frame) is None
    # one more token of budget: one token of content survives, the last
    assert Truncation(max_length=12, max_prompt_length=6).apply(prompt, long_responses, frame) == (
        [1, 2, 3, 19, 8, 9],
        [[30] * 6],
        True,
    )
    # a prompt within its budget stays whole, frame or not: only the responses are cut
    assert Truncation(max_length=12, max_prompt_length=5).apply([1, 2, 3, 8, 9], long_responses, frame) == (
        [1, 2, 3, 8, 9],
        [[30] * 7],
        True,
    )


def test_the_frame_is_the_templates_text_around_a_user_message_with_bos_and_the_generation_prompt() -> None:
    gemma = _gemma_like()
    frame = prompt_frame(gemma)
    assert gemma.convert_ids_to_tokens(list(frame.head)) == HEAD
    assert gemma.convert_ids_to_tokens(list(frame.tail)) == TAIL

    chatml = train_bpe_tokenizer(["system: Be brief.\nuser: hello\nassistant: hi there"] * 4, vocab_size=300)
    chatml.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chatml.chat_template = CHATML_WITH_SYSTEM
    frame = prompt_frame(chatml)  # no BOS (the tokenizer adds none); the default system turn is header
    assert chatml.convert_ids_to_tokens(list(frame.head)) == [
        "<|im_start|>", "system", "Ċ", "Be", "Ġbrief", ".", "<|im_end|>", "Ċ", "<|im_start|>", "user", "Ċ",
    ]  # fmt: skip
    assert chatml.convert_ids_to_tokens(list(frame.tail)) == ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]

    plain = train_bpe_tokenizer(["hello"] * 4, vocab_size=300)
    assert prompt_frame(plain) == PromptFrame()  # no template, no BOS: nothing to keep, the rule cuts the start
    refusing = _gemma_like()
    refusing.chat_template = "{{ raise_exception('only system turns') }}"
    assert prompt_frame(refusing) == PromptFrame(head=(refusing.bos_token_id,))


def test_preference_pairs_keep_bos_the_chat_header_and_the_generation_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokenizer = _gemma_like()
    pairs = [{"prompt": _chat(tokenizer, DIGITS), "chosen": "42", "rejected": "41"}]
    with caplog.at_level(logging.WARNING, logger="bmc.data.datamodule"):
        dm = PreferenceDataModule(
            train=pairs, val=pairs, tokenizer=tokenizer, truncation=Truncation(20, 16), batch_size=1
        )
        dm.setup()
    row = dm.datasets["train"][0]
    # 4 + 10 + 8 = 22 prompt tokens and 3 per response; the prompt's budget is max(16, 20 - 3) = 17
    assert tokenizer.convert_ids_to_tokens(row["prompt_ids"]) == [*HEAD, "5", "6", "7", "8", "9", *TAIL]
    assert tokenizer.convert_ids_to_tokens(row["chosen_ids"]) == ["4", "2", "<end_of_turn>"]
    assert tokenizer.convert_ids_to_tokens(row["rejected_ids"]) == ["4", "1", "<end_of_turn>"]
    assert dm.truncated_rows == {"train": 1, "val": 1} and dm.dropped_rows == {"train": 0, "val": 0}
    assert "pairs/train: truncated 1 of 1 pair(s) longer than max_length=20 (the prompt after its BOS" in caplog.text


def test_sft_examples_keep_bos_the_chat_header_and_the_generation_prompt() -> None:
    tokenizer = _gemma_like()
    examples = [{"prompt": _chat(tokenizer, DIGITS), "response": "42"}]
    dm = SFTDataModule(train=examples, val=[], tokenizer=tokenizer, truncation=Truncation(20, 16), batch_size=1)
    dm.setup()
    row = dm.datasets["train"][0]
    assert tokenizer.convert_ids_to_tokens(row["prompt_ids"]) == [*HEAD, "5", "6", "7", "8", "9", *TAIL]
    assert tokenizer.convert_ids_to_tokens(row["response_ids"]) == ["4", "2", "<end_of_turn>"]
    assert dm.truncated_rows == {"train": 1, "val": 0} and dm.dropped_rows == {"train": 0, "val": 0}


def test_rows_whose_frame_does_not_fit_are_dropped_counted_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = _gemma_like()
    long_prompt = _chat(tokenizer, DIGITS)  # 22 tokens, its frame 4 + 8 = 12
    # a response of 10 tokens + end of turn leaves the prompt max(12, 20 - 11) = 12 tokens: all frame, no content
    over_long = {"prompt": long_prompt, "chosen": DIGITS, "rejected": DIGITS[::-1]}
    short = {"prompt": _chat(tokenizer, "1+1?"), "chosen": "2", "rejected": "3"}  # 16 + 2 tokens: no cut
    rule = Truncation(20, 12)
    with caplog.at_level(logging.WARNING, logger="bmc.data.datamodule"):
        dm = PreferenceDataModule(train=[over_long, short], val=[short], tokenizer=tokenizer, truncation=rule,
                                  batch_size=1)  # fmt: skip
        dm.setup()
    (kept,) = dm.datasets["train"].rows(["prompt_ids", "chosen_ids"])  # the short pair, whole
    assert tokenizer.convert_ids_to_tokens(kept["prompt_ids"]) == [*HEAD, "1", "+", "1", "?", *TAIL]
    assert tokenizer.convert_ids_to_tokens(kept["chosen_ids"]) == ["2", "<end_of_turn>"]
    assert dm.dropped_rows == {"train": 1, "val": 0} and dm.truncated_rows == {"train": 0, "val": 0}
    assert "pairs/train: dropped 1 of 2 pair(s) whose prompt must be cut but whose frame" in caplog.text
    assert "leaves no token of its content within the prompt's budget (max_prompt_length=12" in caplog.text

    sft = SFTDataModule(
        train=[{"prompt": long_prompt, "response": DIGITS}, {"prompt": short["prompt"], "response": "2"}],
        val=[],
        tokenizer=tokenizer,
        truncation=rule,
        batch_size=1,
    )
    with caplog.at_level(logging.WARNING, logger="bmc.data.datamodule"):
        sft.setup()
    assert len(sft.datasets["train"]) == 1 and sft.dropped_rows == {"train": 1, "val": 0}
    assert "sft/train: dropped 1 of 2 example(s) whose prompt must be cut" in caplog.text

    # a split left without rows is an error, not an empty loader
    all_dropped = PreferenceDataModule(train=[short], val=[over_long], tokenizer=tokenizer, truncation=rule,
                                       batch_size=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"pairs/val: all 1 pair\(s\) were dropped.*raise truncation\.max_prompt"):
        all_dropped.setup()


def test_stage_caches_key_the_truncation_rule_with_its_settings() -> None:
    """The SFT warm start and the reward model key their checkpoints on the truncation settings and the rule's
    revision: a model trained on rows cut by the left-cut rule (revision 1) is never reused for the frame rule."""
    from omegaconf import OmegaConf

    from bmc.data.tokenize import TRUNCATION_RULE
    from bmc.stages.common import truncation_key

    cfg = OmegaConf.create({"truncation": {"max_length": 8, "max_prompt_length": 4}})
    assert truncation_key(cfg) == {"max_length": 8, "max_prompt_length": 4, "rule": 2} and TRUNCATION_RULE == 2
