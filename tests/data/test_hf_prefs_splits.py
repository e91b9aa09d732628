"""``task=hf_prefs`` splits, mixtures and extra columns: ``task.split``/``task.eval_split`` of a dataset folder
read by the real ``datasets.load_dataset`` (written here, nothing downloaded), ``task.eval_path``, splits by
prompt, ``task.sources`` fractions, and the extra columns of rows kept on the pairs, in the data report and
the cached pairs file, never in the tokenized tensors."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from bmc.data.datamodule import PreferenceDataModule
from bmc.data.hf_prefs import EVAL_OVERLAP, DataError, hf_preferences
from bmc.data.mixture import SOURCE
from bmc.data.sources import split_pairs
from bmc.data.tokenize import Truncation
from bmc.tokenizer import train_bpe_tokenizer


def _rows(split: str, n: int, per_prompt: int = 1, **extra) -> list[dict]:
    """``n`` rows, ``per_prompt`` pairs per prompt, with UltraFeedback-binarized's extra columns."""
    return [{"prompt": f"{split} question {i // per_prompt}?", "chosen": f" yes {i}.", "rejected": f" no {i}.",
             "prompt_id": f"{split}-{i // per_prompt}", "score_chosen": 8.0, "score_rejected": float(i % 5), **extra}
            for i in range(n)]  # fmt: skip


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _hub_folder(tmp_path: Path, splits: dict[str, list[dict]]) -> Path:
    """A dataset folder as the hub publishes one (``data/<split>-00000-of-00001.parquet``), named splits."""
    from datasets import Dataset

    folder = tmp_path / "ultrafeedback_like"
    (folder / "data").mkdir(parents=True)
    for split, rows in splits.items():
        Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_named_splits_of_a_dataset_folder_train_and_hold_out_prompts(tmp_path: Path) -> None:
    train, test = _rows("train", 12), _rows("test", 6, per_prompt=2)
    shared = {**train[0], "chosen": " yes again.", "rejected": " no again."}  # a test prompt that is a train one
    folder = _hub_folder(tmp_path, {"train_prefs": train, "test_prefs": [*test, shared]})
    data = hf_preferences("hf_prefs", str(folder), split="train_prefs", eval_split="test_prefs", sizes={"sft_val": 2})
    # the training pair on the shared prompt is dropped and counted: no prompt in two splits
    assert [p["prompt_id"] for p in data.pairs] == [f"train-{i}" for i in range(1, 12)]
    assert data.report["dropped"] == {EVAL_OVERLAP: 1}
    # held out: the eval split's 7 pairs validate, its 4 prompts are evaluated with the first chosen as reference
    assert [p["chosen"] for p in data.val_pairs] == [r["chosen"] for r in [*test, shared]]
    assert [(e.prompt, e.gold) for e in data.eval_examples] == [
        ("test question 0?", " yes 0."), ("test question 1?", " yes 2."), ("test question 2?", " yes 4."),
        ("train question 0?", " yes again."),
    ]  # fmt: skip
    assert data.eval_examples[1].meta == {"rejected": " no 2.", "prompt_id": "test-1", "score_chosen": 8.0,
                                          "score_rejected": 2.0}  # fmt: skip
    assert data.report["eval_pairs"] == 7 and data.report["eval_prompts"] == 4
    # without eval_split: today's behaviour, every training row and nothing held out
    plain = hf_preferences("hf_prefs", str(folder), split="train_prefs")
    assert len(plain.pairs) == 12 and plain.val_pairs == [] and plain.eval_examples == []
    with pytest.raises(DataError, match=r"ultrafeedback_like: could not be read .*Unknown split \"test\""):
        hf_preferences("hf_prefs", str(folder), split="train_prefs", eval_split="test")


def test_eval_path_names_a_second_file_in_its_own_split(tmp_path: Path) -> None:
    train = _jsonl(tmp_path / "train.jsonl", _rows("train", 8))
    test = _jsonl(tmp_path / "test.jsonl", _rows("test", 3))
    data = hf_preferences("hf_prefs", str(train), eval_path=str(test))
    assert len(data.pairs) == 8 and [e.prompt for e in data.eval_examples] == [f"test question {i}?" for i in range(3)]
    folder = _hub_folder(tmp_path, {"train_prefs": _rows("train", 4), "test_prefs": _rows("test", 5)})
    data = hf_preferences("hf_prefs", str(train), eval_path=str(folder), eval_split="test_prefs")
    assert len(data.val_pairs) == 5 and data.val_pairs[0]["prompt_id"] == "test-0"


def test_pairs_split_by_prompt_with_several_pairs_per_prompt(tmp_path: Path) -> None:
    # ranked completions, all pairs: 3 or 6 pairs per prompt; conversational prompts group by their messages
    rows = [{"prompt": [{"role": "user", "content": f"Q{i}?"}],
             "completions": [{"response": f"A{i}-{k}.", "score": k} for k in range(3 + i % 2)]}
            for i in range(8)]  # fmt: skip
    pairs = hf_preferences("hf_prefs", str(_jsonl(tmp_path / "ranked.jsonl", rows)), pairing="all_pairs").pairs
    assert len(pairs) == 4 * 3 + 4 * 6
    train, val = split_pairs(pairs, 0.25, seed=1)
    train_prompts, val_prompts = ({json.dumps(p["prompt"]) for p in part} for part in (train, val))
    assert not train_prompts & val_prompts and len(train) + len(val) == 36
    # whole prompts: every held-out prompt has all its pairs there, and at least 9 (25%) pairs are held out
    per_prompt = {json.dumps(r["prompt"]): (3 if len(r["completions"]) == 3 else 6) for r in rows}
    assert len(val) == sum(per_prompt[p] for p in val_prompts) >= 9


def test_sources_mix_fractions_of_the_mixed_pairs_drawn_without_replacement(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a.jsonl", _rows("a", 20))
    hh = [{"chosen": f"\n\nHuman: Hi {i}?\n\nAssistant: Hello.", "rejected": f"\n\nHuman: Hi {i}?\n\nAssistant: Go."}
          for i in range(6)]  # fmt: skip
    b = _jsonl(tmp_path / "b.jsonl", hh)
    sources = [{"path": str(a), "fraction": 0.7, "name": "a"}, {"path": str(b), "fraction": 0.3, "format": "hh_rlhf"}]
    data = hf_preferences("hf_prefs", sources=sources, sizes={"pref": 10}, seed=4)
    assert [p[SOURCE] for p in data.pairs] == ["a"] * 7 + [str(b)] * 3
    assert data.report["sources"] == {"a": 7, str(b): 3}
    drawn = [int(p["prompt_id"].split("-")[1]) for p in data.pairs[:7]]
    assert drawn == sorted(set(drawn)) and len(drawn) == 7  # without replacement, in file order
    assert data.pairs[7]["prompt"] == [{"role": "user", "content": data.pairs[7]["prompt"][0]["content"]}]
    assert hf_preferences("hf_prefs", sources=sources, sizes={"pref": 10}, seed=4).pairs == data.pairs
    assert hf_preferences("hf_prefs", sources=sources, sizes={"pref": 10}, seed=5).pairs != data.pairs
    # no total: the largest one no source runs short of, 6 / 0.3 = 20 -> 14 + 6
    assert hf_preferences("hf_prefs", sources=sources).report["sources"] == {"a": 14, str(b): 6}
    with pytest.raises(DataError, match=r"task.sources\[0\] \(a\): fraction 0.7 of 30 mixed pairs asks for 21 "
                                        r"pairs, but it has 20 \(after its drops\)"):  # fmt: skip
        hf_preferences("hf_prefs", sources=sources, sizes={"pref": 30})


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([{"path": "a.jsonl", "fraction": 0.7}, {"path": "b.jsonl", "fraction": 0.2}],
         r"fractions must sum to 1, got 0.9 \({'a.jsonl': 0.7, 'b.jsonl': 0.2}\)"),
        ([{"path": "a.jsonl", "fraction": 0.5}, {"path": "b.jsonl"}], r"sources\[1\] \(b.jsonl\): fraction must be"),
        ([{"path": "a.jsonl", "weight": 1}], r"sources\[0\] \(a.jsonl\): unknown key\(s\) \['weight'\]"),
        ([{"path": "a.jsonl", "fraction": 0.5}, {"path": "a.jsonl", "fraction": 0.5}], "names must differ"),
        (["a.jsonl"], r"sources\[0\]: expected a mapping with a path"),
    ],
)  # fmt: skip
def test_bad_sources_are_named(sources: list, message: str) -> None:
    with pytest.raises(DataError, match=message):
        hf_preferences("hf_prefs", sources=sources)


def test_extra_columns_must_be_json_and_must_not_shadow_a_pair_field(tmp_path: Path) -> None:
    from datasets import Dataset

    path = tmp_path / "timed.parquet"
    Dataset.from_list([{**_rows("t", 1)[0], "when": datetime.datetime(2024, 1, 1)}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"timed.parquet, row 1, field 'when': extra columns .* got datetime"):
        hf_preferences("hf_prefs", str(path))
    both = [{"question": "Q?", "prompt": "other", "chosen": " a", "rejected": " b"}]
    with pytest.raises(DataError, match=r"both.jsonl, row 1, field 'prompt': a column that is not read"):
        hf_preferences("hf_prefs", str(_jsonl(tmp_path / "both.jsonl", both)), columns={"prompt": "question"})
    named = _jsonl(tmp_path / "named.jsonl", _rows("n", 3, **{SOURCE: "mine"}))
    with pytest.raises(DataError, match=rf"entry 'named', field '{SOURCE}': its rows have a column"):
        hf_preferences("hf_prefs", sources=[{"path": str(named), "name": "named"}])


def test_extra_columns_never_reach_the_tokenized_tensors() -> None:
    pairs = [{"prompt": "Q?", "chosen": " yes.", "rejected": " no.", "prompt_id": "x", "scores": [1, 2]},
             {"prompt": "R?", "chosen": " so.", "rejected": " not.", SOURCE: "b"}]  # fmt: skip
    tokenizer = train_bpe_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in pairs], vocab_size=300)
    dm = PreferenceDataModule(pairs, pairs, tokenizer=tokenizer, truncation=Truncation(64, 32), batch_size=2)
    dm.setup("fit")
    columns = ["prompt_ids", "chosen_ids", "rejected_ids", "chosen_marks", "rejected_marks", "truncated"]
    assert dm.datasets["train"].column_names == columns
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch) == ["attention_mask", "diff_mask", "input_ids", "response_mask"]


def test_mixture_extras_reach_the_data_report_and_the_cached_pairs(make_config, tmp_path: Path) -> None:
    from bmc.synthesize import prepare_data

    a = _jsonl(tmp_path / "a.jsonl", _rows("a", 8))
    b = _jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}?", "chosen": " y", "rejected": " n"} for i in range(4)])
    sources = f"[{{path: {a}, fraction: 0.5, name: a}}, {{path: {b}, fraction: 0.5, name: b}}]"
    data = prepare_data(make_config("task=hf_prefs", f"task.sources={sources}", "task.sizes.sft_val=1"))
    assert data.report["sources"] == {"a": 4, "b": 4} and data.report["pairs_out"] == 8
    assert data.report["extra_columns"] == ["prompt_id", "score_chosen", "score_rejected", SOURCE]
    assert data.report["first_pair"] == data.pairs[0] and data.pairs[0]["prompt_id"].startswith("a-")
    cached = [json.loads(line) for line in Path(data.report["pairs_file"]).read_text().splitlines()]
    assert cached == data.pairs and cached[-1] == {"prompt": "b3?", "chosen": " y", "rejected": " n", SOURCE: "b"}


def test_a_run_validates_on_the_eval_split(make_config, tmp_path: Path) -> None:
    from bmc.pipeline import run

    folder = _hub_folder(tmp_path, {"train_prefs": _rows("train", 16), "test_prefs": _rows("test", 5)})
    overrides = ["debug=default", "task=hf_prefs", f"task.path={folder}", "task.split=train_prefs",
                 "task.eval_split=test_prefs", "task.sizes.sft_val=2", "data=original"]  # fmt: skip
    metrics = run(make_config(*overrides))
    assert metrics["data/train_pairs"] == 16 and metrics["data/val_pairs"] == 5 and metrics["data/eval_prompts"] == 5
