"""``train.py`` with a listwise loss on IPR's full rankings, end to end on a built-in task under the debug preset:
what the data stage ranked and what the training steps took."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bmc.listwise_module import ListwisePreferenceModule
from bmc.pipeline import run


@pytest.mark.parametrize("overrides", [["method=dpo_pl"], ["loss=lipo", "data=ipr", "callbacks=default"]])
def test_a_listwise_loss_trains_on_ipr_rankings(overrides, make_config, tmp_path: Path, monkeypatch) -> None:
    seen: list[dict] = []
    original = ListwisePreferenceModule._loss

    def recording(self, batch, rows):
        out, unweighted = original(self, batch, rows)
        if self.training:  # not the validation batches
            seen.append({"sizes": batch["list_index"].bincount().tolist(), "losses": out.losses.shape[0]})
        return out, unweighted

    monkeypatch.setattr(ListwisePreferenceModule, "_loss", recording)
    metrics = run(make_config("debug=default", *overrides))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    report = summary["data_report"]
    assert summary["status"] == "completed" and report["ranking"] == "full"
    rows = [json.loads(line) for line in Path(report["pairs_file"]).read_text().splitlines()]
    # every prompt's samples ranked into one list of at least 2 tie blocks, best first, pair fields = best/worst
    assert len(rows) == report["pairs_out"] == sum(report["list_sizes"].values()) >= 2
    assert all(r["chosen"] == r["responses"][0] and r["rejected"] == r["responses"][-1] for r in rows)
    assert all(r["ranks"][0] == 0 and r["ranks"][-1] >= 1 for r in rows)
    assert sorted(report["list_sizes"]) == sorted({str(len(r["responses"])) for r in rows})
    # binary insertion asks fewer comparisons than the best/worst search's 2N - 3 = 7 when the verifier ties
    assert report["judge_calls"] == 2 * report["comparisons_per_prompt"] * report["prompts_in"]
    assert report["comparisons_per_prompt"] < 7
    # the training steps took lists (of more than two responses), one loss per list
    train_steps = seen[: int(metrics["train/steps"])]  # then the final validation's batches (in eval mode)
    assert len(train_steps) == metrics["train/steps"] == 6
    assert all(step["losses"] == len(step["sizes"]) <= 4 for step in train_steps)  # debug batch_size: 4 lists
    # six steps are one epoch here: every training list once (the epoch's last batch is the short one)
    assert sum(len(step["sizes"]) for step in train_steps) == metrics["data/train_pairs"]
    assert max(max(step["sizes"]) for step in train_steps) > 2
    assert metrics["data/train_pairs"] + metrics["data/val_pairs"] == len(rows)
    if "callbacks=default" in overrides:  # the token-reward picture names each response's place in its list
        record = json.loads((tmp_path / "run" / "token_rewards.json").read_text())
        places: dict[int, list[str]] = {}
        for example in record["examples"]:
            places.setdefault(example["pair"], []).append(example["response"])
        assert len(places) == min(4, metrics["data/val_pairs"])
        assert all(p == [f"place {k + 1}" for k in range(len(p))] and len(p) >= 2 for p in places.values())
