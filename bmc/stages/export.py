"""Stage 6, export: the trained policy as a Hugging Face folder, ``<run folder>/model/``, that
``AutoModelForCausalLM.from_pretrained`` loads (with its tokenizer, chat template and generation config) and
that serves with vLLM or TGI as it is.

``export.which``: ``last`` (the final weights, those the evaluation scored) or ``best`` (the Lightning checkpoint
``best.ckpt`` of ``callbacks=default``, by ``val/loss``; a file, or under trainer=fsdp2 a sharded folder). A
LoRA policy is written as its adapter in PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``,
loadable onto the base checkpoint), or with ``export.merge=true`` as a plain model with the adapter merged in.
Not cached: it is the run's product.

``export.push_to_hub=<namespace>/<name>`` then uploads the folder to that Hugging Face Hub repo (created private
unless ``export.private=false``), with the token of the ``HF_TOKEN`` environment variable: read there only, so
that it never reaches the config, the logs, ``summary.json`` or W&B.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.utils import validate_repo_id
from omegaconf import DictConfig
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from bmc.checkpointing import load_policy_weights, read_checkpoint
from bmc.generation import stop_token_ids
from bmc.stages.products import HubPush, TrainedPolicy

log = logging.getLogger(__name__)

HUB_TOKEN_ENV = "HF_TOKEN"
#: the weights ``export.which`` may name: the final ones, or best.ckpt's
WHICH = ("last", "best")


def export_policy(cfg: DictConfig, trained: TrainedPolicy, tokenizer: PreTrainedTokenizerBase) -> Path | None:
    """Write the policy to ``cfg.export.dir``; returns the folder (None with ``export.enabled=false``)."""
    options = cfg.export
    if not options.enabled:
        return None
    model = trained.model
    if options.which == "best":
        best = _best_checkpoint(trained)
        load_policy_weights(model, read_checkpoint(best)["state_dict"], str(best))
    if options.merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    folder = Path(options.dir)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _generation_config(model, tokenizer).save_pretrained(folder)  # also beside a LoRA adapter
    log.info("exported the %s policy to %s", options.which, folder)
    return folder


def check_export(cfg: DictConfig) -> None:
    """Fail before any stage runs on an ``export.which`` other than last or best, and on ``best`` without a
    ModelCheckpoint in ``callbacks`` that monitors a metric (only that one keeps a best checkpoint)."""
    which = cfg.export.which
    if which not in WHICH:
        raise ValueError(f"export.which must be one of {list(WHICH)}, got {which!r}")
    if which == "best" and cfg.export.enabled:
        monitored = [c for c in (cfg.get("callbacks") or {}).values()
                     if c and str(c.get("_target_", "")).endswith("ModelCheckpoint") and c.get("monitor")]  # fmt: skip
        if not monitored:
            raise ValueError(
                "export.which=best needs a best checkpoint, kept by a ModelCheckpoint with a `monitor` in callbacks "
                "(callbacks=default keeps best.ckpt by val/loss); these callbacks have none: use export.which=last"
            )


def check_push(cfg: DictConfig) -> None:
    """Fail before any stage runs, rather than after training, on an ``export.push_to_hub`` that cannot upload:
    no export to push, a malformed repo id, no ``HF_TOKEN``, or huggingface_hub's offline mode."""
    repo_id = cfg.export.push_to_hub
    if not repo_id:
        return
    if not cfg.export.enabled:
        raise ValueError("export.push_to_hub uploads the exported folder: it needs export.enabled=true")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        # without a namespace the Hub would pick the token's user: the config names the repo in full instead
        raise ValueError(f"export.push_to_hub must be a repo id <namespace>/<name>, got {repo_id!r}")
    validate_repo_id(repo_id)
    _hub_token()
    if constants.HF_HUB_OFFLINE:  # read by huggingface_hub once, at import
        raise ValueError("export.push_to_hub cannot upload in huggingface_hub's offline mode (HF_HUB_OFFLINE)")


def push_to_hub(cfg: DictConfig, folder: Path | None) -> HubPush | None:
    """Upload the exported ``folder`` to the repo ``export.push_to_hub`` names (created if missing; an existing
    repo keeps its visibility); None without a push or an export. The pipeline calls it on rank 0, after the
    export."""
    options = cfg.export
    if not options.push_to_hub or folder is None:
        return None
    api = HfApi(endpoint=options.hub_endpoint, token=_hub_token())
    api.create_repo(options.push_to_hub, private=bool(options.private), exist_ok=True)
    commit = api.upload_folder(
        folder_path=folder,
        repo_id=options.push_to_hub,
        commit_message=f"bmc: the {options.which} policy of run {Path(cfg.paths.output_dir).name}",
    )
    log.info("pushed %s to the Hub repo %s: %s", folder, options.push_to_hub, commit.commit_url)
    return HubPush(options.push_to_hub, commit.oid, commit.commit_url)


def _hub_token() -> str:
    token = os.environ.get(HUB_TOKEN_ENV)
    if not token:
        raise ValueError(f"export.push_to_hub needs {HUB_TOKEN_ENV} in the environment (a token with write access)")
    return token


def _generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """The model's generation config, ending at the ids :func:`bmc.generation.stop_token_ids` stops on (the
    tokenizer's EOS and the config's own end tokens), padding with the tokenizer's: a server stops where this
    framework's sampling and evaluation stopped."""
    config = copy.deepcopy(model.generation_config or GenerationConfig.from_model_config(model.config))
    stops = stop_token_ids(model, tokenizer)
    config.eos_token_id = stops[0] if len(stops) == 1 else stops
    config.pad_token_id = tokenizer.pad_token_id
    return config


def _best_checkpoint(trained: TrainedPolicy) -> Path:
    callback = trained.trainer.checkpoint_callback
    # Lightning's own checkpoint callback (no `monitor`) has no notion of best: its "best" is the last one
    best = callback.best_model_path if callback is not None and callback.monitor else ""
    if not best:
        raise ValueError(
            "export.which=best needs a best checkpoint (callbacks=default keeps best.ckpt by val/loss); "
            "this run wrote none: use export.which=last"
        )
    return Path(best)
