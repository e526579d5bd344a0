"""README's configuration table, read as data: the tests hold the settings' defaults to what it documents."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
TABLE_HEADER = "| variable | default | meaning |"


def readme_defaults(readme: str) -> dict[str, str]:
    """Each variable of README's configuration table with its default as written, where the default is a literal
    (a backticked value; rows like "empty" or "half the cores" are left out). A row may name several variables,
    separated by " / " or ", ", with as many defaults in the same order."""
    lines = readme.splitlines()
    start = lines.index(TABLE_HEADER) + 2  # past the header and its --- row
    defaults: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        variables, default = re.split(r"(?<!\\)\|", line)[1:3]
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", variables)
        values = re.findall(r"`([^`]*)`", default)
        if re.sub(r"`[^`]*`", "", default).strip(" /,") or len(values) != len(names):
            continue  # prose, or a default given in words
        defaults.update(zip(names, values, strict=True))
    return defaults
