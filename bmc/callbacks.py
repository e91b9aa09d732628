"""Callbacks of the training stages."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from transformers import PreTrainedTokenizerBase

from bmc.generation import answer_and_score, score_summary
from bmc.precision import resolve_precision
from bmc.tasks import Example, Task

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite loss, gradient or weight."""


class NonFiniteGuard(pl.Callback):
    """Stops training at the first non-finite loss or gradient, before the optimizer applies it, so the weights
    and every checkpoint stay those of the last good step; and refuses to write a checkpoint whose weights are
    not finite (a finite but huge update, e.g. from a learning rate far too high). The error names the global
    step, epoch and batch; :func:`bmc.pipeline.run` then marks the run failed in ``summary.json``.

    The decision is reduced over processes, so under DDP every rank stops at the same step instead of waiting
    for a collective that a stopped rank never joins. Gradients are not checked under fp16 mixed precision:
    its loss scaler skips overflowing steps by design.
    """

    def __init__(self) -> None:
        self._batch_idx = 0
        self._bad_loss: str | None = None

    def _where(self, trainer: pl.Trainer) -> str:
        return f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        # remembered, not raised: under DDP the step is stopped on every rank at once in on_before_optimizer_step
        if self._bad_loss is None and not torch.isfinite(loss.detach()).all():
            self._bad_loss = f"training loss ({loss.detach().float().mean().item()})"

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: torch.optim.Optimizer) -> None:
        problem, self._bad_loss = self._bad_loss, None
        if problem is None and getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
            if not torch.isfinite(norm):
                problem = f"gradient norm ({norm.item()})"
        if trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            raise NonFiniteError(
                f"non-finite {problem or 'loss or gradient on another process'} at {self._where(trainer)}; "
                "stopped before the optimizer step, so the weights and checkpoints are those of earlier steps"
            )

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        bad = [
            name
            for name, value in checkpoint.get("state_dict", {}).items()
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()
        ]
        if bad:
            raise NonFiniteError(
                f"non-finite weights at {self._where(trainer)} in {len(bad)} tensor(s), e.g. {bad[:3]}; "
                "the checkpoint was not written (the previous one is kept)"
            )


class StopAtAccuracy(pl.Callback):
    """Ends a stage once the policy's greedy accuracy on ``examples`` reaches ``target``, checked every
    ``check_every`` optimizer steps; ``history`` keeps each (step, accuracy) checked.

    A tiny model learns a synthetic task in a sharp transition (``TINY-SCALE.md``): a fixed SFT step count
    lands anywhere between 10% and 95% accuracy, depending on the seed and on floating-point details such as
    the log-softmax kernel. Stopping at an accuracy makes the SFT operating point, i.e. how much the
    preference stage can still fix, a property of the config.
    """

    def __init__(
        self,
        task: Task,
        examples: list[Example],
        tokenizer: PreTrainedTokenizerBase,
        target: float,
        check_every: int,
        batch_size: int = 128,
    ) -> None:
        if not 0 < target <= 1 or check_every < 1 or not examples:
            raise ValueError(
                f"StopAtAccuracy needs 0 < target <= 1, check_every >= 1 and examples; got target={target}, "
                f"check_every={check_every}, {len(examples)} examples"
            )
        self.task, self.examples, self.tokenizer = task, examples, tokenizer
        self.target, self.check_every, self.batch_size = target, check_every, batch_size
        self.history: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        # with gradient accumulation several batches end at the same optimizer step: check it once
        if step % self.check_every or (self.history and self.history[-1][0] == step):
            return
        # no progress bar: a check every few steps would print one line each into non-terminal logs
        # callbacks run outside the precision plugin's forward context: the check generates in the training's
        answers = answer_and_score(self.task, self.examples, pl_module.policy, self.tokenizer, self.batch_size,
                                   progress=False, precision=resolve_precision(trainer.precision))  # fmt: skip
        metrics = score_summary(answers)
        self.history.append((step, metrics["accuracy"]))
        if metrics["accuracy"] >= self.target:
            log.info("stopping at step %d: accuracy %.3f >= target %.3f", step, metrics["accuracy"], self.target)
            trainer.should_stop = True

    @property
    def reached(self) -> bool:
        return bool(self.history) and self.history[-1][1] >= self.target


class TokenRewardLogger(pl.Callback):
    """The paper's token-level reward picture: for a few validation pairs (or ranked lists: ``response`` is then the
    response's place in its list), each response token's reward
    ``beta * (log p_theta - log p_ref)`` and whether it is marked by the diff mask.

    Written to ``token_rewards.json`` in the run folder after the last validation, and logged as a W&B
    table when W&B is on. Skipped for losses without a reference model.
    """

    def __init__(self, num_pairs: int = 4) -> None:
        self.num_pairs = num_pairs

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not pl_module.needs_reference:
            return
        datamodule = trainer.datamodule
        rows = [datamodule.datasets["val"][i] for i in range(min(self.num_pairs, len(datamodule.datasets["val"])))]
        batch = {k: v.to(pl_module.device) for k, v in datamodule.collate(rows).items()}
        # every rank runs the forward: under FSDP it gathers each layer's shards from all ranks, and a forward
        # on rank 0 alone would wait forever for the others; only rank 0 writes
        rewards, mask = pl_module.token_rewards(batch)
        if not trainer.is_global_zero:
            return
        tokenizer, n = datamodule.tokenizer, len(rows)
        # a pair batch: the n chosen rows, then the n rejected; ranked lists: each list's rows in turn, best first
        lists = batch["list_index"].tolist() if "list_index" in batch else None
        owners = lists or [i % n for i in range(2 * n)]
        examples = []
        for i, owner in enumerate(owners):
            positions = mask[i].nonzero().squeeze(-1)
            tokens = batch["input_ids"][i, positions + 1].tolist()
            examples.append(
                {
                    "pair": owner,
                    "response": f"place {i - lists.index(owner) + 1}" if lists else "chosen" if i < n else "rejected",
                    "tokens": [tokenizer.decode([t]) for t in tokens],
                    "rewards": [round(r, 5) for r in rewards[i, positions].tolist()],
                    "marked": batch["diff_mask"][i, positions + 1].int().tolist(),
                }
            )
        record = {"step": trainer.global_step, "beta": pl_module.reward_scale, "examples": examples}
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.default_root_dir) / "token_rewards.json").write_text(json.dumps(record, indent=1))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                table = [
                    [e["pair"], e["response"], position, token, reward, marked]
                    for e in examples
                    for position, (token, reward, marked) in enumerate(zip(e["tokens"], e["rewards"], e["marked"]))
                ]
                columns = ["pair", "response", "position", "token", "reward", "marked"]
                logger.log_table("val/token_rewards", columns=columns, data=table, step=trainer.global_step)
