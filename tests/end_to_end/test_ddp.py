"""Several processes: cached stages built once under a lock, the strategy presets, and real DDP with two CPU
processes (gloo) against one process on the same global batch."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

from bmc.cache import cached_dir
from bmc.checkpointing import AtomicCheckpointIO
from bmc.distributed import check_launch
from tests.conftest import run_cli

FORK = multiprocessing.get_context("fork")


def _build_slowly(root: str, log: str, started: str | None = None, seconds: float = 0.5) -> None:
    def build(folder: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        if started:
            Path(started).touch()
        time.sleep(seconds)
        (folder / "data.txt").write_text("built")

    print(cached_dir(root, "stage", {"key": 1}, build))


def test_concurrent_processes_build_a_cache_entry_once_and_share_it(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    workers = [FORK.Process(target=_build_slowly, args=(str(tmp_path), str(log))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert len(log.read_text().split()) == 1  # one builder; the others waited and read its entry
    (entry,) = [p for p in (tmp_path / "stage").iterdir() if not p.name.startswith(".") and p.suffix != ".lock"]
    assert (entry / "data.txt").read_text() == "built"


def test_a_killed_builder_does_not_block_the_next_one(tmp_path: Path) -> None:
    log, started = tmp_path / "builds.log", tmp_path / "started"
    stuck = FORK.Process(target=_build_slowly, args=(str(tmp_path), str(log), str(started), 600.0))
    stuck.start()
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.01)
    os.kill(stuck.pid, signal.SIGKILL)
    stuck.join()
    second = FORK.Process(target=_build_slowly, args=(str(tmp_path), str(log)))
    second.start()
    second.join(timeout=60)
    assert second.exitcode == 0 and len(log.read_text().split()) == 2


@pytest.mark.parametrize(
    ("preset", "strategy"),
    [("ddp", "ddp"), ("ddp_spawn", "ddp_spawn"), ("fsdp", None), ("deepspeed", "deepspeed_stage_2")],
)
def test_strategy_presets_compose_on_top_of_the_default_trainer(make_config, preset: str, strategy: str | None) -> None:
    trainer_cfg = make_config(f"trainer={preset}").trainer
    assert trainer_cfg.max_epochs == 3 and trainer_cfg.gradient_clip_val == 1.0  # inherited from trainer/default
    assert trainer_cfg.num_nodes == 1
    if strategy is not None:
        assert trainer_cfg.strategy == strategy
    else:
        assert trainer_cfg.strategy._target_.endswith("FSDPStrategy") and trainer_cfg.strategy.state_dict_type == "full"


@pytest.mark.parametrize("preset", ["ddp", "ddp_spawn"])
def test_ddp_presets_build_a_two_process_cpu_trainer_with_atomic_checkpoints(make_config, preset: str) -> None:
    trainer = instantiate(make_config(f"trainer={preset}", "trainer.accelerator=cpu", "trainer.devices=2").trainer)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_local_sweep_refuses_ddp_that_relaunches_the_command_but_allows_spawn_and_slurm(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    def trainer(preset: str) -> pl.Trainer:
        return instantiate(make_config(f"trainer={preset}", "trainer.accelerator=cpu", "trainer.devices=2").trainer)

    check_launch(trainer("ddp"))  # a single run
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.MULTIRUN)))
    with pytest.raises(ValueError, match="re-run the whole -m sweep: use trainer=ddp_spawn"):
        check_launch(trainer("ddp"))
    check_launch(trainer("ddp_spawn"))
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NAME": "sweep", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1", "SLURM_JOB_ID": "1"}  # fmt: skip
    for name, value in slurm.items():
        monkeypatch.setenv(name, value)
    check_launch(trainer("ddp"))  # SLURM started the ranks (hydra/launcher=slurm): nothing is re-run


def test_fsdp_builds_its_strategy_and_refuses_cpu_clearly(make_config) -> None:
    cfg = make_config("trainer=fsdp")
    assert isinstance(instantiate(cfg.trainer.strategy), FSDPStrategy)
    with pytest.raises(InstantiationException, match="requires a GPU accelerator"):
        instantiate(make_config("trainer=fsdp", "trainer.accelerator=cpu").trainer)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_deepspeed_installed_stops_with_an_install_hint(make_config) -> None:
    with pytest.raises(InstantiationException, match="pip install -U deepspeed"):
        # accelerator=cpu: on a machine without GPUs Lightning would stop at the accelerator first
        instantiate(make_config("trainer=deepspeed", "trainer.accelerator=cpu").trainer)


def test_ddp_on_two_cpu_processes_matches_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    """Per-rank batch 4 on 2 ranks vs batch 8 in one process, same seed: each rank takes every other pair of
    one (seed, epoch) order, so every step's global batch is the same pairs and averaged gradients agree.
    The SFT warm start and the sampled pairs are computed once, by rank 0, and read by rank 1; validation
    metrics are reduced over both ranks' pairs (each rank holds one of the two validation pairs); each rank
    generates half of the evaluation answers, and rank 0 alone scores them and writes summary.json and the
    W&B run."""
    cache = tmp_path / "cache"
    common = [
        "debug=default",
        "data=sampled",
        "data.sampler.backend=hf",  # sample from the policy (the debug preset draws from the task instead)
        "trainer.max_steps=-1",
        "trainer.max_epochs=2",
        "optim.lr=2e-3",
        "optim.warmup_ratio=0",
        "eval.batch_size=2",  # the final evaluation's 8 prompts: two generation batches on each rank
        f"paths.cache_dir={cache}",
    ]
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    output = run_cli(
        [*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "batch_size=4", "logger=wandb",
         f"hydra.run.dir={ddp_dir}"],
        cwd=tmp_path,
        env={"WANDB_MODE": ""},
    )  # fmt: skip
    assert "Starting with 2 processes" in output and "distributed_backend=gloo" in output
    run_cli([*common, "batch_size=8", "logger=none", f"hydra.run.dir={single_dir}"], cwd=tmp_path)

    rank0_log, rank1_log = (ddp_dir / "train.log").read_text(), (ddp_dir / "train_ddp_process_1.log").read_text()
    for stage in ("sft", "samples"):
        assert f"cache write: {stage}" in rank0_log and f"cache hit: {stage}" in rank1_log
    assert "cache write" not in rank1_log
    assert "rank 1 of 2: training done" in rank1_log
    # the final evaluation's answers: each rank generated its share of the batches (8 eval prompts here)
    assert "rank 0 of 2: 4 of the 8 items" in rank0_log and "rank 1 of 2: 4 of the 8 items" in rank1_log
    answers = [(ddp_dir / "eval_answers.jsonl").read_text(), (single_dir / "eval_answers.jsonl").read_text()]
    assert len(answers[0].splitlines()) == 8 and answers[0] == answers[1]  # gathered whole and in order
    assert len(list((ddp_dir / "wandb").glob("offline-run-*"))) == 1

    ddp = json.loads((ddp_dir / "summary.json").read_text())
    single = json.loads((single_dir / "summary.json").read_text())
    assert ddp["status"] == single["status"] == "completed"
    assert ddp["metrics"].keys() == single["metrics"].keys()
    assert ddp["metrics"]["train/steps"] == single["metrics"]["train/steps"] == 6  # 22 pairs: 3 steps of 8, twice
    assert ddp["metrics"]["val/loss"] != pytest.approx(0.6931, abs=1e-3)  # the policy moved
    for key, value in single["metrics"].items():
        assert ddp["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


@pytest.mark.parametrize("rank", [0, 1])
def test_token_rewards_run_their_forward_on_every_rank_and_rank_0_alone_writes(rank: int, tmp_path: Path) -> None:
    """Under FSDP a forward gathers each layer's shards from every rank: the callback's forward must run on all
    of them (a rank-0-only forward waits forever), and only rank 0 writes token_rewards.json."""
    import torch

    from bmc.callbacks import TokenRewardLogger

    forwards = []

    def token_rewards(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        forwards.append(batch["input_ids"].shape)
        return torch.zeros(2, 3), torch.tensor([[True, False, False], [False, True, False]])

    rows = [{"input_ids": torch.tensor([5, 6, 7, 8]), "diff_mask": torch.tensor([0, 1, 1, 0])}]
    datamodule = SimpleNamespace(
        datasets={"val": rows},
        collate=lambda batch: {k: torch.stack([r[k] for r in batch] * 2) for k in batch[0]},
        tokenizer=SimpleNamespace(decode=lambda ids: f"<{ids[0]}>"),
    )
    trainer = SimpleNamespace(sanity_checking=False, datamodule=datamodule, is_global_zero=rank == 0, global_step=3,
                              default_root_dir=str(tmp_path), loggers=[])  # fmt: skip
    module = SimpleNamespace(needs_reference=True, device="cpu", reward_scale=0.1, token_rewards=token_rewards)
    TokenRewardLogger(num_pairs=4).on_validation_epoch_end(trainer, module)
    assert forwards == [torch.Size([2, 4])]
    written = tmp_path / "token_rewards.json"
    assert written.exists() == (rank == 0)
    if rank == 0:
        record = json.loads(written.read_text())
        assert record["step"] == 3 and [e["tokens"] for e in record["examples"]] == [["<6>"], ["<7>"]]
        assert [e["marked"] for e in record["examples"]] == [[1], [1]]


def _on_two_gloo_ranks(target: Callable[[int, int, str], None], out: Path) -> None:
    """``target(rank, port, out)`` in two forked processes that form a gloo group; both must exit cleanly."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [FORK.Process(target=target, args=(r, port, str(out))) for r in (0, 1)]
    for r in ranks:
        r.start()
    for r in ranks:
        r.join(timeout=120)
    assert [r.exitcode for r in ranks] == [0, 0]


def _split_in_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from bmc.distributed import split_across_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = split_across_ranks(list(range(10)), lambda share: [(x, x * x, rank) for x in share], block=3)
    finally:
        dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(results))


def test_work_split_across_two_processes_comes_back_whole_and_in_order_on_both(tmp_path: Path) -> None:
    """Blocks of 3 of 10 items on 2 gloo ranks: rank 0 does blocks 0 and 2 (items 0-2, 6-8), rank 1 blocks 1 and
    3 (3-5, 9); both get all 10 results in the items' order. One process without a group does all of them."""
    from bmc.distributed import split_across_ranks

    _on_two_gloo_ranks(_split_in_rank, tmp_path)
    owner = [0, 0, 0, 1, 1, 1, 0, 0, 0, 1]
    expected = [[x, x * x, owner[x]] for x in range(10)]
    assert [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)] == [expected, expected]
    assert split_across_ranks([1, 2], lambda share: [x + 1 for x in share], block=1) == [2, 3]


def _cache_in_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from bmc.distributed import cached_on_every_rank, split_across_ranks

    calls: list[str] = []

    def compute() -> list[int]:
        calls.append("compute")
        return split_across_ranks(list(range(5)), lambda share: [x * 10 + rank for x in share])

    def write(values: list[int], folder: Path) -> None:
        calls.append("write")
        (folder / "values.json").write_text(json.dumps(values))

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        folders = [str(cached_on_every_rank(str(Path(out, "cache")), "stage", {"k": 1}, compute, write))
                   for _ in range(2)]  # fmt: skip
    finally:
        dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps({"folders": folders, "calls": calls}))


def test_a_cache_entry_computed_by_two_processes_is_written_once_and_then_hit_by_both(tmp_path: Path) -> None:
    """On a miss both ranks compute (each its share of the items, rows 0, 2, 4 on rank 0) and rank 0 alone writes
    the entry, which both name; asked again, both hit it and compute nothing."""
    _on_two_gloo_ranks(_cache_in_rank, tmp_path)
    rank0, rank1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert rank0["calls"] == ["compute", "write"] and rank1["calls"] == ["compute"]
    assert rank0["folders"] == rank1["folders"] and len(set(rank0["folders"])) == 1
    assert json.loads(Path(rank0["folders"][0], "values.json").read_text()) == [0, 11, 20, 31, 40]


def test_an_fsdp_policy_reaches_rank_0_as_a_plain_model_with_the_gathered_weights(tmp_path: Path) -> None:
    """Under FSDP on several devices the trained policy holds shards: rank 0 gets a fresh model loaded from the
    starting checkpoint with the gathered weights (Lightning's full state dict; a stand-in strategy returns it
    here, FSDP itself needs GPUs), equal to the trained ones and not the sharded module itself."""
    import torch

    from bmc.models import TinyLlama
    from bmc.stages.preference import _runnable_alone
    from bmc.stages.products import StartingPolicy

    source = TinyLlama(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300)
    start, tokenizer = source.build(["What is 2 plus 3? The answer is 5."] * 8)
    start.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    trained = source.load(tmp_path / "start")[0]
    with torch.no_grad():
        for weight in trained.parameters():
            weight.add_(0.01)

    class GatheringStrategy(FSDPStrategy):
        def lightning_module_state_dict(self) -> dict:
            return {f"policy.{k}": v for k, v in trained.state_dict().items()}

    module = SimpleNamespace(policy=trained)
    trainer = SimpleNamespace(strategy=GatheringStrategy(), is_global_zero=True, lightning_module=module)
    policy = StartingPolicy(source, tokenizer, checkpoint=tmp_path / "start", model=start)
    alone = _runnable_alone(trainer, policy)
    assert alone is not trained and alone is not start
    for (name, got), expected in zip(alone.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(got, expected), name
    trainer.is_global_zero = False  # another rank joins the gathering and keeps its own module
    assert _runnable_alone(trainer, policy) is trained
