"""Stage 4, preference training: the starting policy trained on the pairs with the loss, token weighting and
regularizer of the config, by the LightningModule and DataModule of ``cfg.module`` / ``cfg.datamodule``.

Reference log-probs are computed once, at the start of ``fit`` (:class:`ReferencePrecompute`; each rank of a
multi-process run scores a share), with the policy itself (it still holds the starting weights) and cached under
``<cache>/ref_logps/<key>`` (:mod:`bmc.reference`), unless
``reference.precompute=false`` runs a frozen reference in every step. A loss that reads the sequential KL (TDPO)
runs the reference in every step whatever ``reference.precompute`` says (one log line when it says true).
Lightning checkpoints go to the run folder (``callbacks``); ``ckpt_path`` resumes from one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from transformers import PreTrainedModel

from bmc.checkpointing import load_policy_weights, resolve_ckpt_path
from bmc.distributed import check_launch, full_state_dict, shards_parameters
from bmc.losses import is_listwise, needs_reference, needs_sequence_kl
from bmc.models import add_lora, frozen_copy
from bmc.precision import resolve_precision
from bmc.reference import attach_reference_logps
from bmc.stages.common import container, truncation
from bmc.stages.products import PreferencePairs, StartingPolicy, TrainedPolicy, train_val_pairs

log = logging.getLogger(__name__)
# The frozen reference model is in eval mode on purpose.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
# Lightning asks for a resumable dataloader; PreferenceDataModule restores the position inside the epoch itself
warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")


def train_preference(
    cfg: DictConfig,
    data: PreferencePairs,
    policy: StartingPolicy,
    loggers: list[Logger],
    ckpt_path: str | None,
    reference: StartingPolicy | None = None,
) -> TrainedPolicy:
    """Fit the policy on ``data`` (validated on its ``val_pairs``, else a train/val split by ``data.val_fraction``)
    and validate the final weights. ``reference``: other weights than the policy's own to precompute the
    reference log-probs with (an iterative round's ``iterative.reference=start``); None: the policy's."""
    pl.seed_everything(cfg.seed, workers=True)
    model, in_step_reference = _policy_and_reference(cfg, policy)
    train_pairs, val_pairs = train_val_pairs(cfg, data)
    # _partial_: the config's own arguments are bound, and the objects are passed as they are (not converted)
    datamodule = instantiate(_targeted(cfg, "datamodule"), _partial_=True)(
        train=train_pairs,
        val=val_pairs,
        masks=container(cfg.data.masks),
        tokenizer=policy.tokenizer,
        truncation=truncation(cfg),
    )
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if _uses_reference(cfg) and cfg.reference.precompute and _kl_in_step(cfg):
        log.info("loss %s reads the sequential KL over the vocabulary, which needs the reference's full next-token "
                 "distributions: the reference runs in every step, reference.precompute=true is not used",
                 cfg.loss.name)  # fmt: skip
    elif _uses_reference(cfg) and cfg.reference.precompute:
        # the policy still holds the starting weights: without another reference, no copy is built
        callbacks.append(ReferencePrecompute(partial(
            attach_reference_logps,
            model=model if reference is None else reference.model,
            cache_dir=cfg.paths.cache_dir,
            model_key=(reference or policy).fingerprint(),
            precision=resolve_precision(cfg.trainer.precision),
            batch_size=cfg.reference.batch_size,
            chunk_positions=cfg.logprob_chunk,
            share_prompt=cfg.share_prompt,
            batch_tokens=cfg.reference.batch_tokens,
        )))  # fmt: skip
    module = instantiate(_targeted(cfg, "module"), _partial_=True)(
        policy=model,
        reference=in_step_reference,
        loss=container(cfg.loss),
        token_weighting=container(cfg.token_weighting),
        regularizer=container(cfg.regularizer),
        optim=container(cfg.optim),
    )
    # no checkpoint callback configured (callbacks=minimal, or model_checkpoint: null): none at all, not
    # Lightning's default one, which writes a full checkpoint (1.6 GB for a 135M model) into the logger's folder
    checkpointing = cfg.trainer.get("enable_checkpointing", any(isinstance(c, ModelCheckpoint) for c in callbacks))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, enable_checkpointing=checkpointing)
    check_launch(trainer)
    # weights_only: a checkpoint is tensors and plain containers, never code to unpickle
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if trainer.interrupted:  # Lightning swallows Ctrl-C; the run must not be reported as completed
        raise KeyboardInterrupt("training was interrupted")
    # max_steps can end training between two validations: report the metrics of the final policy
    trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    metrics["train/steps"] = float(trainer.global_step)
    metrics["data/train_pairs"] = float(len(train_pairs))
    metrics["data/val_pairs"] = float(len(val_pairs))
    metrics["data/truncated_pairs"] = float(sum(datamodule.truncated_rows.values()))
    metrics["data/dropped_pairs"] = float(sum(datamodule.dropped_rows.values()))
    if not trainer.is_global_zero:
        log.info("rank %d of %d: training done; rank 0 writes summary.json", trainer.global_rank, trainer.world_size)
    sharded = shards_parameters(trainer.strategy) and trainer.world_size > 1
    model = _runnable_alone(trainer, policy) if sharded else module.policy
    return TrainedPolicy(model, metrics, trainer, on_every_rank=not sharded)


class ReferencePrecompute(Callback):
    """Attaches the reference log-probs in ``Trainer.fit``'s setup (``attach(datamodule, device=...)``:
    :func:`bmc.reference.attach_reference_logps` with the stage's settings bound). There the process group exists,
    so every rank scores its share of the pairs, and the policy still holds the starting weights: Lightning shards
    it (FSDP2), moves it to the device and loads a resumed checkpoint only after setup."""

    def __init__(self, attach: Callable[..., Path]) -> None:
        self._attach: Callable[..., Path] | None = attach

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._attach is not None:
            self._attach(trainer.datamodule, device=trainer.strategy.root_device)
            self._attach = None  # once per fit, and the reference model it holds is let go


def _runnable_alone(trainer: pl.Trainer, policy: StartingPolicy) -> PreTrainedModel:
    """The FSDP-trained policy as a plain model on rank 0, for the stages after training that run there alone.

    Its layers hold this rank's shards only, which a forward gathers from every rank: a forward on rank 0 alone
    would wait forever. Every rank joins in collecting the full weights (Lightning's full state dict, what a
    checkpoint holds), and rank 0 loads them into a fresh copy of the starting model (with fresh LoRA adapters
    where trained so). Other ranks keep their shards; nothing runs them after training."""
    state = full_state_dict(trainer.strategy)
    if not trainer.is_global_zero:
        return trainer.lightning_module.policy
    model, _ = policy.source.load(policy.checkpoint)
    lora = getattr(policy.source, "lora", None)
    model = add_lora(model, lora) if lora else model
    load_policy_weights(model, state, "the FSDP policy's gathered weights")
    return model


#: the pair defaults of conf/train.yaml's module and datamodule, and what a listwise loss trains with instead
_LISTWISE_TARGETS = {
    "module": ("bmc.module.PreferenceModule", "bmc.listwise_module.ListwisePreferenceModule"),
    "datamodule": ("bmc.data.datamodule.PreferenceDataModule", "bmc.data.lists.ListDataModule"),
}


def _targeted(cfg: DictConfig, group: str) -> DictConfig:
    """``cfg.module`` or ``cfg.datamodule``; for a listwise loss, with the listwise class in place of the pair
    default (a ``_target_`` set to another class is kept: it is the user's, and must take ranked lists)."""
    pairs, lists = _LISTWISE_TARGETS[group]
    node = cfg[group]
    if is_listwise(**container(cfg.loss)) and node._target_ == pairs:
        node = OmegaConf.merge(node, {"_target_": lists})
    return node


def _uses_reference(cfg: DictConfig) -> bool:
    return needs_reference(container(cfg.loss), container(cfg.regularizer))


def _kl_in_step(cfg: DictConfig) -> bool:
    """The loss reads the sequential KL (TDPO), so the reference runs in the step (:mod:`bmc.sequence_kl`)."""
    return needs_sequence_kl(**container(cfg.loss))


def _policy_and_reference(cfg: DictConfig, policy: StartingPolicy) -> tuple[PreTrainedModel, PreTrainedModel | None]:
    """The model to train (with fresh LoRA adapters where the model config asks for them) and the in-step
    reference: a frozen copy only for a reference-based loss with ``reference.precompute=false`` (or one reading the
    sequential KL) and no LoRA (in-step, the LoRA reference is the adapter-disabled policy)."""
    lora = getattr(policy.source, "lora", None)
    model = policy.source.prepare_for_training(policy.model)
    model = add_lora(model, lora) if lora else model
    in_step = _uses_reference(cfg) and (not cfg.reference.precompute or _kl_in_step(cfg))
    return model, frozen_copy(model) if in_step and not lora else None


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The Lightning checkpoint ``ckpt_path`` names (``last``: this run folder's), checked before any stage runs."""
    folder = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath") or Path(cfg.paths.output_dir) / "checkpoints"
    return resolve_ckpt_path(cfg.get("ckpt_path"), folder)
