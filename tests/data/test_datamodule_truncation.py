"""The preference data module truncates long pairs: a prompt keeps its end and the responses, a response is never
emptied, and pairs made identical are reported."""

from __future__ import annotations

import logging

import pytest

from bmc.data.datamodule import PreferenceDataModule
from bmc.data.tokenize import Truncation
from bmc.tokenizer import train_bpe_tokenizer


def _datamodule(pairs: list[dict], truncation: Truncation) -> PreferenceDataModule:
    tokenizer = train_bpe_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in pairs] * 10, vocab_size=300)
    dm = PreferenceDataModule(train=pairs, val=pairs[:1], tokenizer=tokenizer, truncation=truncation, batch_size=2)
    dm.setup()
    return dm


def test_a_prompt_longer_than_max_length_keeps_its_end_and_the_responses(caplog: pytest.LogCaptureFixture) -> None:
    long_prompt = " ".join(f"word{i}" for i in range(200)) + " Question: 2+2?"
    pairs = [{"prompt": long_prompt, "chosen": " 4", "rejected": " 5"},
             {"prompt": "1+1?", "chosen": " 2", "rejected": " 3"}]  # fmt: skip
    rule = Truncation(max_length=32, max_prompt_length=24)
    with caplog.at_level(logging.WARNING, logger="bmc.data.datamodule"):
        dm = _datamodule(pairs, rule)
    row = dm.datasets["train"][0]
    tokenizer = dm.tokenizer
    assert tokenizer.decode(row["chosen_ids"]) == " 4<eos>" and tokenizer.decode(row["rejected_ids"]) == " 5<eos>"
    # the prompt gives up its beginning: it fills what the responses leave of max_length (and keeps >= 24)
    assert len(row["prompt_ids"]) == 32 - len(row["chosen_ids"]) >= 24
    assert tokenizer.decode(row["prompt_ids"]).endswith("Question: 2+2?")
    assert dm.truncated_rows == {"train": 1, "val": 1}
    assert "pairs/train: truncated 1 of 2 pair(s) longer than max_length=32" in caplog.text
    assert "0 of them have identical responses after the cut" in caplog.text


def test_truncation_never_empties_a_response_and_reports_pairs_it_made_identical(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = " ".join(f"step{i}" for i in range(40))
    pairs = [{"prompt": "Q " * 60, "chosen": shared + " so 4", "rejected": shared + " so 5"}]
    with caplog.at_level(logging.WARNING, logger="bmc.data.datamodule"):
        dm = _datamodule(pairs, Truncation(max_length=20, max_prompt_length=19))
    row = dm.datasets["train"][0]
    assert len(row["prompt_ids"]) == 19 and len(row["chosen_ids"]) == len(row["rejected_ids"]) == 1
    assert "1 of them have identical responses after the cut" in caplog.text  # the differing tail was cut off
