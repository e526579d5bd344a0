"""Benchmark: importing 100,000 prompts and 100,000 preference rows, against a plain bulk insert of the same rows.

    .venv/bin/python -m bench.imports                      # 100,000 rows of each, SQLite in a temporary folder
    .venv/bin/python -m bench.imports --rows 20000         # a quick run
    .venv/bin/python -m bench.imports --database postgres://postgres@127.0.0.1:5432/bench_imports   # emptied first

Writes a JSON Lines file of prompts and one of TRL preference rows, then runs each import in a fresh Python process
(so its peak resident memory is its own), on an emptied database each time:

    prompts       data.imports: parse_prompts + prompts_import, what `manage.py import_prompts` and the page run
    preferences   annotate.data.imports: parse_preferences + preferences_import (prompt, two answers, a pair, a vote)
    plain-*       the baseline: the same lines decoded with json.loads and stored with bulk_create in batches of 500,
                  with none of the checks (the least the database and Django need for the same rows)

Each runs --repeat times, interleaved; prints the median seconds, the ratio to the baseline, the goal (30 s for
100,000 rows), peak memory above the idle process for all rows and for a tenth of them, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 30.0
BATCH = 500


def _django(database: str, scratch: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="annotate.settings",
        DATABASE_URL=database,
        PAIRLOOP_VAR_DIR=str(scratch),
        SECRET_KEY="bench-only-secret-key",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()


def write_files(scratch: Path, rows: int) -> dict[str, Path]:
    """Prompts a few sentences long (as in MT-Bench) and preference rows with answers of about 60 words."""
    words = [
        "the",
        "model",
        "answer",
        "because",
        "first",
        "then",
        "so",
        "which",
        "data",
        "vote",
        "pair",
        "clear",
        "short",
        "long",
    ]

    def sentence(number: int, length: int) -> str:
        return f"{number}: " + " ".join(words[(number * 7 + i) % len(words)] for i in range(length)) + "."

    files = {}
    for size, suffix in ((rows, "all"), (rows // 10, "tenth")):
        prompts = scratch / f"prompts-{suffix}.jsonl"
        prompts.write_text(
            "".join(
                json.dumps({"prompt": f"Question {sentence(n, 30)}", "tags": ["bench"]}) + "\n" for n in range(size)
            )
        )
        preferences = scratch / f"preferences-{suffix}.jsonl"
        preferences.write_text(
            "".join(
                json.dumps(
                    {
                        "prompt": f"Question {sentence(n, 30)}",
                        "chosen": sentence(n, 60),
                        "rejected": sentence(n + 1, 60),
                    }
                )
                + "\n"
                for n in range(size)
            )
        )
        files[f"prompts-{suffix}"], files[f"preferences-{suffix}"] = prompts, preferences
    return files


def _empty() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)


def plain_prompts(path: Path) -> int:
    from annotate.data.imports import batched
    from annotate.models import Prompt, conversation_hash

    count = 0
    for chunk in batched(path.read_text().splitlines(), BATCH):
        prompts = []
        for line in chunk:
            messages = [{"role": "user", "content": json.loads(line)["prompt"]}]
            prompts.append(Prompt(messages=messages, content_hash=conversation_hash(messages), prompt_set="plain"))
        count += len(Prompt.objects.bulk_create(prompts))
    return count


def plain_preferences(path: Path) -> int:
    from annotate.data.imports import batched, external_version
    from annotate.models import Completion, Judgement, Pair, Prompt, conversation_hash

    version = external_version(dataset_format="trl")
    count = 0
    for chunk in batched(path.read_text().splitlines(), BATCH):
        rows = [json.loads(line) for line in chunk]
        prompts = Prompt.objects.bulk_create(
            Prompt(messages=m, content_hash=conversation_hash(m), prompt_set="plain", is_active=False)
            for m in ([{"role": "user", "content": row["prompt"]}] for row in rows)
        )
        answers = Completion.objects.bulk_create(
            Completion(prompt=prompt, model_version=version, text=row[side], sampling={})
            for prompt, row in zip(prompts, rows, strict=True)
            for side in ("chosen", "rejected")
        )
        pairs = Pair.objects.bulk_create(
            Pair(
                prompt=prompt,
                completion_a=answers[2 * i],
                completion_b=answers[2 * i + 1],
                sampled_from=version,
                judgements_required=1,
                judgement_count=1,
            )
            for i, prompt in enumerate(prompts)
        )
        Judgement.objects.bulk_create(
            Judgement(pair=pair, annotator=None, choice="a", source="imported", source_detail="plain") for pair in pairs
        )
        count += len(pairs)
    return count


def measure(database: str, scratch: Path, run: dict[str, Any]) -> dict[str, Any]:
    _django(database, scratch)
    from django.db import transaction

    from annotate.data import imports

    _empty()
    path = Path(run["path"])
    started, cpu_started = time.perf_counter(), time.process_time()
    if run["kind"] == "prompts":
        result = imports.prompts_import(
            rows=imports.parse_prompts(imports.read_file(path), file_format="jsonl"), prompt_set="bench", source="b"
        )
        stored = result.created
    elif run["kind"] == "preferences":
        parsed = imports.parse_preferences(imports.file_lines(path), dataset_format="trl")
        stored = imports.preferences_import(preference_file=parsed, dataset_format="trl", file_name="bench").imported
    elif run["kind"] == "plain-prompts":
        with transaction.atomic():
            stored = plain_prompts(path)
    elif run["kind"] == "plain-preferences":
        with transaction.atomic():
            stored = plain_preferences(path)
    else:
        stored = 0
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {**run, "stored": stored, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mib": peak_kib / 1024}


def _in_subprocess(database: str, scratch: Path, run: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.imports", "--measure", json.dumps(run), "--database", database,
               "--scratch", str(scratch)]  # fmt: skip
    output = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def report(results: list[dict[str, Any]], rows: int, database: str, load: str) -> str:
    idle = next(r for r in results if r["kind"] == "idle")["peak_mib"]
    lines = [
        f"database: {'PostgreSQL' if database.startswith('postgres') else 'SQLite'}; {rows:,} rows a file; "
        f"load average before: {load}; after: {_load()}",
        "",
        f"{'import':<12} {'stored':>8} {'seconds':>8} {'spread':>13} {'plain':>7} {'x plain':>7} {'CPU s':>6} "
        f"{'goal':>5} {'MiB all':>8} {'MiB tenth':>9}",
    ]
    for kind in ("prompts", "preferences"):

        def runs(name: str, share: str = "all") -> list[dict[str, Any]]:
            return [r for r in results if r["kind"] == name and r["share"] == share]

        ours, plain = runs(kind), runs(f"plain-{kind}")
        seconds = statistics.median(r["seconds"] for r in ours)
        plain_seconds = statistics.median(r["seconds"] for r in plain)
        tenth = runs(kind, "tenth")
        lines.append(
            f"{kind:<12} {ours[0]['stored']:>8,} {seconds:>8.1f} "
            f"{min(r['seconds'] for r in ours):>6.1f}-{max(r['seconds'] for r in ours):<6.1f} {plain_seconds:>7.1f} "
            f"{seconds / plain_seconds:>7.2f} {statistics.median(r['cpu_seconds'] for r in ours):>6.1f} "
            f"{'met' if seconds <= GOAL_SECONDS * rows / 100_000 else 'miss':>5} "
            f"{max(r['peak_mib'] for r in ours) - idle:>8.0f} {tenth[0]['peak_mib'] - idle if tenth else 0:>9.0f}"
        )
    lines.append(
        "(x plain: time against the plain bulk insert of the same rows; goal: 30 s per 100,000 rows; "
        "MiB: peak memory above the idle process, for all rows and for a tenth of them)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--database", help="a PostgreSQL URL (emptied first); default: SQLite in a temporary folder")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one run, in a child process
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.measure:
        print(json.dumps(measure(arguments.database, arguments.scratch, json.loads(arguments.measure))))
        return

    with tempfile.TemporaryDirectory(prefix="pairloop-bench-imports-") as directory:
        scratch = Path(directory)
        database = arguments.database or f"sqlite:///{scratch / 'bench.sqlite3'}"
        load = _load()
        files = write_files(scratch, arguments.rows)
        runs = [{"kind": "idle", "share": "all", "path": str(files["prompts-tenth"])}]
        for _ in range(arguments.repeat):
            for kind in ("prompts", "preferences"):
                for name in (f"plain-{kind}", kind):
                    runs.append({"kind": name, "share": "all", "path": str(files[f"{kind}-all"])})
        for kind in ("prompts", "preferences"):
            runs.append({"kind": kind, "share": "tenth", "path": str(files[f"{kind}-tenth"])})
        results = []
        for number, run in enumerate(runs, start=1):
            print(f"[{number}/{len(runs)}] {run['kind']} ({run['share']}) ...", flush=True)
            results.append(_in_subprocess(database, scratch, run))
        text = report(results, arguments.rows, database, load)
    print(text)
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
