"""Writing rows to a file: JSON Lines (through training.jsonl, the project's one JSON Lines writer) or Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from training.jsonl import JsonLinesWriter

FILE_FORMATS = ("jsonl", "parquet")
PARQUET_BATCH = 5000  # rows per Parquet record batch (and row group)
Row = dict[str, Any]


class RowWriter(Protocol):
    def write(self, row: Row) -> None: ...
    def close(self) -> None: ...


class ParquetBatchWriter:
    """Rows buffered into record batches of `batch_rows`, each written as it fills."""

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int | None = None) -> None:
        self._schema = schema
        self._batch_rows = batch_rows or PARQUET_BATCH
        self._rows: list[Row] = []
        self._writer = pq.ParquetWriter(str(path), schema)

    def write(self, row: Row) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def open_writer(file_format: str, path: Path, schema: pa.Schema) -> RowWriter:
    return ParquetBatchWriter(path, schema) if file_format == "parquet" else JsonLinesWriter(path)
