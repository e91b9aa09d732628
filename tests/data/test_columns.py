"""ColumnDataset: rows, columns and batched encoding."""

from __future__ import annotations

import pytest


def test_column_dataset_rows_columns_and_batched_encoding() -> None:
    from bmc.data.columns import ColumnDataset

    rows = [{"text": "ab" * i, "keep": i} for i in range(5)]
    seen_batches = []

    def encode(batch: dict[str, list]) -> dict[str, list]:
        seen_batches.append(len(batch["text"]))
        return {"length": [len(t) for t in batch["text"]], "keep": batch["keep"]}

    ds = ColumnDataset.from_rows(rows, encode, desc="test", batch_size=2)
    assert seen_batches == [2, 2, 1]
    assert len(ds) == 5 and ds.column_names == ["length", "keep"]
    assert ds["length"] == [0, 2, 4, 6, 8] and ds[3] == {"length": 6, "keep": 3} and ds[-1]["keep"] == 4
    with pytest.raises(IndexError, match="row 5 out of range for 5 rows"):
        ds[5]
    wider = ds.with_columns({"keep": [9] * 5, "extra": list("vwxyz")})
    assert wider[0] == {"length": 0, "keep": 9, "extra": "v"} and ds[0]["keep"] == 0  # the original is unchanged
    assert wider.rows(["extra"]) == [{"extra": c} for c in "vwxyz"]
    with pytest.raises(ValueError, match="columns of different lengths"):
        ds.with_columns({"short": [1, 2]})
