"""JSON Lines in and out: the one writer every file of rows goes through (rounds' data, exports, benchmarks)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any


class JsonLinesWriter:
    """One JSON object a line, UTF-8, characters as they are (no \\u escapes): what `datasets` and TRL read."""

    def __init__(self, path: Path | str) -> None:
        self._file = Path(path).open("w", encoding="utf-8")  # noqa: SIM115 (closed by close() or the with block)

    def write(self, row: Any) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonLinesWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def write_jsonl(path: Path | str, rows: Iterable[Any]) -> int:
    """Write `rows` to `path`; returns how many were written."""
    count = 0
    with JsonLinesWriter(path) as writer:
        for row in rows:
            writer.write(row)
            count += 1
    return count
