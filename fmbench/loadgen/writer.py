"""Streams a shard's `RequestRecord`s to a parquet file while the shard runs.

Rows are kept as tuples as they complete (one C-level attribute fetch per record), with their
inter-token gaps or their chunk stamps (gaps then taken for the whole batch in numpy); every
``convert_rows`` rows they are transposed into columns and become an Arrow
record batch (a sub-millisecond step on the event loop), and every ``row_group_rows`` rows a
background thread appends a row group to a temporary file next to the target (the Parquet
encoding releases the GIL). `RecordWriter.commit` renames the file into place atomically, so the
records file exists only when complete; `RecordWriter.abort` keeps what was written under the
``.partial`` name. Memory is bounded by one row group whatever the number of requests.
"""

from __future__ import annotations

import operator
import os
import struct
from array import array
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmbench.errors import StorageError
from fmbench.records import REQUEST_SCHEMA, RequestRecord

_ARROW_TYPES = {
    "String": pa.string(),
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "Boolean": pa.bool_(),
}


def _arrow_schema() -> pa.Schema:
    fields = []
    for name, dtype in REQUEST_SCHEMA.items():
        if name == "itl_s":
            fields.append(pa.field(name, pa.large_list(pa.float64())))
        else:
            fields.append(pa.field(name, _ARROW_TYPES[type(dtype).__name__]))
    return pa.schema(fields)


ARROW_SCHEMA = _arrow_schema()
_CONVERT_VALUES = 50_000  # inter-token gaps gathered before converting: bounds each step to ~0.5 ms
_PACKERS = 256  # distinct stamp counts given a packer of their own (see add_row_stamped)
COMPRESSION = "zstd"  # the records files' parquet codec
_EXACT_TYPES = (str, int, bool, type(None))  # a column of one such value converts once per shard (see _column)
#: Columns dictionary-encoded in the file: the strings, ints and bools (labels, ids, counts, often one value
#: per shard). Not the floats: times and gaps are nearly all distinct, so a dictionary only costs the
#: writer thread time (64-chunk streams with real gaps: 13-15 -> 9 us per row in all threads) and
#: makes the file larger (5.5 -> 4.0 MB per 10,000 rows). The values read back are the same.
_DICTIONARY = [f.name for f in ARROW_SCHEMA if f.type in (pa.string(), pa.int64(), pa.bool_())]
_SCALARS = [f.name for f in ARROW_SCHEMA if f.name != "itl_s"]
#: The order of a row's values in `RecordWriter.add_row`: every schema column but ``itl_s``.
SCALAR_FIELDS = tuple(_SCALARS)
_FETCH = operator.attrgetter(*_SCALARS)  # a record's scalar fields as one tuple, in _SCALARS order


def _gaps(values: np.ndarray, offsets: np.ndarray, stamped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows' inter-token gaps from ``values``, where the segments of ``stamped`` rows hold chunk
    stamps (a row of k stamps has k - 1 gaps, ``t[j+1] - t[j]``) and the others hold gaps already."""
    lengths = np.diff(offsets)
    ends = offsets[1:][stamped & (lengths > 0)] - 1  # each stamped row's last stamp has no gap after it
    is_stamp = np.repeat(stamped, lengths)
    diffs = np.empty_like(values)
    diffs[:-1] = values[1:] - values[:-1]
    diffs[-1:] = 0.0
    gaps = np.where(is_stamp, diffs, values)
    keep = np.ones(len(values), dtype=bool)
    keep[ends] = False
    out_lengths = lengths - (stamped & (lengths > 0))
    new_offsets = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(out_lengths, out=new_offsets[1:])
    return gaps[keep], new_offsets


def open_records_file(path: str | Path) -> pq.ParquetWriter:
    """A parquet writer for a records file (`ARROW_SCHEMA`), with the codec and encodings of every one."""
    return pq.ParquetWriter(path, ARROW_SCHEMA, compression=COMPRESSION, use_dictionary=_DICTIONARY)


def partial_path(path: str | Path) -> Path:
    """Where a shard's records are written until the shard completes."""
    p = Path(path)
    return p.with_name(p.name + ".partial")


class RecordWriter:
    """Appends records to ``path`` in row groups; the file appears only on `commit`.

    Args:
        path: final local path of the records parquet file.
        row_group_rows: rows per parquet row group (and per background write).
        convert_rows: rows gathered before converting them to Arrow on the caller's thread.
    """

    def __init__(self, path: str | Path, row_group_rows: int = 2000, convert_rows: int = 250) -> None:
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.rows = 0
        self._row_group_rows = row_group_rows
        self._convert_rows = convert_rows
        self._rows: list[tuple[object, ...]] = []
        # The rows not yet converted: their inter-token gaps, or their chunk stamps (``_stamped``: 1)
        # whose gaps are taken at conversion, end to end.
        self._itl = array("d")
        self._offsets = array("q", [0])
        self._stamped = array("b")
        self._constants: dict[str, tuple[object, pa.Array]] = {}  # see _column
        self._packers: dict[int, Callable[..., bytes]] = {}  # see add_row_stamped
        self._batches: list[pa.RecordBatch] = []
        self._batched_rows = 0
        self._pending = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmbench-records")
        self._futures: list[Future[None]] = []
        self._writer: pq.ParquetWriter | None = None
        self._convert_empty()  # pays pyarrow's one-time set-up (about a second) before the shard starts
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot prepare records file: {exc}") from exc

    def _convert_empty(self) -> None:
        pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in ARROW_SCHEMA], schema=ARROW_SCHEMA)
        self._itl_array()

    def add(self, record: RequestRecord) -> None:
        """Queue one record (cheap: one tuple of its fields)."""
        itl = record.itl_s
        # An array("d") is queued as is; a list is converted first, so a non-number raises before
        # anything is queued.
        gaps = (itl if type(itl) is array and itl.typecode == "d" else array("d", itl)) if itl else None
        self.add_row(_FETCH(record), gaps)

    def add_row(self, row: tuple[object, ...], itl: array[float] | None) -> None:
        """Queue one record given as its values in `SCALAR_FIELDS` order and its inter-token gaps
        (the engine's successful requests: no `RequestRecord` is built for them)."""
        if itl is not None:
            self._itl.extend(itl)
        self._queue(row, 0)

    def add_row_stamped(self, row: tuple[object, ...], chunk_times: list[float]) -> None:
        """`add_row` given the chunk stamps instead of their gaps: the gaps (``t[k+1] - t[k]``, the
        same float subtraction) are taken for many rows at once at conversion, not per row in Python.
        A stamp that is not a number raises here, as ``array("d")`` would, before anything is queued."""
        n = len(chunk_times)
        pack = self._packers.get(n)
        if pack is None and len(self._packers) < _PACKERS:  # else an unusual spread of lengths
            pack = self._packers[n] = struct.Struct(f"{n}d").pack
        if pack is not None:
            # The stamps as native doubles in one C call: the same PyFloat_AsDouble per value as
            # ``array("d", ...)``, without its per-item setter (1.8 -> 0.7 us for 64 stamps).
            try:
                self._itl.frombytes(pack(*chunk_times))
            except struct.error:
                pass  # a bad stamp: the generic copy raises what it always raised for it
            else:
                self._queue(row, 1)
                return
        self._itl.extend(array("d", chunk_times))
        self._queue(row, 1)

    def _queue(self, row: tuple[object, ...], stamped: int) -> None:
        # The row's gaps or stamps are in ``_itl`` already: they end where its segment ends.
        self._rows.append(row)
        self._offsets.append(len(self._itl))
        self._stamped.append(stamped)
        self.rows += 1
        self._pending += 1
        if self._pending >= self._convert_rows or len(self._itl) >= _CONVERT_VALUES:
            self._convert()

    def _convert(self) -> None:
        if not self._pending:
            return
        cols = dict(zip(_SCALARS, zip(*self._rows, strict=True), strict=True))
        arrays = [self._column(f.name, f.type, cols[f.name]) if f.name != "itl_s" else self._itl_array()
                  for f in ARROW_SCHEMA]
        self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=ARROW_SCHEMA))
        self._batched_rows += self._pending
        self._rows = []
        self._itl = array("d")
        self._offsets = array("q", [0])
        self._stamped = array("b")
        self._pending = 0
        if self._batched_rows >= self._row_group_rows:
            self._submit()

    def _column(self, name: str, dtype: pa.DataType, values: tuple[object, ...]) -> pa.Array:
        # Most columns hold one value for a whole shard (its labels, ok, the status, the Nones of
        # a success): such a column, the same as the last one, reuses the Arrow array built then.
        # "The same": equal and of one exact type (a str or None equals only its own kind, but
        # True == 1 and Arrow tells them apart, hence the check of ints and bools); never floats,
        # as -0.0 == 0.0.
        first = values[0]
        kind = first.__class__
        n = len(values)
        if (kind in _EXACT_TYPES and values.count(first) == n
                and (kind is str or first is None or list(map(type, values)).count(kind) == n)):
            cached = self._constants.get(name)
            if cached is not None and cached[0].__class__ is kind and cached[0] == first and len(cached[1]) == n:
                return cached[1]
            arr = pa.array(values, type=dtype)
            self._constants[name] = (first, arr)
            return arr
        return pa.array(values, type=dtype)

    def _itl_array(self) -> pa.Array:
        values: np.ndarray = np.frombuffer(self._itl, dtype=np.float64)
        offsets: np.ndarray = np.frombuffer(self._offsets, dtype=np.int64)
        stamped = np.frombuffer(self._stamped, dtype=np.int8).astype(bool)
        if stamped.any():
            values, offsets = _gaps(values, offsets, stamped)
        values_arr = pa.Array.from_buffers(pa.float64(), len(values), [None, pa.py_buffer(values.tobytes())])
        offsets_arr = pa.Array.from_buffers(pa.int64(), len(offsets), [None, pa.py_buffer(offsets.tobytes())])
        return pa.LargeListArray.from_arrays(offsets_arr, values_arr)

    def _submit(self) -> None:
        if not self._batches:
            return
        table = pa.Table.from_batches(self._batches, schema=ARROW_SCHEMA)
        self._batches = []
        self._batched_rows = 0
        self._futures = [f for f in self._futures if not f.done() or f.exception()]
        self._futures.append(self._pool.submit(self._write, table))

    def _write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = open_records_file(self.tmp)
        self._writer.write_table(table)

    def _finish(self) -> None:
        try:
            self._convert()
            self._submit()
            self._pool.submit(self._close).result()
            for fut in self._futures:
                fut.result()  # re-raises a failed background write
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"{self.tmp}: cannot write records: {exc}") from exc
        finally:
            self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._writer is None:  # no rows at all: still a valid, empty file
            self._writer = open_records_file(self.tmp)
        self._writer.close()

    def commit(self) -> Path:
        """Write what is left, close the file and rename it into place; returns the final path."""
        self._finish()
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot move records into place: {exc}") from exc
        return self.path

    def abort(self) -> Path:
        """Write what is left and close, keeping the file under its ``.partial`` name."""
        self._finish()
        return self.tmp
