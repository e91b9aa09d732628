"""The plan of online iterative rounds (METHODS.md §7): the ``iterative`` settings checked, which prompts each
round draws, which weights are its reference, where its folder is and the config a round runs with.

Round ``t`` (1..R) lives in ``<run folder>/rounds/<t>/``: ``model/`` (its trained policy exported, the next
round's policy and, for ``openai`` sampling, the folder the server is started on), ``checkpoints/`` and
``round.json`` (written last: a round with it is finished and a resumed run skips it).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from bmc.data.sources import TaskData
from bmc.losses import needs_sequence_kl

ROUND_FILE = "round.json"
REFERENCES = ("previous", "start")
PROMPT_MODES = ("disjoint", "same")
#: data.pairs whose pairs do not depend on the policy: a round would retrain on the same pairs
OFFLINE_PAIRS = ("original",)
#: trainer strategies under which every process would have to read back each round's export
MULTI_PROCESS = ("ddp", "fsdp", "deepspeed")


@dataclass(frozen=True)
class IterativeSettings:
    """``rounds`` and ``cfg.iterative`` (documented in ``conf/train.yaml``)."""

    rounds: int
    reference: str = "previous"
    prompts: str = "disjoint"
    accumulate_pairs: bool = False
    serve_command: str | None = None
    serve_timeout_s: float = 600.0


def iterative_settings(cfg: DictConfig) -> IterativeSettings:
    """The rounds settings of ``cfg``, each value checked (the error names the field)."""
    options = OmegaConf.to_container(cfg.get("iterative") or {}, resolve=True)
    unknown = sorted(set(options) - ({f.name for f in fields(IterativeSettings)} - {"rounds"}))  # rounds: top level
    if unknown:
        raise ValueError(f"iterative: unknown setting(s) {unknown}; see conf/train.yaml")
    settings = IterativeSettings(rounds=int(cfg.get("rounds", 1)), **options)
    if settings.rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {settings.rounds}")
    if settings.reference not in REFERENCES:
        raise ValueError(f"iterative.reference must be one of {REFERENCES}, got {settings.reference!r}")
    if settings.prompts not in PROMPT_MODES:
        raise ValueError(f"iterative.prompts must be one of {PROMPT_MODES}, got {settings.prompts!r}")
    return settings


def check_rounds(cfg: DictConfig) -> IterativeSettings:
    """Refuse, before any stage runs, a ``rounds > 1`` config that cannot run every round."""
    settings = iterative_settings(cfg)
    if settings.rounds == 1:
        return settings
    problems = []
    if cfg.data.pairs in OFFLINE_PAIRS:
        problems.append(f"data.pairs={cfg.data.pairs} does not sample the policy: every round would get the same "
                        "pairs (use data=sampled, ipr, rm_score or pseudo_winning)")  # fmt: skip
    strategy = str(cfg.trainer.get("strategy", "auto")).lower()
    devices, nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if any(name in strategy for name in MULTI_PROCESS) or nodes != 1 or devices not in (1, "1"):
        problems.append(f"trainer.strategy={strategy} devices={devices} num_nodes={nodes}: rounds run in one "
                        "process on one device (each round's export is read back by the next round)")  # fmt: skip
    if settings.reference == "start" and (not cfg.reference.precompute or needs_sequence_kl(**cfg.loss)):
        problems.append("iterative.reference=start needs a precomputed reference (reference.precompute=true, "
                        "a loss without the sequential KL): the in-step reference is the round's start")  # fmt: skip
    backend = (cfg.data.get("sampler") or {}).get("backend")
    kind = backend if isinstance(backend, str) or backend is None else backend.get("kind")
    if kind == "openai" and not settings.serve_command:
        problems.append("data.sampler.backend=openai samples a server: set iterative.serve_command to the command "
                        "serving a round's policy folder ({model}), or the server keeps serving the start")  # fmt: skip
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path not in (None, "last", "auto"):
        problems.append(f"ckpt_path={ckpt_path}: with rounds, ckpt_path is last or auto (each unfinished round "
                        "resumes from rounds/<t>/checkpoints/last.ckpt)")  # fmt: skip
    if ckpt_path == "last" and not (Path(cfg.paths.output_dir) / "rounds").is_dir():
        problems.append(f"ckpt_path=last: no rounds/ folder in {cfg.paths.output_dir} to resume (pass the killed "
                        "run's folder as hydra.run.dir=<folder>)")  # fmt: skip
    if problems:
        raise ValueError(f"rounds={settings.rounds} cannot run: " + "; ".join(problems))
    return settings


def round_prompts(pool: list[str], settings: IterativeSettings, t: int) -> list[str]:
    """Round ``t``'s prompts: the ``t``-th of R contiguous, near-equal slices of the pool (``disjoint``), or
    the whole pool (``same``: re-drawn each round, the samples seeded by the round)."""
    if settings.prompts == "same":
        return list(pool)
    n, r = len(pool), settings.rounds
    if n < 2 * r:
        raise ValueError(f"iterative.prompts=disjoint: {n} prompts cannot give {r} rounds 2 prompts each")
    return pool[(t - 1) * n // r : t * n // r]


def round_task(task_data: TaskData, settings: IterativeSettings, t: int) -> TaskData:
    """The task as round ``t`` sees it: its pairs (the prompts the sampler draws) restricted to the round's."""
    pool = list(dict.fromkeys(p["prompt"] for p in task_data.pairs))
    chosen = set(round_prompts(pool, settings, t))
    return replace(task_data, pairs=[p for p in task_data.pairs if p["prompt"] in chosen])


def round_dir(cfg: DictConfig, t: int) -> Path:
    return Path(cfg.paths.output_dir) / "rounds" / str(t)


def round_config(cfg: DictConfig, t: int, policy_folder: Path) -> DictConfig:
    """The config round ``t`` runs with: its folder as the output folder (checkpoints, export), the sampler
    seeded by the round (round 1 keeps the config's seed), and a served or vLLM sampler pointed at the
    round's policy folder."""
    folder = round_dir(cfg, t)
    rc = copy.deepcopy(cfg)
    with open_dict(rc):
        rc.paths.output_dir = str(folder)
        rc.export.dir = str(folder / "model")
        rc.export.enabled = True  # the next round loads it
        rc.export.merge = True  # a LoRA policy as a whole model: the next round adds fresh adapters
        rc.export.push_to_hub = None  # the final round's folder is pushed once, by rounds.py
        if OmegaConf.select(rc, "callbacks.model_checkpoint") is not None:
            rc.callbacks.model_checkpoint.dirpath = str(folder / "checkpoints")
        sampler = rc.data.get("sampler")
        if sampler is not None:
            sampler.seed = int(sampler.get("seed", 0)) + t - 1
            backend = sampler.get("backend")
            if isinstance(backend, DictConfig) and backend.get("kind") == "vllm":
                backend.model = str(policy_folder)
            if isinstance(backend, DictConfig) and backend.get("kind") == "openai":
                backend.weights = str(policy_folder)  # keys the samples by the served folder's contents
    return rc


def finished_round(cfg: DictConfig, t: int) -> dict[str, Any] | None:
    """Round ``t``'s record when it finished (its ``round.json``), else None."""
    path = round_dir(cfg, t) / ROUND_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_round(folder: Path, record: dict[str, Any]) -> None:
    """``round.json`` atomically, the round's last write."""
    tmp = folder / f"{ROUND_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(folder / ROUND_FILE)
