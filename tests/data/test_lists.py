"""Ranked lists as a DataModule: row checks, collation of K responses per prompt (K varying in a batch), BMC marks
against the best response (the pair's masks at K = 2), and the reference cache holding K responses per prompt."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bmc.data.datamodule import PreferenceDataModule
from bmc.data.lists import LIST_REF_COLUMN, ListDataModule, check_list_row
from bmc.data.tokenize import Truncation
from bmc.logprobs import response_token_logps
from bmc.losses.ranked_logps import ranked_from_rows
from bmc.reference import attach_reference_logps, load_logps, save_logps
from bmc.tokenizer import train_bpe_tokenizer

TOKENIZER = train_bpe_tokenizer(["Q: 1+1?\nAnswer: The answer is 2. It is 3. The answer is 4."] * 8, vocab_size=300)
LISTS = [
    {"prompt": "Q: 1+1?\nAnswer:", "responses": [" The answer is 2.", " The answer is 3.", " It is 4."],
     "ranks": [0, 1, 1]},
    {"prompt": "Q: 2+2?\nAnswer:", "responses": [" The answer is 4.", " It is 5."], "ranks": [0, 1]},
]  # fmt: skip


def datamodule(rows: list[dict], **kwargs) -> ListDataModule:
    dm = ListDataModule(train=rows, val=rows[:1], tokenizer=TOKENIZER, truncation=Truncation(64, 32), batch_size=2,
                        **kwargs)  # fmt: skip
    dm.setup()
    return dm


def test_a_batch_holds_each_lists_responses_in_order_with_list_index_and_ranks() -> None:
    batch = datamodule(LISTS).collate([datamodule(LISTS).datasets["train"][i] for i in range(2)])
    assert batch["input_ids"].shape[0] == 5  # K = 3 and K = 2
    assert batch["list_index"].tolist() == [0, 0, 0, 1, 1] and batch["ranks"].tolist() == [0, 1, 1, 0, 1]
    responses = [TOKENIZER.decode(row[m]) for row, m in zip(batch["input_ids"], batch["response_mask"])]
    assert responses == [r + "<eos>" for row in LISTS for r in row["responses"]]
    assert "scores" not in batch


def test_marks_come_from_each_responses_diff_against_the_best_and_equal_the_pair_masks_at_k2() -> None:
    pair = {"prompt": LISTS[1]["prompt"], "chosen": LISTS[1]["responses"][0], "rejected": LISTS[1]["responses"][1]}
    lists, pairs = datamodule(LISTS), PreferenceDataModule(
        train=[pair], val=[pair], tokenizer=TOKENIZER, truncation=Truncation(64, 32), batch_size=2
    )
    pairs.setup()
    row, pair_row = lists.datasets["train"][1], pairs.datasets["train"][0]
    assert row["response_marks"] == [pair_row["chosen_marks"], pair_row["rejected_marks"]]
    # K = 3: the best response is marked where it differs from either other response (the union)
    three = lists.datasets["train"][0]
    marked = [TOKENIZER.decode([t for t, m in zip(ids, marks) if m])
              for ids, marks in zip(three["response_ids"], three["response_marks"])]  # fmt: skip
    # vs " The answer is 3.": "2"; vs " It is 4.": "answer" and "2" ("The" is a stopword, never marked)
    assert marked == [" answer2", "3", "4"]  # "It", replacing "The answer", is a stopword


def test_scores_travel_with_their_responses() -> None:
    scored = [dict(row, scores=[3.0, 1.0, 1.0][: len(row["responses"])]) for row in LISTS]
    dm = datamodule(scored)
    batch = dm.collate([dm.datasets["train"][i] for i in range(2)])
    assert batch["scores"].tolist() == [3.0, 1.0, 1.0, 3.0, 1.0]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "x", "responses": ["a"], "ranks": [0]}, "responses"),
        ({"prompt": "x", "responses": ["a", "b"], "ranks": [0]}, "ranks"),
        ({"prompt": "x", "responses": ["a", "b"], "ranks": [0, 0]}, "ranks"),  # one tie block: no preference
        ({"prompt": "x", "responses": ["a", "b"], "ranks": [1, 0]}, "ranks"),
        ({"prompt": "x", "responses": ["a", "b"], "ranks": [0, 2]}, "ranks"),
        ({"prompt": "x", "responses": ["a", "b"], "ranks": [0, 1], "scores": [0.0, 1.0]}, "scores"),
    ],
)
def test_bad_rows_are_errors_naming_row_and_field(row: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"lists/train row 1: field '{field}'"):
        datamodule([LISTS[0], row])
    with pytest.raises(ValueError, match=f"where: field '{field}'"):
        check_list_row(row, "where")


def test_ranked_from_rows_pads_lists_of_different_k_and_keeps_gradients() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], requires_grad=True)
    lists = ranked_from_rows(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 1, 0, 1]), values, torch.ones(5))
    assert lists.logps.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
    assert lists.valid.tolist() == [[True, True, True], [True, True, False]]
    assert lists.ranks.tolist() == [[0, 1, 1], [0, 1, 0]] and lists.sizes().tolist() == [3, 2]
    pair = lists.best_worst()
    assert pair.chosen.tolist() == [1.0, 4.0] and pair.rejected.tolist() == [3.0, 5.0]
    lists.logps.sum().backward()
    assert values.grad.tolist() == [1.0] * 5
    assert lists.with_best(torch.tensor([9.0, 8.0])).logps[:, 0].tolist() == [9.0, 8.0]


def test_reference_cache_holds_k_responses_per_prompt(tmp_path) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config)
    dm = datamodule(LISTS)
    attach_reference_logps(dm, model, tmp_path, model_key={"model": "tiny"}, batch_size=1)
    for dataset in dm.datasets.values():
        for index in range(len(dataset)):
            batch = dm.collate([dataset[index]])
            with torch.no_grad():
                logps, mask = response_token_logps(model.eval(), batch)
            cached = dataset[index][LIST_REF_COLUMN]
            assert len(cached) == len(dataset[index]["response_ids"])
            for k, values in enumerate(cached):
                torch.testing.assert_close(torch.tensor(values), logps[k][mask[k]])
            # and batches carry them as the rows' ref_token_logps
            torch.testing.assert_close(batch["ref_token_logps"][batch["response_mask"][:, 1:]], logps[mask])
    # the file format: one tensor per response, K per row
    path = tmp_path / "logps.safetensors"
    save_logps({LIST_REF_COLUMN: [[torch.tensor([1.0, 2.0]), torch.tensor([3.0])], [torch.tensor([4.0])] * 3]}, path)
    assert load_logps(path) == {LIST_REF_COLUMN: [[[1.0, 2.0], [3.0]], [[4.0], [4.0], [4.0]]]}
