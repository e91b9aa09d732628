"""The data stages' pair sources: cache hits of samples, IPR and reward-model pairs, the tiny reward model trained
once, and a BMC run on the pseudo-winning pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["data_report"]


# An SFT model that writes parseable (often wrong) answers, so sampled pairs and edits exist.
LEARNED = [
    "debug=default",
    "task.sizes.train=2000",
    "task.sizes.pref=48",
    "stage_max_steps=null",  # the debug preset caps every training stage at 4 steps
    "sft.steps=150",
    "data.sampler.backend=hf",  # sample from the learned policy, not the debug preset's task generator
    "sft.batch_size=64",
    "task.generator.max_operand=20",
    "task.generator.min_operand=1",
]


def test_bmc_on_pseudo_winning_pairs_end_to_end(make_config, shared_cache: Path, tmp_path: Path) -> None:
    from bmc.pipeline import run

    cfg = make_config(*LEARNED, "loss=bmc", "data=pseudo_winning")
    cfg.paths.cache_dir = str(shared_cache)
    metrics = run(cfg)
    report = _report(tmp_path / "run")
    assert report["prompts_in"] == 48 and report["completions"] == 48 * 5
    assert report["pairs_out"] == metrics["data/pairs_out"] > 2
    assert report["chosen_verifier_accept"] == 1.0  # every kept pseudo-winning response is verified correct
    assert report["edit_distance_after"] < report["edit_distance_before"]  # bridged pairs differ in fewer tokens
    dropped = sum(report["dropped"].values())
    assert report["pairs_out"] + dropped == report["prompts_in"]  # nothing lost silently
    assert metrics["val/bmc/marked_fraction"] > 0 and "eval/accuracy" in metrics


def test_ipr_pairs_use_cached_samples_and_count_judge_calls(make_config, shared_cache: Path) -> None:
    from bmc.synthesize import prepare_data

    cfg = make_config(*LEARNED, "data=ipr", "data.sampler.n=4")
    cfg.paths.cache_dir = str(shared_cache)
    data = prepare_data(cfg)
    report = data.report
    assert report["judge_calls"] == report["prompts_in"] * (2 * 3 + 2 * 2)  # 2(N-1) + 2(N-2), N = 4
    verifier = data.task_data.verifier
    by_prompt = {e.prompt: e for e in data.task_data.pref_examples}
    for pair in data.pairs:  # the verifier judge's best beats its worst: prompts whose samples all tie give none
        example = by_prompt[pair["prompt"]]
        assert verifier.score(example, pair["chosen"]) > verifier.score(example, pair["rejected"])
    assert report["dropped"]["all tied after ranking"] > 0  # e.g. four right answers
    assert report["pairs_out"] + sum(report["dropped"].values()) == report["prompts_in"]
    again = prepare_data(cfg)
    assert again.pairs == data.pairs  # samples and judgments come from the cache


def test_rm_score_pairs_are_max_and_min_of_the_reward_model(make_config, shared_cache: Path, tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from bmc.synthesis.judges import RewardModelJudge
    from bmc.synthesize import prepare_data
    from bmc.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer([" 12+3=15; 15-4=11. The answer is 11."] * 8, vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")

    with pytest.raises(ValueError, match="judge=reward_model"):
        prepare_data(make_config(*LEARNED, "data=rm_score"))  # the default verifier judge is not a reward model
    cfg = make_config(*LEARNED, "data=rm_score", "judge=reward_model", f"judge.path={tmp_path / 'rm'}")
    cfg.paths.cache_dir = str(shared_cache)
    data = prepare_data(cfg)
    assert data.report["judge_calls"] == data.report["prompts_in"] * 5
    judge = RewardModelJudge(path=str(tmp_path / "rm"))
    pair = data.pairs[0]
    samples = _cached_samples_of(shared_cache, pair)
    scores = judge.score([pair["prompt"]] * 5, samples["completions"])
    assert pair["chosen"] == samples["completions"][scores.index(max(scores))]
    assert pair["rejected"] == samples["completions"][scores.index(min(scores))]

    ipr = make_config(*LEARNED, "data=ipr", f"+data.agreement_judge={{kind: reward_model, path: {tmp_path / 'rm'}}}")
    ipr.paths.cache_dir = str(shared_cache)
    ipr_data = prepare_data(ipr)
    rm_by_prompt = {p["prompt"]: (p["chosen"], p["rejected"]) for p in data.pairs}
    ipr_by_prompt = {p["prompt"]: (p["chosen"], p["rejected"]) for p in ipr_data.pairs}
    same = sum(rm_by_prompt.get(prompt) == pair for prompt, pair in ipr_by_prompt.items())
    assert 0.0 <= ipr_data.report["ipr_rm_agreement"] <= 1.0
    assert ipr_data.report["ipr_rm_agreement"] * ipr_data.report["prompts_in"] >= same  # identical texts agree


def _cached_samples_of(cache: Path, pair: dict) -> dict:
    """The cached samples a pair was built from.

    The session cache holds samples from other tests' models too, often for the same prompts, so the row
    is the one whose completions hold both of the pair's texts.
    """
    from bmc.synthesis.store import RESULTS_FILE, read_results

    rows = [row for file in (cache / "samples").glob(f"*/{RESULTS_FILE}") for row in read_results(file.parent)]
    (row,) = [
        r for r in rows if r["prompt"] == pair["prompt"] and {pair["chosen"], pair["rejected"]} <= set(r["completions"])
    ]
    return row


def test_tiny_rm_is_trained_once_and_ranks_the_samples(make_config, shared_cache: Path) -> None:
    from bmc.synthesis.judges import RewardModelJudge
    from bmc.synthesize import prepare_data

    cfg = make_config(*LEARNED, "method=rm_score", "judge.train.steps=20", "judge.train.batch_size=8")
    cfg.paths.cache_dir = str(shared_cache)
    data = prepare_data(cfg)
    (rm_dir,) = [p for p in (shared_cache / "reward_model").iterdir() if p.is_dir()]
    evaluation = json.loads((rm_dir / "rm_eval.json").read_text())
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and evaluation["val_pairs"] > 0
    assert data.report["reward_model_accuracy"] == evaluation["accuracy"]
    assert data.report["judge_calls"] == data.report["prompts_in"] * 5
    # the trained checkpoint is an ordinary reward model: the pairs are its max/min over the cached samples
    judge = RewardModelJudge(path=str(rm_dir))
    pair = data.pairs[0]
    samples = _cached_samples_of(shared_cache, pair)
    scores = judge.score([pair["prompt"]] * len(samples["completions"]), samples["completions"])
    assert pair["chosen"] == samples["completions"][scores.index(max(scores))]
    again = prepare_data(cfg)  # cache hit: the same reward model, the same pairs
    assert again.pairs == data.pairs
    assert len([p for p in (shared_cache / "reward_model").iterdir() if p.is_dir()]) == 1
