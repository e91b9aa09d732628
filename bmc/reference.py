"""Per-token reference log-probs, computed once before the first optimizer step and cached on disk.

The reference of the preference stage is the SFT model, and the policy is that same model until its first
optimizer step; so the reference log-probs of every pair are computed with the policy itself at the start of
``fit`` (no second copy of the model is ever built; each rank of a multi-process run scores a share), stored
under ``<cache>/ref_logps/<key>``, and handed to the module in each batch as ``ref_token_logps``. The key holds
the model checkpoint, the tokenizer, the exact token ids of every pair after truncation, the truncation settings
and the precision, so runs and sweep jobs that share them share one entry; a run with a cache hit runs no
reference forward at all.

Values are stored per response token (chosen and rejected separately; for ranked lists, each of a prompt's K
responses), not as sequence sums, because BMC token weighting needs the reference's per-token confidence.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from bmc.data.columns import ID_COLUMNS, REF_COLUMNS, ColumnDataset
from bmc.data.lists import LIST_ID_COLUMNS, LIST_REF_COLUMN
from bmc.distributed import cached_on_every_rank, split_across_ranks
from bmc.logprobs import SCORING_REVISION, response_token_logps, shared_prompt_token_logps
from bmc.precision import DEFAULT_PRECISION, Precision
from bmc.scoring_check import verify_scoring

#: part of the cache key, so that entries in an earlier file format are never read as this one
_FILE_FORMAT = "safetensors-flat-v1"


def token_ids_hash(dataset: ColumnDataset, columns: tuple[str, ...] = ID_COLUMNS) -> str:
    """A hash of the token ids of every row (prompt/chosen/rejected, or a list's prompt/responses), in order (data,
    tokenizer and truncation)."""
    return hashlib.sha256(json.dumps({name: dataset[name] for name in columns}).encode()).hexdigest()[:16]


def save_logps(columns: dict[str, list[Any]], path: Path) -> None:
    """Each column's rows concatenated into one float32 tensor, with the row lengths beside it. A column whose rows
    are lists of tensors (a list's K responses) is stored response by response, with each row's K beside it."""
    tensors = {}
    for name, rows in columns.items():
        if rows and isinstance(rows[0], list):
            tensors[f"{name}.sizes"] = torch.tensor([len(row) for row in rows], dtype=torch.int64)
            rows = [response for row in rows for response in row]
        tensors[name] = torch.cat(rows) if rows else torch.zeros(0)
        tensors[f"{name}.lengths"] = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    save_file(tensors, str(path))


def load_logps(path: Path) -> dict[str, list[Any]]:
    """The columns :func:`save_logps` wrote, one list of floats per row (a list of them per list row)."""
    tensors = load_file(str(path))
    columns: dict[str, list[Any]] = {}
    for name in (*REF_COLUMNS, LIST_REF_COLUMN):
        if name not in tensors:
            continue
        rows = [row.tolist() for row in tensors[name].split(tensors[f"{name}.lengths"].tolist())]
        if f"{name}.sizes" in tensors:
            ends = tensors[f"{name}.sizes"].cumsum(0).tolist()
            rows = [rows[end - size : end] for end, size in zip(ends, tensors[f"{name}.sizes"].tolist())]
        columns[name] = rows
    return columns


def _on(device: torch.device, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def length_batches(
    widths: list[int], rows_per_item: int | list[int], batch_size: int, batch_tokens: int | None = None
) -> list[list[int]]:
    """Indices of items of the given ``widths`` grouped into batches in order of width, each of at most
    ``batch_size`` items and, with ``batch_tokens``, at most that many padded positions (``rows_per_item`` rows
    per item, or each item's own number of rows, each row as wide as the batch's widest). An item wider than
    ``batch_tokens`` on its own gets a batch of its own: nothing is ever dropped or cut."""
    rows = [rows_per_item] * len(widths) if isinstance(rows_per_item, int) else rows_per_item
    batches: list[list[int]] = []
    for index in sorted(range(len(widths)), key=widths.__getitem__):
        batch = batches[-1] if batches else []
        # widths ascend, so the candidate is the widest of its batch
        fits = len(batch) < batch_size and (
            batch_tokens is None or (sum(rows[i] for i in batch) + rows[index]) * widths[index] <= batch_tokens
        )
        if batch and fits:
            batch.append(index)
        else:
            batches.append([index])
    return batches


def _rows_by_item(batch: dict[str, torch.Tensor], n_items: int) -> list[list[int]]:
    """The rows of a collated batch that hold each item's responses, in order: a list's rows follow one another
    (``list_index``), a pair's chosen row j comes with its rejected row ``n_items + j``."""
    if "list_index" not in batch:
        return [[j, n_items + j] for j in range(n_items)]
    owners = batch["list_index"].tolist()
    return [[row for row, owner in enumerate(owners) if owner == j] for j in range(n_items)]


def _ref_columns(dataset: ColumnDataset) -> tuple[str, ...]:
    """The columns :func:`compute_reference_logps` fills: one per response of a pair, or one for a ranked list's."""
    return (LIST_REF_COLUMN,) if LIST_ID_COLUMNS[1] in dataset.column_names else REF_COLUMNS


@torch.no_grad()
def compute_reference_logps(
    model: PreTrainedModel,
    dataset: ColumnDataset,
    collate: Any,
    batch_size: int,
    device: torch.device,
    precision: Precision = DEFAULT_PRECISION,
    desc: str = "reference log-probs",
    chunk_positions: int | None = None,
    share_prompt: bool = False,
    batch_tokens: int | None = None,
) -> dict[str, list[torch.Tensor]]:
    """Per-token log-probs of each row's chosen and rejected response under ``model`` (in eval mode): for each
    of the columns :data:`REF_COLUMNS`, one float32 tensor per input row; for ranked lists (rows with
    ``response_ids``), the column ``ref_response_logps``, one tensor per response of each row.

    Pairs are batched in order of length (:func:`length_batches`: at most ``batch_size`` pairs and, with
    ``batch_tokens``, that many padded positions per forward), so little compute goes into padding.
    ``share_prompt``: each pair's prompt runs once, as in training
    (:func:`~bmc.logprobs.shared_prompt_token_logps`). ``chunk_positions``: the chunked LM head of
    :mod:`bmc.logprobs`. Either is checked first on the first pair, as training checks it
    (:func:`~bmc.scoring_check.verify_scoring`). ``precision``: the trainer's (:mod:`bmc.precision`), which the
    values are computed in as training computes its own; a precision that casts the weights (``bf16-true``)
    leaves the model cast, as ``fit`` would.
    """
    was_training = model.training
    model.eval()
    original_device = next(model.parameters()).device
    model.to(device)
    precision.convert(model)  # the weights training starts from: Lightning casts them so at fit
    rows = dataset.rows()
    lists = LIST_ID_COLUMNS[1] in dataset.column_names
    responses = [row[LIST_ID_COLUMNS[1]] if lists else [row["chosen_ids"], row["rejected_ids"]] for row in rows]
    # a packed item is one row of its prompt + all its responses; a plain item one row of prompt + a response each
    packed_widths = [len(row["prompt_ids"]) + sum(map(len, rs)) for row, rs in zip(rows, responses)]
    plain_widths = [len(row["prompt_ids"]) + max(map(len, rs)) for row, rs in zip(rows, responses)]
    values: dict[str, list[Any]] = {name: [torch.zeros(0)] * len(rows) for name in _ref_columns(dataset)}
    try:
        # the check computes in float32 whatever the precision, and runs nothing without a path to check
        packs = bool(rows) and verify_scoring(model, _on(device, collate(rows[:1])), chunk_positions, share_prompt)
        score = shared_prompt_token_logps if packs else response_token_logps
        per_item = 1 if packs else [len(rs) for rs in responses]
        batches = length_batches(packed_widths if packs else plain_widths, per_item, batch_size, batch_tokens)
        for indices in tqdm(batches, desc=desc, unit="batch"):
            batch = _on(device, collate([rows[i] for i in indices]))
            with precision.forward_context(device):
                logps, mask = score(model, batch, chunk_positions)
            logps, mask = logps.float().cpu(), mask.cpu()
            for index, item_rows in zip(indices, _rows_by_item(batch, len(indices))):
                scored = [logps[row][mask[row]] for row in item_rows]
                if lists:
                    values[LIST_REF_COLUMN][index] = scored
                else:
                    values[REF_COLUMNS[0]][index], values[REF_COLUMNS[1]][index] = scored
    finally:
        model.to(original_device)
        model.train(was_training)
    return values


def _on_every_rank(model: PreTrainedModel, dataset: ColumnDataset, *args: Any, **kwargs: Any) -> dict[str, list[Any]]:
    """:func:`compute_reference_logps` of ``dataset``'s rows, rank r scoring rows r, r + world_size, ... (every row
    in one process); every rank gets all the values, in row order."""

    def score(indices: list[int]) -> list[dict[str, Any]]:
        share = ColumnDataset({name: [values[i] for i in indices] for name, values in dataset.columns.items()})
        logps = compute_reference_logps(model, share, *args, **kwargs)
        return [{name: values[j] for name, values in logps.items()} for j in range(len(indices))]

    rows = split_across_ranks(list(range(len(dataset))), score, what=f"rows of {kwargs.get('desc', 'the dataset')}")
    return {name: [row[name] for row in rows] for name in _ref_columns(dataset)}


def attach_reference_logps(
    datamodule: Any,
    model: PreTrainedModel,
    cache_dir: str | os.PathLike,
    model_key: dict[str, Any],
    precision: Precision = DEFAULT_PRECISION,
    device: torch.device | None = None,
    batch_size: int = 64,
    chunk_positions: int | None = None,
    share_prompt: bool = False,
    batch_tokens: int | None = None,
) -> Path:
    """Add the cached (or, on a miss, freshly computed) reference log-probs to every split of a set-up
    ``PreferenceDataModule``; returns the cache folder. Called on every rank of a multi-process run (inside
    ``Trainer.fit``, where the process group exists), the ranks compute a share of the rows each, gather them in
    order, and rank 0 writes the entry (:func:`bmc.distributed.cached_on_every_rank`).

    ``model`` must still hold the reference weights (the policy before training). ``model_key`` identifies
    it (checkpoint and spec); the tokenizer, token ids and truncation are added here.
    """
    tokenizer = datamodule.tokenizer
    payload = {
        "model": model_key,
        "tokenizer": {"name": tokenizer.name_or_path, "size": len(tokenizer), "class": type(tokenizer).__name__},
        "data": {split: token_ids_hash(ds, datamodule.id_columns) for split, ds in sorted(datamodule.datasets.items())},
        "truncation": {
            "max_length": datamodule.truncation.max_length,
            "max_prompt_length": datamodule.truncation.max_prompt_length,
        },
        "precision": precision.name,
        "format": _FILE_FORMAT,
        "scoring": SCORING_REVISION,
    }  # not the batching, chunk_positions or share_prompt: they lay out the computation, whose values agree to
    # float rounding (the conformance matrix, docs/architectures.md, and the first-batch check)

    def compute() -> dict[str, dict[str, list[Any]]]:
        return {split: _on_every_rank(model, dataset, datamodule.collate, batch_size, device or torch.device("cpu"),
                                      precision, desc=f"reference log-probs/{split}", chunk_positions=chunk_positions,
                                      share_prompt=share_prompt, batch_tokens=batch_tokens)
                for split, dataset in datamodule.datasets.items()}  # fmt: skip

    def write(values: dict[str, dict[str, list[Any]]], folder: Path) -> None:
        for split, logps in values.items():
            save_logps(logps, folder / f"{split}.safetensors")

    folder = cached_on_every_rank(cache_dir, "ref_logps", payload, compute, write)
    for split, dataset in datamodule.datasets.items():
        path = folder / f"{split}.safetensors"
        refs = load_logps(path)
        rows = {len(column) for column in refs.values()}
        if rows != {len(dataset)}:
            raise ValueError(f"{path}: {sorted(rows)} rows of reference log-probs for {len(dataset)} pairs")
        datamodule.datasets[split] = dataset.with_columns(refs)
    return folder
