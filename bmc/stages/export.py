"""Stage 6, export: the trained policy as a Hugging Face folder, ``<run folder>/model/``, that
``AutoModelForCausalLM.from_pretrained`` loads (with its tokenizer, chat template and generation config) and
that serves with vLLM or TGI as it is.

``export.which``: ``last`` (the final weights, those the evaluation scored) or ``best`` (the Lightning checkpoint
``best.ckpt`` of ``callbacks=default``, by ``val/loss``). A LoRA policy is written as its adapter in PEFT format
(``adapter_config.json`` + ``adapter_model.safetensors``, loadable onto the base checkpoint), or with
``export.merge=true`` as a plain model with the adapter merged in. Not cached: it is the run's product.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from bmc.generation import stop_token_ids
from bmc.stages.preference import TrainedPolicy

log = logging.getLogger(__name__)

POLICY_PREFIX = "policy."  # the policy's keys in a PreferenceModule checkpoint


def export_policy(cfg: DictConfig, trained: TrainedPolicy, tokenizer: PreTrainedTokenizerBase) -> Path | None:
    """Write the policy to ``cfg.export.dir``; returns the folder (None with ``export.enabled=false``)."""
    options = cfg.export
    if not options.enabled:
        return None
    if options.which not in ("last", "best"):
        raise ValueError(f"export.which must be last or best, got {options.which!r}")
    model = trained.model
    if options.which == "best":
        _load_policy_weights(model, _best_checkpoint(trained))
    if options.merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    folder = Path(options.dir)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _generation_config(model, tokenizer).save_pretrained(folder)  # also beside a LoRA adapter
    log.info("exported the %s policy to %s", options.which, folder)
    return folder


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


def _load_policy_weights(model: PreTrainedModel, checkpoint: Path) -> None:
    """The policy weights stored in a Lightning checkpoint of the preference stage, loaded into ``model``.

    Checkpoints keep only the trainable weights (a LoRA checkpoint holds the adapters), so every key must
    exist in ``model`` and every trainable weight must be in the checkpoint."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = {k[len(POLICY_PREFIX) :]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise ValueError(
            f"{checkpoint}: does not match the policy (unexpected keys {unexpected[:3]}, "
            f"missing trainable {sorted(trainable & set(missing))[:3]})"
        )
