"""LightningDataModules for SFT examples and preference pairs.

Pairs are tokenized once in ``setup`` (into a :class:`~bmc.data.columns.ColumnDataset`), diff masks for
BMC token weighting are computed there too, and each batch stacks chosen then rejected sequences into one
padded tensor so the LightningModule runs a single concatenated forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from bmc.data.columns import ID_COLUMNS, REF_COLUMNS, ColumnDataset
from bmc.data.epoch_sampler import EpochSampler
from bmc.data.tokenize import Truncation, encode_prompts, encode_responses, pad_sequences, prompt_frame
from bmc.losses.masks import diff_masks, stopword_token_ids

log = logging.getLogger(__name__)


class _TokenizedDataModule(pl.LightningDataModule):
    """Shared tokenization and loader plumbing: subclasses fill ``self.datasets[split]`` with :meth:`_tokenize`
    and define ``collate``. ``truncated_rows`` and ``dropped_rows`` count, per split, the rows the truncation
    rule cut and those it dropped (their prompt's frame leaves no room for its content), both also logged."""

    #: how the log lines name this module's rows: "<kind>/<split>: truncated 3 of 100 <noun>(s) ..."
    kind = "rows"
    noun = "row"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        truncation: Truncation,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.truncation = truncation
        # the tokens truncation keeps at both ends of a prompt: found once from the tokenizer, passed to each cut
        self.prompt_frame = prompt_frame(tokenizer)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, ColumnDataset] = {}
        self.truncated_rows: dict[str, int] = {}
        self.dropped_rows: dict[str, int] = {}

    def _tokenize(
        self,
        split: str,
        rows: list[dict[str, Any]],
        encode: Callable[[dict[str, list]], dict[str, list]],
        fields: Sequence[str],
    ) -> None:
        """``self.datasets[split]``: ``rows`` through ``encode``, which leaves out the rows the truncation rule
        drops and flags those it cuts (``truncated``); both are counted and logged. Raises when rows were given
        and all of them were dropped."""
        dataset = ColumnDataset.from_rows(rows, encode, desc=f"tokenize {self.kind}/{split}", fields=fields)
        self.datasets[split] = dataset
        self.dropped_rows[split] = len(rows) - len(dataset)
        self.truncated_rows[split] = sum(dataset["truncated"]) if len(dataset) else 0
        where = f"{self.kind}/{split}"
        why = (
            f"whose prompt must be cut but whose frame (BOS, the chat template's header and the assistant header, "
            f"see bmc/data/tokenize.py) leaves no token of its content within the prompt's budget "
            f"(max_prompt_length={self.truncation.max_prompt_length}, or what the responses leave of "
            f"max_length={self.truncation.max_length})"
        )
        if rows and not dataset:
            raise ValueError(
                f"{where}: all {len(rows)} {self.noun}(s) were dropped, {why}; raise truncation.max_prompt_length"
            )
        if self.dropped_rows[split]:
            log.warning("%s: dropped %d of %d %s(s) %s", where, self.dropped_rows[split], len(rows), self.noun, why)
        if self.truncated_rows[split]:
            log.warning(
                "%s: truncated %d of %d %s(s) longer than max_length=%d (the prompt after its BOS and chat header, "
                "keeping its end, not below %d tokens, then the responses from the right)%s",
                where,
                self.truncated_rows[split],
                len(rows),
                self.noun,
                self.truncation.max_length,
                self.truncation.max_prompt_length,
                self._after_the_cut(dataset),
            )

    def _after_the_cut(self, dataset: ColumnDataset) -> str:
        """What the truncation log line adds about the cut rows of ``dataset`` (nothing here)."""
        return ""

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            generator=generator,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)


class SFTDataModule(_TokenizedDataModule):
    """(prompt, response) examples for supervised fine-tuning; loss only on response tokens."""

    kind = "sft"
    noun = "example"

    def __init__(self, train: list[dict[str, str]], val: list[dict[str, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows = {"train": train, "val": val}

    def setup(self, stage: str | None = None) -> None:
        for split, rows in self.rows.items():
            if split not in self.datasets:
                self._tokenize(split, rows, self._encode, fields=("prompt", "response"))

    def _encode(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"prompt_ids": [], "response_ids": [], "truncated": []}
        prompts = encode_prompts(self.tokenizer, batch["prompt"])
        responses = encode_responses(self.tokenizer, batch["response"])
        for prompt, response in zip(prompts, responses):
            cut = self.truncation.apply(prompt, [response], self.prompt_frame)
            if cut is None:  # dropped: counted by _tokenize from the rows left out
                continue
            prompt, (response,), truncated = cut
            out["prompt_ids"].append(prompt)
            out["response_ids"].append(response)
            out["truncated"].append(truncated)
        return out

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_sequences(
            [r["prompt_ids"] for r in rows], [r["response_ids"] for r in rows], self.tokenizer.pad_token_id
        )


class PreferenceDataModule(_TokenizedDataModule):
    """(prompt, chosen, rejected) pairs; a batch holds the B chosen rows first, then the B rejected rows.

    ``masks`` configures the BMC diff masks between chosen and rejected response tokens
    (``alignment``: levenshtein | difflib, ``exclude_stopwords``); they depend only on the data, so they
    are computed here once, never per training step. ``length_grouping`` batches pairs of similar length
    together (:class:`EpochSampler`) to cut padding. When :func:`bmc.reference.attach_reference_logps` has
    added the cached reference log-probs to the datasets, batches carry them as ``ref_token_logps``.
    """

    kind = "pairs"
    noun = "pair"
    #: the token-id columns of a tokenized row, which the reference cache's key hashes (bmc.reference)
    id_columns = ID_COLUMNS

    def __init__(
        self,
        train: list[dict[str, str]],
        val: list[dict[str, str]],
        masks: dict[str, Any] | None = None,
        length_grouping: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rows = {"train": train, "val": val}
        self.masks = {"alignment": "levenshtein", "exclude_stopwords": True, **(masks or {})}
        self.length_grouping = length_grouping
        self._sampler: EpochSampler | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches) of a checkpoint being resumed

    def setup(self, stage: str | None = None) -> None:
        stopwords = stopword_token_ids(self.tokenizer) if self.masks["exclude_stopwords"] else frozenset()
        for split, rows in self.rows.items():
            if split in self.datasets:
                continue
            if not rows:  # training needs pairs, validation a loss to report; the pipeline never passes none
                raise ValueError(f"PreferenceDataModule: the {split} split has no pairs")
            encode = partial(self._encode, stopwords=stopwords)
            self._tokenize(split, rows, encode, fields=self._fields())

    def _fields(self) -> tuple[str, ...]:
        """The fields of a row that tokenizing reads."""
        return ("prompt", "chosen", "rejected")

    def _after_the_cut(self, dataset: ColumnDataset) -> str:
        # cutting the responses can remove the only tokens in which they differ: no preference signal is left
        identical = sum(
            cut and c == r for cut, c, r in zip(dataset["truncated"], dataset["chosen_ids"], dataset["rejected_ids"])
        )
        return f"; {identical} of them have identical responses after the cut"

    def train_dataloader(self) -> DataLoader:
        # (The SFT warm start keeps its seeded shuffle: it runs in one process, is never resumed, and its
        # cached checkpoints stay what this code trains.)
        dataset = self.datasets["train"]
        lengths = self.pair_lengths("train") if self.length_grouping else None
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        self._sampler = EpochSampler(dataset, self.batch_size, lengths, world_size=world, rank=rank, seed=self.seed)
        if self._resume is not None:
            self._sampler.resume(*self._resume)
        return self._loader("train", False, self.batch_size, sampler=self._sampler)

    # Lightning stores state_dict() in every checkpoint and hands it to load_state_dict() on resume, before or
    # after it builds the training loader (strategies differ): the position of training inside its epoch
    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches have been trained on (their training step has run)."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume inside the saved epoch: its first pass skips the batches trained on before the checkpoint."""
        if not state:
            return
        self._resume = (state["epoch"], state["batches"])
        if self._sampler is not None:
            self._sampler.resume(*self._resume)

    def pair_lengths(self, split: str) -> list[int]:
        """Each pair's row length in a batch: its prompt plus the longer of its two responses, in tokens."""
        dataset = self.datasets[split]
        return [
            len(p) + max(len(c), len(r))
            for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])
        ]

    def _encode(self, batch: dict[str, list], stopwords: frozenset[int]) -> dict[str, list]:
        out: dict[str, list] = {
            k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_marks", "rejected_marks", "truncated")
        }
        prompts = encode_prompts(self.tokenizer, batch["prompt"])
        chosen = encode_responses(self.tokenizer, batch["chosen"])
        rejected = encode_responses(self.tokenizer, batch["rejected"])
        for prompt_ids, chosen_ids, rejected_ids in zip(prompts, chosen, rejected):
            chosen_marks, rejected_marks = diff_masks(
                chosen_ids, rejected_ids, alignment=self.masks["alignment"], stopword_ids=stopwords
            )
            cut = self.truncation.apply(prompt_ids, [chosen_ids, rejected_ids], self.prompt_frame)
            if cut is None:  # dropped: counted by _tokenize from the rows left out
                continue
            prompt_ids, (chosen_ids, rejected_ids), truncated = cut
            out["prompt_ids"].append(prompt_ids)
            out["chosen_ids"].append(chosen_ids)
            out["rejected_ids"].append(rejected_ids)
            out["chosen_marks"].append(chosen_marks[: len(chosen_ids)])
            out["rejected_marks"].append(rejected_marks[: len(rejected_ids)])
            out["truncated"].append(truncated)
        return out

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt_ids"] for r in rows] * 2
        responses = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        marks = [r["chosen_marks"] for r in rows] + [r["rejected_marks"] for r in rows]
        ref_logps = None
        if REF_COLUMNS[0] in rows[0]:
            ref_logps = [r[REF_COLUMNS[0]] for r in rows] + [r[REF_COLUMNS[1]] for r in rows]
        return pad_sequences(prompts, responses, self.tokenizer.pad_token_id, marks, ref_logps)
