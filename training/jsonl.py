"""JSON Lines in and out: the one writer every file of rows goes through (rounds' data, exports, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

# Keys that are not strings (a count by strength, say) become strings, as the standard library writes them; NaN and
# infinity become null, which every JSON reader accepts (the standard library would write NaN, which strict ones
# refuse).
_OPTIONS = orjson.OPT_NON_STR_KEYS
WRITE_BUFFER = 1 << 20


class JsonLinesWriter:
    """One JSON object a line, UTF-8, characters as they are (no \\u escapes): what `datasets` and TRL read.

    Encoded with orjson: an export spends most of its time encoding rows, and orjson does it about ten times faster
    than the standard library (docs/benchmarks.md)."""

    def __init__(self, path: Path | str) -> None:
        # A buffer of a few hundred rows, not of a few (the default 8 KiB): fewer system calls, the same bytes.
        self._file = Path(path).open("wb", buffering=WRITE_BUFFER)  # noqa: SIM115 (closed by close() or the with block)

    def write(self, row: Any) -> None:
        self._file.write(orjson.dumps(row, option=_OPTIONS) + b"\n")

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
