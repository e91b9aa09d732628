"""Device placement outside ``fit`` on accelerators, tested on the CPU as rank 1 of a two-GPU machine (CUDA
reported available, ``LOCAL_RANK=1``, the memory query answered): every component goes to ``cuda:1``, the
reward model and local chat models once each, and the vLLM engine is sized from the memory left free."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

import bmc.synthesis.chat
import bmc.synthesis.judges
from bmc.data.sources import TaskData
from bmc.devices import accelerator_device
from bmc.precision import resolve_precision
from bmc.stages.products import JudgeSetup
from bmc.synthesis.bridging import bridge
from bmc.synthesis.chat import LocalChat
from bmc.synthesis.context import SynthesisContext
from bmc.synthesis.judges import RewardModelJudge, build_judge
from bmc.synthesis.pair_sources import _rm_scores, _samples
from bmc.synthesis.sampler.vllm import MEMORY_MARGIN
from tests.doubles.fake_vllm import fake_vllm

GIB = 1 << 30
#: what the fake device reports: 30 of 80 GiB free (the policy and a judge hold the rest)
FREE, TOTAL = 30 * GIB, 80 * GIB
RANK1 = torch.device("cuda", 1)


class PlacedModel:
    """Stands in for a model that cannot really go to a GPU here: records the devices ``to`` moves it to (and
    the dtype it was loaded in), and answers what placing and checking a model asks of it."""

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        self.dtype, self.devices = dtype, []
        self.config = SimpleNamespace(num_labels=1, pad_token_id=0)

    def to(self, device: torch.device | str) -> PlacedModel:
        self.devices.append(torch.device(device))
        return self

    def eval(self) -> PlacedModel:
        return self


@pytest.fixture
def memory_asked(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """This process as rank 1 of a machine with two GPUs; returns the devices whose free memory was asked."""
    asked: list[torch.device] = []

    def mem_get_info(device: torch.device | None = None) -> tuple[int, int]:
        asked.append(torch.device(device))
        return FREE, TOTAL

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setenv("LOCAL_RANK", "1")
    return asked


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch, tiny_lm: Path) -> list[PlacedModel]:
    """Every reward model and local chat model loaded from now on, as a PlacedModel (with a real tokenizer)."""
    models: list[PlacedModel] = []

    def load(*args: Any, dtype: str | torch.dtype = "float32", **kwargs: Any) -> PlacedModel:
        models.append(PlacedModel(dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)))
        return models[-1]

    monkeypatch.setattr(
        bmc.synthesis.chat, "load_causal_lm", lambda *a, **k: (load(*a, **k), AutoTokenizer.from_pretrained(tiny_lm))
    )
    monkeypatch.setattr(bmc.synthesis.judges.AutoModelForSequenceClassification, "from_pretrained", load)
    return models


def test_the_accelerator_device_is_the_gpu_of_the_local_rank(memory_asked, monkeypatch) -> None:
    assert accelerator_device("gpu") == accelerator_device("cuda") == accelerator_device("auto") == RANK1
    assert accelerator_device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "3")  # a SLURM task started without torchrun or Lightning's launcher
    assert accelerator_device("gpu") == torch.device("cuda", 3)


def test_the_reward_model_judge_goes_once_onto_its_ranks_gpu(memory_asked, loaded, tiny_lm: Path) -> None:
    config = {"kind": "reward_model", "path": str(tiny_lm), "dtype": None, "device": None}
    judge = build_judge(config, precision=resolve_precision("bf16"), device=accelerator_device("gpu"))
    assert judge.device == RANK1 and loaded[-1].devices == [RANK1] and loaded[-1].dtype == torch.bfloat16
    build_judge({**config, "device": "cuda:0"}, device=accelerator_device("gpu"))
    assert loaded[-1].devices == [torch.device("cuda", 0)]  # the config's own device wins
    # built without the trainer's device (directly): still this rank's GPU, not the first one
    assert RewardModelJudge(str(tiny_lm)).device == RANK1 and loaded[-1].devices == [RANK1]


def test_local_chat_models_of_judges_and_editors_go_onto_their_ranks_gpu(memory_asked, loaded, tiny_lm) -> None:
    from bmc.synthesis.editors import build_editor

    backend = {"kind": "local", "path": str(tiny_lm)}
    judge = build_judge({"kind": "llm", "template": "{prompt}{a}{b}", "backend": backend},
                        device=accelerator_device("gpu"))  # fmt: skip
    editor = build_editor({"kind": "llm", "templates": {"default": "{prompt}{losing}{reference}"}, "backend": backend},
                          device=accelerator_device("gpu"))  # fmt: skip
    assert isinstance(judge.backend, LocalChat) and judge.backend.model is loaded[0]
    assert editor.backend.model is loaded[1]
    assert [model.devices for model in loaded] == [[RANK1], [RANK1]]


def test_the_stages_hand_the_data_stages_and_the_winrate_judge_the_trainers_device_and_precision(
    memory_asked, loaded, make_config, monkeypatch, tiny_lm: Path
) -> None:
    from bmc.stages.pairs import preference_pairs
    from bmc.stages.winrate import pairwise_judge

    contexts: list[SynthesisContext] = []

    def build_pairs(ctx: SynthesisContext) -> tuple[list, dict]:
        contexts.append(ctx)
        return [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(2)], {"dropped": {}}

    monkeypatch.setattr("bmc.stages.pairs.build_pairs", build_pairs)
    cfg = make_config("debug=default", "trainer.accelerator=gpu", "trainer.precision=bf16")
    task_data = TaskData("t", [], [], [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    policy = SimpleNamespace(model=None, tokenizer=None, checkpoint=None)
    rm = {"kind": "reward_model", "path": str(tiny_lm), "dtype": None, "device": None}
    preference_pairs(cfg, task_data, policy, JudgeSetup(rm))
    (ctx,) = contexts
    assert ctx.device == RANK1 and ctx.precision == resolve_precision("bf16-mixed")
    assert ctx.judge_cfg["dtype"] == "bfloat16"  # what its judgments are keyed by
    judge = pairwise_judge(SimpleNamespace(cfg=cfg, task_data=task_data, judge=JudgeSetup(rm)))
    assert judge.device == RANK1 and loaded[-1].devices == [RANK1] and loaded[-1].dtype == torch.bfloat16


def test_the_data_stages_build_their_judges_and_editors_on_the_contexts_device(
    memory_asked, loaded, tiny_lm: Path, tmp_path: Path
) -> None:
    backend = {"kind": "local", "path": str(tiny_lm)}
    editor = {"kind": "llm", "templates": {"default": "{prompt}{losing}{reference}"}, "backend": backend}
    ctx = SynthesisContext({"name": "bridged", "bridge": {}}, TaskData("t", [], [], []), None, None, tmp_path,
                           None, editor_cfg=editor, device=accelerator_device("gpu"))  # fmt: skip
    # no pairs and no samples: the models are built and placed, and nothing is asked of them
    assert bridge(ctx, []) == [] and _rm_scores(ctx, [], {"kind": "reward_model", "path": str(tiny_lm)}) == []
    assert [model.devices for model in loaded] == [[RANK1], [RANK1]]


def _vllm_engine(
    monkeypatch: pytest.MonkeyPatch, tiny_lm: Path, cache: Path, device: torch.device, **backend: Any
) -> dict[str, Any]:
    """The options the vllm backend starts its engine with when the trainer's device is ``device``."""
    calls: dict[str, list] = {"LLM": [], "generate": []}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(calls))
    sampler = {"backend": {"kind": "vllm", "model": "/ckpts/policy", **backend}, "n": 2, "max_new_tokens": 4}
    task_data = TaskData("t", [], [], [{"prompt": "Say hi.", "chosen": "hi", "rejected": "no"}])
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    _samples(SynthesisContext({"sampler": sampler}, task_data, None, tokenizer, cache, None, device=device))
    (engine,) = calls["LLM"]
    return engine


def test_the_vllm_engine_takes_the_memory_the_policy_leaves_on_its_ranks_gpu_unless_set(
    memory_asked, monkeypatch, tiny_lm: Path, tmp_path: Path
) -> None:
    engine = _vllm_engine(monkeypatch, tiny_lm, tmp_path / "sized", accelerator_device("gpu"))
    assert memory_asked == [RANK1]
    assert engine["gpu_memory_utilization"] == pytest.approx((FREE - MEMORY_MARGIN) / TOTAL) == 29 / 80
    engine = _vllm_engine(monkeypatch, tiny_lm, tmp_path / "set", RANK1, gpu_memory_utilization=0.5)
    assert engine["gpu_memory_utilization"] == 0.5 and memory_asked == [RANK1]  # set: used as it is, not asked
    engine = _vllm_engine(monkeypatch, tiny_lm, tmp_path / "cpu", torch.device("cpu"))
    assert "gpu_memory_utilization" not in engine and memory_asked == [RANK1]  # a CPU policy leaves the GPU free
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (GIB // 2, TOTAL))
    with pytest.raises(RuntimeError, match=r"0.5 GiB of cuda:1's 80.0 GiB are free.*gpu_memory_utilization"):
        _vllm_engine(monkeypatch, tiny_lm, tmp_path / "full", RANK1)
