"""Tokenization into pairs of rows: the preference data module stacks chosen then rejected and groups train batches
by length."""

from __future__ import annotations

import pytest

from bmc.data.datamodule import PreferenceDataModule
from bmc.data.tokenize import Truncation
from bmc.tokenizer import train_bpe_tokenizer


def test_preference_datamodule_stacks_chosen_then_rejected() -> None:
    text = ["Q: 1+1?\nAnswer: The answer is 2.", "Q: 2+2?\nAnswer: The answer is 4."] * 20
    tokenizer = train_bpe_tokenizer(text, vocab_size=300)
    pairs = [
        {"prompt": "Q: 1+1?\nAnswer:", "chosen": " The answer is 2.", "rejected": " The answer is 3."},
        {"prompt": "Q: 2+2?\nAnswer:", "chosen": " The answer is 4.", "rejected": " It is 5."},
    ]
    dm = PreferenceDataModule(
        train=pairs, val=pairs[:1], tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=2
    )
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[0] == 2  # one pair -> chosen row + rejected row
    chosen, rejected = (tokenizer.decode(row[m]) for row, m in zip(batch["input_ids"], batch["response_mask"]))
    assert chosen == " The answer is 2.<eos>" and rejected == " The answer is 3.<eos>"
    marked = tokenizer.decode(batch["input_ids"][1][batch["diff_mask"][1]])
    assert marked == "3"  # the one differing token; "The answer is" and EOS are shared
    assert dm.truncated_rows == {"train": 0, "val": 0}

    empty = PreferenceDataModule(train=pairs, val=[], tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=2)
    with pytest.raises(ValueError, match="the val split has no pairs"):  # not a KeyError from inside tokenization
        empty.setup()


def test_preference_datamodule_groups_train_batches_by_length() -> None:
    text = ["Q: 1+1?\nAnswer: The answer is 2."] * 20
    tokenizer = train_bpe_tokenizer(text, vocab_size=300)
    pairs = [{"prompt": "Q:" + " x" * (i % 7), "chosen": " y" * (1 + i % 5), "rejected": " z"} for i in range(40)]
    dm = PreferenceDataModule(
        train=pairs, val=pairs[:2], tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=8,
        length_grouping=True,
    )  # fmt: skip
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sum(b["input_ids"].shape[0] for b in batches) == 2 * 40
    plain = PreferenceDataModule(
        train=pairs, val=pairs[:2], tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=8
    )
    plain.setup()
    cells = sum(b["input_ids"].numel() for b in batches)
    assert cells < sum(b["input_ids"].numel() for b in plain.train_dataloader())


