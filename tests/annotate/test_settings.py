"""The settings module's defaults are the ones README's configuration table documents.

The defaults are read from annotate/settings.py in a fresh process with none of the variables set (the test
settings and this machine's environment change some), and compared with the table as written: two independent
statements of the same numbers, so a default changed in one place only fails here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.readme import README, TABLE_HEADER, readme_defaults

REPO = Path(__file__).resolve().parent.parent.parent
DUMP_DEFAULTS = """
import json, sys
import annotate.settings as settings
names = json.loads(sys.argv[1])
values = {name: getattr(settings, name) for name in names if hasattr(settings, name)}
# The round config's variables (ROUND_BETA ...) land in one dict, by field name.
config = {f"ROUND_{field.upper()}": value for field, value in settings.ROUND_CONFIG_DEFAULTS.items()}
values.update({name: config[name] for name in names if name in config})
print(json.dumps({"base_dir": str(settings.BASE_DIR), "values": values}, default=str))
"""


def settings_defaults(names: list[str]) -> tuple[Path, dict[str, object]]:
    """The settings module's values with only PATH and a SECRET_KEY in the environment (required with DEBUG off)."""
    env = {"PATH": os.environ["PATH"], "SECRET_KEY": "settings-defaults-test", "HOME": os.environ.get("HOME", "/")}
    done = subprocess.run(
        [sys.executable, "-c", DUMP_DEFAULTS, json.dumps(names)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    dumped = json.loads(done.stdout.strip().splitlines()[-1])
    return Path(dumped["base_dir"]), dumped["values"]


def matches(documented: str, value: object, table: dict[str, str], base_dir: Path) -> bool:
    documented = table.get(documented, documented)  # "`SECURE_COOKIES`": that variable's default
    if isinstance(value, bool):
        return documented == str(value).lower()
    if isinstance(value, int | float):
        return math.isclose(float(documented), value, rel_tol=1e-12)
    if isinstance(value, list):
        return documented == ",".join(value)
    return str(value).replace(f"{base_dir}/", "") == documented  # paths (in URLs too) are relative to the checkout


def test_readme_documents_the_settings_modules_defaults():
    documented = readme_defaults(README.read_text())
    base_dir, values = settings_defaults(sorted(documented))

    wrong = {
        name: (literal, values[name])
        for name, literal in documented.items()
        if name in values and not matches(literal, values[name], documented, base_dir)
    }
    assert wrong == {}, "README's default (left) differs from annotate/settings.py's (right)"
    # Not vacuous: the table's literal defaults are read, and nearly all of them are settings of that name.
    assert len(documented) >= 80 and len(set(documented) & set(values)) >= 70, sorted(set(documented) - set(values))
    assert {"QUALITY_MIN_COMPETENCE", "ROUND_GATE_TOLERANCE", "ROUND_LEARNING_RATE", "LEASE_SECONDS"} <= set(values)


def test_the_table_parser_reads_rows_of_several_variables():
    readme = "\n".join([
        TABLE_HEADER, "| --- | --- | --- |",
        "| `A_ONE` / `A_TWO` | `0.5` / `x` | two |",
        "| `B_ONE`, `B_TWO` | `1`, `-1` | two more; `C_NOT` is in the meaning |",
        "| `WORDS` | half the cores | prose |",
        "| `PIPE` | `60/minute` | `N/second\\|minute` |",
        "",
        "| `AFTER` | `1` | not the table |",
    ])  # fmt: skip
    assert readme_defaults(readme) == {"A_ONE": "0.5", "A_TWO": "x", "B_ONE": "1", "B_TWO": "-1", "PIPE": "60/minute"}
