"""RecordWriter's cheap paths write what the plain path writes: gaps taken from chunk stamps at
conversion, and columns of one value converted once per shard."""

from __future__ import annotations

import operator
from array import array
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import fmbench.loadgen.writer as writer_module
from fmbench.loadgen.writer import SCALAR_FIELDS, RecordWriter

STATUS = SCALAR_FIELDS.index("http_status")
NOTE = SCALAR_FIELDS.index("note")
LAG = SCALAR_FIELDS.index("send_lag_s")


def _row(i: int, status: int, note: str | None, lag: float) -> tuple[object, ...]:
    row: list[object] = [None] * len(SCALAR_FIELDS)
    row[SCALAR_FIELDS.index("request_id")] = i
    row[STATUS], row[NOTE], row[LAG] = status, note, lag
    return tuple(row)


@pytest.mark.parametrize("packers", [256, 2], ids=["packed-stamps", "generic-copy-beyond-two-lengths"])
def test_stamped_rows_and_constant_columns_read_back_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              packers: int) -> None:
    monkeypatch.setattr(writer_module, "_PACKERS", packers)
    writer = RecordWriter(tmp_path / "r.parquet", row_group_rows=20, convert_rows=7)
    expected = []
    for i in range(50):
        stamps = [100.0 + i + 0.001 * k * k for k in range(i % 4)]  # 0 to 3 stamps: 0 to 2 gaps
        gaps = list(map(operator.sub, stamps[1:], stamps))
        # constant for whole batches, then another value; -0.0 among 0.0s must stay -0.0
        row = _row(i, 200 if i < 30 else 404, None if i < 40 else "n", -0.0 if i == 9 else 0.0)
        if i % 3 == 0:
            writer.add_row(row, array("d", gaps) if gaps else None)
        else:
            writer.add_row_stamped(row, stamps)
        expected.append((i, 200 if i < 30 else 404, None if i < 40 else "n", gaps))
    with pytest.raises(TypeError):
        writer.add_row_stamped(_row(50, 200, None, 0.0), [1.0, "late"])  # type: ignore[list-item]
    with pytest.raises(OverflowError):  # what array("d") raises for it, as before the packed copy
        writer.add_row_stamped(_row(50, 200, None, 0.0), [1.0, 2**1100])
    assert writer.rows == 50  # the odd row queued nothing
    path = writer.commit()
    table = pq.read_table(path)
    # Floats (times, gaps: nearly all distinct) are stored plain, labels and counts with a dictionary.
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(k).path_in_schema: group.column(k).encodings for k in range(group.num_columns)}
    assert "RLE_DICTIONARY" not in encodings["send_lag_s"] and "RLE_DICTIONARY" in encodings["note"]
    got = list(zip(table["request_id"].to_pylist(), table["http_status"].to_pylist(), table["note"].to_pylist(),
                   table["itl_s"].to_pylist(), strict=True))
    assert got == expected
    lags = table["send_lag_s"].to_pylist()
    assert [str(v) for v in lags[8:11]] == ["0.0", "-0.0", "0.0"]
