"""Judges: the task verifier, a scalar reward model (tiny, saved by the test) and an LLM behind a local server."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bmc.precision import resolve_precision
from bmc.synthesis.ipr import rank, rm_pairs
from bmc.synthesis.judges import LLMJudge, RewardModelJudge, VerifierJudge, build_judge, parse_verdict
from bmc.synthesis.local_models import with_model_dtypes
from bmc.tasks import MathTask
from tests.conftest import CONF, compose_config, save_reward_model
from tests.doubles.fake_chat_server import FakeChatServer, chat_completion

# ------------------------------------------------------------------ verifier


@pytest.fixture(scope="module")
def math_examples() -> tuple[MathTask, list]:
    task = MathTask()
    return task, task.examples("pref", 3, seed=0)


def test_verifier_judge_prefers_the_higher_score(math_examples: tuple[MathTask, list]) -> None:
    task, examples = math_examples
    judge = build_judge({"kind": "verifier"}, task=task, examples=examples)
    assert isinstance(judge, VerifierJudge)
    example = examples[0]
    wrong = task.corrupt(example, random.Random(0))
    other_wrong = task.corrupt(example, random.Random(1))
    assert judge.prefer(example.prompt, example.gold, wrong) == 1
    assert judge.prefer(example.prompt, wrong, example.gold) == -1
    assert judge.prefer(example.prompt, wrong, other_wrong) == 0  # both score 0: a tie
    assert judge.calls == 3
    result = rank(judge, example.prompt, [wrong, example.gold, other_wrong, example.gold])
    assert (result.best_index, result.worst_index) == (1, 0)  # the first gold stays; the first wrong is worst
    assert result.judge_calls == 10


def test_verifier_judge_needs_the_task_and_known_prompts(math_examples: tuple[MathTask, list]) -> None:
    task, examples = math_examples
    with pytest.raises(ValueError, match="judge=verifier needs a built-in task"):
        build_judge({"kind": "verifier"})
    judge = VerifierJudge(task, examples)
    with pytest.raises(KeyError, match="no task example has the prompt 'unknown prompt'"):
        judge.prefer("unknown prompt", "a", "b")
    kinds = r"\['llm', 'reward_model', 'verifier'\]"
    with pytest.raises(ValueError, match=rf"unknown judge 'oracle': judge.kind must be one of {kinds}"):
        build_judge({"kind": "oracle"})


# ------------------------------------------------------------------ reward model

PROMPT = "Tom has 3 apples. How many?\nAnswer:"
RESPONSES = [" 3+4=7. The answer is 7.", " 3+4=8. The answer is 8.", " lime", " Mirvan lives in Tolvik.", " 7"]


def test_the_reward_model_loads_in_the_trainers_precision_unless_its_dtype_is_set(reward_model_dir: Path) -> None:
    default = OmegaConf.to_container(OmegaConf.load(CONF / "judge" / "reward_model.yaml"))
    assert default["dtype"] is None and default["device"] is None
    cfg = {**default, "path": str(reward_model_dir)}

    def loaded(value: str, **overrides: object) -> torch.dtype:
        judge = build_judge({**cfg, **overrides}, precision=resolve_precision(value))
        assert all(map(math.isfinite, judge.score([PROMPT] * 2, RESPONSES[:2])))  # it scores in that dtype
        return next(judge.model.parameters()).dtype

    assert loaded("32-true") == torch.float32
    assert loaded("bf16") == loaded("bf16-true") == torch.bfloat16
    assert loaded("bf16-mixed", dtype="float32") == torch.float32  # an explicit dtype wins
    assert with_model_dtypes(cfg, resolve_precision("bf16"))["dtype"] == "bfloat16"  # what its verdicts are keyed by


def test_reward_model_scores_are_finite_deterministic_and_batch_independent(reward_model_dir: Path) -> None:
    judge = build_judge({"kind": "reward_model", "path": str(reward_model_dir), "batch_size": 2})
    assert isinstance(judge, RewardModelJudge)
    scores = judge.score([PROMPT] * len(RESPONSES), RESPONSES)
    assert all(isinstance(s, float) and torch.isfinite(torch.tensor(s)) for s in scores)
    assert len(set(scores)) == len(scores)  # distinct texts, distinct rewards (a random head is not constant)
    assert judge.score([PROMPT] * len(RESPONSES), RESPONSES) == scores  # from the cache
    # A fresh model with another batch size (other padding) gives the same rewards: pads are ignored.
    unbatched = RewardModelJudge(str(reward_model_dir), batch_size=1)
    assert unbatched.score([PROMPT] * len(RESPONSES), RESPONSES) == pytest.approx(scores, abs=1e-5)


def test_reward_model_compare_agrees_with_score_order(reward_model_dir: Path) -> None:
    judge = RewardModelJudge(str(reward_model_dir), batch_size=4)
    scores = judge.score([PROMPT] * len(RESPONSES), RESPONSES)
    for i, a in enumerate(RESPONSES):
        for j, b in enumerate(RESPONSES):
            expected = (scores[i] > scores[j]) - (scores[i] < scores[j])
            assert judge.prefer(PROMPT, a, b) == expected
            assert judge.compare(PROMPT, a, b) == expected
    result = rank(judge, PROMPT, RESPONSES)
    assert (result.best_index, result.worst_index) == rm_pairs(scores)  # a consistent total order


def test_reward_model_configuration_errors(reward_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs `path`"):
        build_judge(OmegaConf.to_container(OmegaConf.load(CONF / "judge" / "reward_model.yaml")))
    with pytest.raises(ValueError, match="num_labels=2"):
        RewardModelJudge(str(save_reward_model(tmp_path, num_labels=2)))


# ------------------------------------------------------------------ LLM judge


@pytest.mark.parametrize(
    "reply,verdict",
    [
        ("Assistant A is correct. [[A]]", 1),
        ("Format: [[A]], [[B]] or [[C]]. Here B is better: [[ b ]]", -1),
        ("[[A]] looked good at first, but on reflection it is a tie. [[c]]", 0),
        ("[[ A ]]\n", 1),
    ],
)
def test_parse_verdict_takes_the_last_verdict(reply: str, verdict: int) -> None:
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", ["I cannot decide.", "[A]", "[[D]]", ""])
def test_parse_verdict_unparseable(reply: str) -> None:
    assert parse_verdict(reply) is None


def _slot(text: str, name: str) -> str:
    return text.split(f"[The Start of Assistant {name}'s Answer]\n")[1].split(f"\n[The End of Assistant {name}'s")[0]


def _llm_cfg(server: FakeChatServer) -> dict:
    cfg = OmegaConf.to_container(compose_config(["judge=llm"]).judge)
    cfg["backend"].update(base_url=server.base_url, model="judge", api_key_env=None, backoff_s=0.0)
    return cfg


def test_llm_judge_sends_a_pairwise_verdict_prompt_and_reads_the_verdict() -> None:
    def longer_is_better(body: dict) -> str:
        user = body["messages"][-1]["content"]
        a, b = len(_slot(user, "A")), len(_slot(user, "B"))
        return "Explanation... " + ("[[A]]" if a > b else "[[B]]" if b > a else "[[C]]")

    with FakeChatServer(longer_is_better) as server:
        judge = build_judge(_llm_cfg(server))
        assert isinstance(judge, LLMJudge)
        assert judge.prefer("Q?", "long answer", "short") == 1
        assert judge.prefer("Q?", "short", "long answer") == -1
        assert judge.compare("Q?", "short", "long answer") == -1
        assert judge.compare("Q?", "same", "size") == 0
        result = rank(judge, "Q?", ["aa", "a", "aaaa", "aaa"])
    assert (result.best_index, result.worst_index) == (2, 1)
    assert judge.calls == 2 + 4 + result.judge_calls and result.judge_calls == 2 * 3 + 2 * 2
    assert judge.take_failures("Q?").total == 0
    first = server.requests[0].json
    assert first["temperature"] == 0.0 and first["model"] == "judge"
    system, user = first["messages"]
    assert system["role"] == "system" and "[[A]]" in system["content"] and "[[C]]" in system["content"]
    assert user["role"] == "user" and user["content"].startswith("[User Question]\nQ?\n")
    assert _slot(user["content"], "A") == "long answer" and _slot(user["content"], "B") == "short"


def test_llm_judge_position_bias_and_unparseable_replies_are_ties() -> None:
    with FakeChatServer(lambda body: "[[A]]") as server:
        biased = build_judge(_llm_cfg(server))
        assert biased.compare("Q?", "x", "y") == 0 == biased.compare("Q?", "y", "x")
    with FakeChatServer(lambda body: "Both are fine, I think.") as server:
        judge = build_judge(_llm_cfg(server))
        result = rank(judge, "Q?", ["x", "y", "z"])
    assert (result.best_index, result.worst_index) == (0, 1) and result.tied  # all ties: the incumbents stay, no pair
    failures = judge.take_failures("Q?")
    assert failures.counts == {"unparseable": 6} == {"unparseable": judge.calls}
    assert failures.example == "Both are fine, I think." and judge.take_failures("Q?").total == 0  # taken


def test_a_cut_off_judge_reply_is_no_verdict_whatever_it_holds() -> None:
    cut = chat_completion("The format is [[A]], [[B]] or [[C]]. I think", "length")
    with FakeChatServer(lambda body: cut) as server:
        judge = build_judge(_llm_cfg(server))
        assert judge.prefer("Q?", "x", "y") == 0
    assert judge.take_failures("Q?").counts == {"truncated": 1}
    assert repr(judge) == f"LLMJudge(backend=OpenAIChat(base_url={server.base_url!r}, model='judge', api_key_env=None))"
    with pytest.raises(ValueError, match=r"judge.max_failure_share must be a share in \[0, 1\], got -0.1"):
        build_judge({**_llm_cfg(server), "max_failure_share": -0.1})


def test_llm_judge_template_must_have_its_placeholders() -> None:
    with pytest.raises(ValueError, match=r"placeholders \['a', 'b', 'prompt'\]"):
        LLMJudge(backend=None, template="{prompt} {a}")  # type: ignore[arg-type]


def test_a_reward_model_scores_the_completions_of_many_prompts_in_full_batches(reward_model_dir: Path) -> None:
    """IPR and rm_score over 8 prompts x 5 completions with batch_size 16: 40 texts in 3 forwards (16, 16, 8),
    not one forward per prompt, and the same choices as a judge that scores one text at a time."""
    from bmc.synthesis.ipr import rank_many

    samples = [{"prompt": f"Q{i}: {PROMPT}", "completions": [f"{r} ({i})" for r in RESPONSES]} for i in range(8)]
    judge = RewardModelJudge(str(reward_model_dir), batch_size=16)
    forward = judge.model.forward
    rows: list[int] = []

    def counted(*args, **kwargs):
        rows.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    judge.model.forward = counted
    ranked = rank_many(judge, samples)
    assert rows == [16, 16, 8]
    one_by_one = RewardModelJudge(str(reward_model_dir), batch_size=1)
    assert [(r.best_index, r.worst_index) for r in ranked] == [
        (r.best_index, r.worst_index) for r in (rank(one_by_one, s["prompt"], s["completions"]) for s in samples)
    ]
