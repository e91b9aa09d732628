"""LightningModules: SFT warm start and preference optimisation behind the loss registry (the reward model's:
:mod:`bmc.reward_module`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch.distributed.fsdp import FSDPModule
from transformers import PreTrainedModel

from bmc.logprobs import response_token_logps, shared_prompt_token_logps
from bmc.losses import LossOutput, SequenceLogps, build_objective, is_listwise, needs_reference, needs_sequence_kl
from bmc.losses.metrics import preference_metrics
from bmc.models import compile_decoder_layers
from bmc.precision import resolve_precision
from bmc.row_scores import RowScores, row_scores
from bmc.schedule import cosine_with_warmup
from bmc.scoring_check import verify_scoring
from bmc.sequence_kl import TokenKL, sequence_kl_token_logps
from bmc.sharding import fully_shard_model

log = logging.getLogger(__name__)


class CausalLMModule(pl.LightningModule):
    """AdamW with linear warmup and cosine decay; logs lr, tokens/s and best-so-far validation metrics."""

    #: validation metrics tracked as ``<name>_best``, with the direction that counts as better
    best_metrics: dict[str, str] = {"val/loss": "min"}

    def __init__(
        self,
        policy: PreTrainedModel,
        optim: dict[str, Any],
        logprob_chunk: int | None = None,
        compile_layers: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        self.policy = policy
        self.logprob_chunk = logprob_chunk  # positions per LM-head chunk (bmc.logprobs); None: full logits
        # torch.compile of the policy's decoder layers (bmc.models.compile_decoder_layers), at configure_model
        self.compile_layers, self.compile_backend = compile_layers, compile_backend
        self._compiled = False
        self.optim = {"lr": 1e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup_ratio": 0.1, **optim}
        self._best: dict[str, float] = {}
        self._batch_started = 0.0

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.optim["lr"], weight_decay=self.optim["weight_decay"], betas=tuple(self.optim["betas"])
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = cosine_with_warmup(optimizer, int(self.optim["warmup_ratio"] * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        # Lightning's hook for compiling, called once the strategy has placed the model; the reference
        # precompute before it ran eager
        if self.compile_layers and not self._compiled:
            compiled = compile_decoder_layers(self.policy, self.compile_backend)
            log.info("compile: %d decoder layers of the policy, backend %s", compiled, self.compile_backend)
            self._compiled = True
        # ModelParallelStrategy (trainer=fsdp2) leaves parallelising to this hook, which Lightning calls again
        # at every fit and validate: the policy is sharded once. An in-step reference stays replicated.
        if isinstance(self.trainer.strategy, ModelParallelStrategy) and not isinstance(self.policy, FSDPModule):
            if self.device_mesh["tensor_parallel"].size() > 1:
                raise ValueError("trainer=fsdp2: tensor parallelism is not implemented; set tensor_parallel_size=1")
            precision = resolve_precision(self.trainer.precision)
            layers = fully_shard_model(self.policy, self.device_mesh["data_parallel"], precision)
            log.info("fsdp2: policy sharded over %d ranks, %d decoder layers as shard units, precision %s",
                     self.device_mesh["data_parallel"].size(), layers, precision.name)  # fmt: skip

    def on_train_start(self) -> None:
        # from_pretrained returns a model in eval mode and Lightning 2.6 leaves modes as they are: without this
        # a pretrained policy trains in eval mode, where activation checkpointing (and dropout) silently stays off
        self.train()

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """The loss of a batch, logging its metrics under ``<stage>/``."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._batch_started
        self.log("train/tokens_per_sec", batch["attention_mask"].sum().item() / max(elapsed, 1e-9))
        # logged here rather than by LearningRateMonitor, which refuses to run without a logger
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        for name, mode in self.best_metrics.items():
            value = self.trainer.callback_metrics.get(name)
            if value is None:
                continue
            better = min if mode == "min" else max
            self._best[name] = better(self._best.get(name, float(value)), float(value))
            self.log(f"{name}_best", self._best[name], sync_dist=True)

    # the best-so-far values travel with the checkpoint, so a resumed run reports what an uninterrupted one would
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["best_metrics"] = dict(self._best)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._best = dict(checkpoint.get("best_metrics", {}))


class SFTModule(CausalLMModule):
    """Token-mean negative log-likelihood of the response (the SFT warm start)."""

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        logps, mask = response_token_logps(self.policy, batch, self.logprob_chunk)
        loss = -logps.sum() / mask.sum().clamp(min=1)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss


class PreferenceModule(CausalLMModule):
    """Pairwise preference optimisation: one concatenated forward for chosen + rejected, then the loss
    selected by name from the registry, with optional BMC token weighting and a regularizer.

    The reference model is frozen (eval mode, no gradients), never in the optimizer and never saved in
    checkpoints; reference-free losses do not get one at all. Batches that carry precomputed per-token
    reference log-probs (``ref_token_logps``, see ``bmc.reference``) need no reference model. With LoRA
    policies ``reference`` may be ``None`` for a reference-based loss: the adapter-disabled policy is then the
    reference.

    With ``share_prompt`` each pair's prompt goes through the model once (:func:`shared_prompt_token_logps`),
    for the policy and an in-step reference alike; each model's first batch is also scored the plain way, and
    a model whose log-probs differ (one that ignores ``position_ids`` or a 4D attention mask) stops the run.
    A model on a flash-attention kernel, which takes no 4D mask, scores its rows the plain way (one log line).

    A loss registered with ``sequence_kl`` (TDPO) gets the sequential KL over the vocabulary
    (:mod:`bmc.sequence_kl`): the reference (model, or adapter-disabled LoRA policy) always runs in the step then,
    and precomputed ``ref_token_logps`` are not read.
    """

    best_metrics = {"val/loss": "min", "val/rewards/accuracies": "max", "val/rewards/margins": "max"}
    #: whether the module trains on ranked lists (bmc.listwise_module) rather than pairs
    listwise = False

    def __init__(
        self,
        policy: PreTrainedModel,
        reference: PreTrainedModel | None,
        loss: dict[str, Any],
        token_weighting: dict[str, Any],
        regularizer: dict[str, Any],
        optim: dict[str, Any],
        share_prompt: bool = False,
        logprob_chunk: int | None = None,
        compile_layers: bool = False,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__(policy, optim, logprob_chunk, compile_layers, compile_backend)
        self.share_prompt = share_prompt
        # id of a model (policy, reference) -> whether it scores with shared prompts, decided (and its scoring
        # path checked) at its first batch
        self._shares_prompt: dict[int, bool] = {}
        self.loss_name = loss["name"]
        if is_listwise(**loss) != self.listwise:
            kind = "ranked lists" if self.listwise else "pairs"
            raise ValueError(f"{type(self).__name__} trains on {kind}: it cannot train loss {loss['name']!r}")
        self.loss_fn, self.weighting, self.regularizer = build_objective(loss, token_weighting, regularizer)
        self.weighting_name, self.regularizer_name = token_weighting["name"], regularizer["name"]
        self.needs_reference = needs_reference(loss, regularizer)
        self.sequence_kl = needs_sequence_kl(**loss)
        self.reference = reference
        # the scale of logged implicit rewards (beta * r); losses without a beta report raw log-ratios
        self.reward_scale = float(loss.get("beta", 1.0))
        if reference is not None:
            reference.eval().requires_grad_(False)
        # Checkpoints hold the policy's trainable weights only (with LoRA: the adapters); the reference and
        # frozen weights are rebuilt from the starting checkpoint.
        self.strict_loading = False

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        frozen = {f"policy.{n}" for n, p in self.policy.named_parameters(remove_duplicate=False) if not p.requires_grad}
        return {k: v for k, v in state.items() if not k.startswith("reference.") and k not in frozen}

    def train(self, mode: bool = True) -> PreferenceModule:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    @torch.no_grad()
    def _reference_token_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "ref_token_logps" in batch:  # precomputed once before training (bmc.reference)
            return batch["ref_token_logps"]
        if self.reference is not None:
            return self._token_logps(self.reference, batch)[0]
        if not hasattr(self.policy, "disable_adapter"):
            raise RuntimeError(
                "no reference log-probs: the batch has no ref_token_logps and the module has no reference model "
                "(pass one, use a LoRA policy, or attach precomputed ones with bmc.reference.attach_reference_logps)"
            )
        with self.policy.disable_adapter():
            return self._token_logps(self.policy, batch)[0]

    def _token_logps(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._packs(model, batch):
            return shared_prompt_token_logps(model, batch, self.logprob_chunk)
        return response_token_logps(model, batch, self.logprob_chunk)

    def _packs(self, model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> bool:
        """Whether ``model`` scores this run's pairs with a shared prompt, decided at its first batch by the check
        of the run's scoring path (:func:`verify_scoring`)."""
        if id(model) not in self._shares_prompt:
            self._shares_prompt[id(model)] = verify_scoring(model, batch, self.logprob_chunk, self.share_prompt)
        return self._shares_prompt[id(model)]

    def _sequence_kl_tokens(self, batch: dict[str, torch.Tensor]) -> TokenKL:
        """Both models' token log-probs and the per-position KL, each model in the layout its first batch chose."""
        return sequence_kl_token_logps(
            self.policy,
            self.reference,
            batch,
            share_prompt=self._packs(self.policy, batch),
            reference_shares_prompt=None if self.reference is None else self._packs(self.reference, batch),
            chunk_positions=self.logprob_chunk,
        )

    @torch.no_grad()
    def token_rewards(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token implicit rewards ``beta * (log p_theta - log p_ref)`` and the response mask, (N, T-1)."""
        policy_tokens, mask = response_token_logps(self.policy, batch, self.logprob_chunk)
        return self.reward_scale * (policy_tokens - self._reference_token_logps(batch)), mask

    def _row_scores(self, batch: dict[str, torch.Tensor]) -> RowScores:
        """Each row's sequence scores, weighted and not, under the policy and the reference (and, for a loss that
        reads it, each row's sequential KL, both models' heads run together: :mod:`bmc.sequence_kl`)."""
        if self.sequence_kl:
            tokens = self._sequence_kl_tokens(batch)
            rows = row_scores(tokens.policy, tokens.reference, tokens.mask, batch["diff_mask"][:, 1:] & tokens.mask,
                              self.weighting)  # fmt: skip
            rows.kl = tokens.kl.sum(-1)
            return rows
        # the reference forward first: its activations are freed before the policy's are kept for backward
        ref_tokens = self._reference_token_logps(batch) if self.needs_reference else None
        policy_tokens, mask = self._token_logps(self.policy, batch)
        return row_scores(policy_tokens, ref_tokens, mask, batch["diff_mask"][:, 1:] & mask, self.weighting)

    def _loss(self, batch: dict[str, torch.Tensor], rows: RowScores) -> tuple[LossOutput, SequenceLogps]:
        """The loss of the batch's pairs (B chosen rows, then the B rejected rows) and their unweighted scores."""
        n_pairs = rows.raw.shape[0] // 2
        kl = rows.kl

        def pairs(scores: torch.Tensor, refs: torch.Tensor | None) -> SequenceLogps:
            return SequenceLogps(
                chosen=scores[:n_pairs],
                rejected=scores[n_pairs:],
                chosen_tokens=rows.lengths[:n_pairs],
                rejected_tokens=rows.lengths[n_pairs:],
                ref_chosen=None if refs is None else refs[:n_pairs],
                ref_rejected=None if refs is None else refs[n_pairs:],
                chosen_kl=None if kl is None else kl[:n_pairs],
                rejected_kl=None if kl is None else kl[n_pairs:],
            )

        unweighted = pairs(rows.raw, rows.ref_raw)
        return self.loss_fn(self.regularizer.adjust(pairs(rows.score, rows.ref_score), unweighted)), unweighted

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        rows = self._row_scores(batch)
        out, unweighted = self._loss(batch, rows)
        penalty = self.regularizer.penalty(unweighted)
        loss = out.losses.mean() + penalty.mean()

        metrics = preference_metrics(
            loss,
            out,
            unweighted,
            (self.regularizer_name, self.regularizer, penalty),
            (self.weighting_name, rows.weights, rows.diff_mask, rows.mask),
        )
        self.log_dict(
            {f"{stage}/{k}": v for k, v in metrics.items()},
            batch_size=out.losses.shape[0],
            on_step=stage == "train",
            on_epoch=stage != "train",
            sync_dist=stage != "train",  # validation metrics are means over all ranks' pairs (lists)
        )
        return loss
