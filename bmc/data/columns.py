"""An in-memory, column-oriented dataset of tokenized rows.

The DataModules tokenize a few thousand rows once in ``setup``; holding them as plain Python lists keeps
``datasets`` (and its pyarrow and pandas, about 80 MB of resident memory) off the training path. A
``datasets.Dataset`` is still what :mod:`bmc.data.hf_prefs` loads from the hub or local files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, overload

from torch.utils.data import Dataset
from tqdm.auto import tqdm

#: the token-id columns of a tokenized preference pair
ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
#: the columns that hold the reference model's log-prob of each response token (:mod:`bmc.reference` fills them)
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


class ColumnDataset(Dataset):
    """Equal-length named columns: ``ds[i]`` is row ``i`` as a dict, ``ds["name"]`` is a whole column."""

    def __init__(self, columns: dict[str, list[Any]]) -> None:
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"columns of different lengths: {lengths}")
        self.columns = columns
        self._length = next(iter(lengths.values()), 0)

    @classmethod
    def from_rows(
        cls,
        rows: list[dict[str, Any]],
        encode: Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
        desc: str,
        batch_size: int = 1000,
        fields: Sequence[str] | None = None,
    ) -> ColumnDataset:
        """``encode`` applied to ``rows`` in batches of ``batch_size`` (a dict of input columns in, a dict of
        output columns out, one entry per row it keeps), with a progress bar. ``fields`` are the input columns
        ``encode`` reads (default: the first row's); only they are handed to it, so other keys of the rows
        (a dataset's extra columns, which rows may lack) never reach the tensors."""
        out: dict[str, list[Any]] = {}
        with tqdm(total=len(rows), desc=desc, unit="rows") as bar:
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                encoded = encode({name: [row[name] for row in batch] for name in fields or batch[0]})
                for name, values in encoded.items():
                    out.setdefault(name, []).extend(values)
                bar.update(len(batch))
        return cls(out)

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def with_columns(self, columns: dict[str, list[Any]]) -> ColumnDataset:
        """A dataset with ``columns`` added, or replacing same-named ones."""
        return ColumnDataset({**self.columns, **columns})

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, key: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, key: str) -> list[Any]: ...
    def __getitem__(self, key: int | str) -> dict[str, Any] | list[Any]:
        if isinstance(key, str):
            return self.columns[key]
        if not -self._length <= key < self._length:
            raise IndexError(f"row {key} out of range for {self._length} rows")
        return {name: values[key] for name, values in self.columns.items()}

    def rows(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Every row as a dict, of the columns ``names`` (all by default)."""
        selected = {name: self.columns[name] for name in (names or self.columns)}
        return [dict(zip(selected, values)) for values in zip(*selected.values())]
