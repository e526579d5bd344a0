"""Benchmark: streaming exports of a million votes, against a naive export of the same data.

    .venv/bin/python -m bench.export                   # 1,000,000 votes (500,000 pairs, two votes each)
    .venv/bin/python -m bench.export --votes 100000    # a quick run

Fills a scratch SQLite database (in a temporary directory, removed afterwards) through bulk_create, then runs each
export in a fresh Python process, so that its peak resident memory (ru_maxrss) is its own:

    idle        Django set up and the export modules imported, nothing exported: the floor of every process
    stream      annotate.exports.export_write, the code behind the page, the API and the command
    naive       the same rows, built by listing every vote first, then writing (what streaming avoids)

Every export reads a share of the votes through the prompt-set filter (5 %, 10 % or all of them). Streaming memory
should not grow with the share; the naive export's grows in proportion. Prints rows per second and the memory above
the idle floor for each run, and the ratios; --json writes the results to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCH = 20_000
PROMPTS = 20_000
ANNOTATORS = 50
# Prompt i is in set "a" when i % 20 == 0 and in "b" when i % 20 == 1: each holds 5 % of the pairs.
SHARES = {"5%": ("a",), "10%": ("a", "b"), "100%": ()}


def _django(database: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="annotate.settings",
        DATABASE_URL=f"sqlite:///{database}",
        PAIRLOOP_VAR_DIR=str(database.parent),
        SECRET_KEY="bench-only-secret-key",
        LOG_LEVEL="WARNING",
    )
    import django

    django.setup()


# --- Data --------------------------------------------------------------------------------------------------------


def _answer(rng: random.Random, number: int) -> str:
    words = ["the", "model", "answer", "because", "first", "then", "so", "which", "data", "vote", "pair", "clear"]
    return f"Answer {number}: " + " ".join(rng.choice(words) for _ in range(45)) + "."


def fill(database: Path, votes: int, seed: int = 0) -> dict[str, Any]:
    """Write `votes` votes (two per pair) with everything they hang on; returns the counts and seconds taken."""
    _django(database)
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import transaction

    from annotate.models import Completion, Judgement, ModelVersion, Pair, Prompt, conversation_hash

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    rng = random.Random(seed)
    pairs = votes // 2
    with transaction.atomic():
        base = ModelVersion.objects.create(name="base", base_model="/models/base", status="retired")
        round_one = ModelVersion.objects.create(
            name="round-1", base_model="/models/base", adapter_path="/rounds/1/adapter", parent=base, status="serving"
        )
        versions = [base.pk, round_one.pk]
        User.objects.bulk_create(User(username=f"annotator{i}", password="!") for i in range(ANNOTATORS))
        users = list(User.objects.values_list("id", flat=True))
        prompts = []
        for i in range(1, PROMPTS + 1):
            messages = [{"role": "user", "content": f"Question {i}: how would you explain preference learning?"}]
            prompt_set = {0: "a", 1: "b"}.get(i % 20, "rest")
            prompts.append(
                Prompt(id=i, messages=messages, content_hash=conversation_hash(messages), prompt_set=prompt_set)
            )
        Prompt.objects.bulk_create(prompts, batch_size=BATCH)
    for start in range(0, pairs, BATCH):
        numbers = range(start + 1, min(start + BATCH, pairs) + 1)
        with transaction.atomic():
            Completion.objects.bulk_create(
                Completion(
                    id=2 * n - side,
                    prompt_id=n % PROMPTS or PROMPTS,
                    model_version_id=versions[n % 2],
                    text=_answer(rng, 2 * n - side),
                    sampling={"temperature": 0.8, "top_p": 0.95, "max_tokens": 256, "seed": n},
                    seed=n,
                )
                for n in numbers
                for side in (1, 0)
            )
            Pair.objects.bulk_create(
                Pair(
                    id=n,
                    prompt_id=n % PROMPTS or PROMPTS,
                    completion_a_id=2 * n - 1,
                    completion_b_id=2 * n,
                    sampled_from_id=versions[n % 2],
                    judgements_required=2,
                    judgement_count=2,
                )
                for n in numbers
            )
            Judgement.objects.bulk_create(
                Judgement(
                    pair_id=n,
                    annotator_id=annotator,
                    choice=choice,
                    strength=rng.choice((1, 2, 3)) if choice in ("a", "b") else None,
                    a_on_left=rng.random() < 0.5,
                    idempotency_key=uuid.UUID(int=rng.getrandbits(128)),
                )
                for n in numbers
                for annotator in rng.sample(users, 2)
                for choice in [rng.choices(("a", "b", "tie", "both_bad"), weights=(45, 45, 6, 4))[0]]
            )
        print(f"  {min(start + BATCH, pairs):,} / {pairs:,} pairs", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {"votes": Judgement.objects.count(), "pairs": pairs, "seconds": round(time.perf_counter() - started, 1)}


# --- One measured export (in its own process) -------------------------------------------------------------------


def naive_export(dataset_format: str, file_format: str, filters: Any, path: Path) -> int:
    """Every vote in a list, every row in a list, then the file: memory grows with the data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from annotate.exports import FORMATS, RowContext, judgements_matching
    from annotate.preferences import judgements_for_preferences, verdicts

    spec, context = FORMATS[dataset_format], RowContext()
    votes = list(judgements_for_preferences(judgements_matching(filters)))
    rows = [row for verdict in verdicts(votes, spec.rules(filters.rules)) for row in spec.rows(verdict, context)]
    if file_format == "parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=spec.schema), path)
    else:
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def measure(database: Path, run: dict[str, Any]) -> dict[str, Any]:
    _django(database)
    from annotate.exports import ExportFilters, export_write, judgements_matching
    from annotate.preferences import PreferenceRules

    filters = ExportFilters(
        prompt_sets=SHARES[run["share"]], rules=PreferenceRules(include_ties=True, include_both_bad=True)
    )
    path = database.parent / f"{run['name']}.{run['file_format']}"
    votes = judgements_matching(filters).count()
    started = time.perf_counter()
    if run["kind"] == "stream":
        rows = export_write(
            dataset_format=run["dataset_format"], file_format=run["file_format"], filters=filters, path=path
        ).rows
    elif run["kind"] == "naive":
        rows = naive_export(run["dataset_format"], run["file_format"], filters, path)
    else:
        rows = 0
    seconds = time.perf_counter() - started
    size = path.stat().st_size if path.exists() else 0
    path.unlink(missing_ok=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        **run,
        "votes": votes,
        "rows": rows,
        "seconds": seconds,
        "peak_mib": peak_kib / 1024,
        "file_mib": size / 2**20,
    }


def _in_subprocess(database: Path, run: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.export", "--measure", json.dumps(run), "--database", str(database)]
    output = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


# --- The whole benchmark -----------------------------------------------------------------------------------------


def _runs(naive_full: bool) -> list[dict[str, Any]]:
    def run(
        kind: str, share: str, dataset_format: str = "trl-preference", file_format: str = "jsonl"
    ) -> dict[str, Any]:
        name = f"{kind}-{dataset_format}-{file_format}-{share.rstrip('%')}"
        return {
            "name": name,
            "kind": kind,
            "share": share,
            "dataset_format": dataset_format,
            "file_format": file_format,
        }

    runs = [run("idle", "5%")]
    runs += [run("stream", share) for share in ("5%", "10%", "100%")]
    runs += [run("stream", share, file_format="parquet") for share in ("5%", "100%")]
    runs += [run("stream", "100%", dataset_format="arena")]
    runs += [run("naive", share) for share in ("5%", "10%", *(("100%",) if naive_full else ()))]
    return runs


def report(fill_result: dict[str, Any], results: list[dict[str, Any]]) -> str:
    runs = {r["name"]: r for r in results}
    idle = next(r for r in results if r["kind"] == "idle")["peak_mib"]
    lines = [
        f"data: {fill_result['votes']:,} votes on {fill_result['pairs']:,} pairs, written in {fill_result['seconds']}s",
        f"idle process (Django and the export modules loaded): {idle:.0f} MiB",
        "",
        f"{'run':<40} {'votes':>10} {'rows':>10} {'seconds':>8} {'rows/s':>9} {'votes/s':>9} {'MiB above idle':>15}",
    ]
    for r in results:
        if r["kind"] != "idle":
            rows_per_second, votes_per_second = r["rows"] / r["seconds"], r["votes"] / r["seconds"]
            lines.append(
                f"{r['name']:<40} {r['votes']:>10,} {r['rows']:>10,} {r['seconds']:>8.1f} {rows_per_second:>9,.0f} "
                f"{votes_per_second:>9,.0f} {r['peak_mib'] - idle:>15.0f}"
            )

    def above(kind: str, share: str, file_format: str = "jsonl") -> float:
        return max(1.0, runs[f"{kind}-trl-preference-{file_format}-{share}"]["peak_mib"] - idle)

    def speed(kind: str, share: str) -> float:
        found = runs[f"{kind}-trl-preference-jsonl-{share}"]
        return float(found["rows"] / found["seconds"])

    flat_jsonl = above("stream", "100") / above("stream", "5")
    flat_parquet = above("stream", "100", "parquet") / above("stream", "5", "parquet")
    lines += [
        "",
        "ratios (memory above the idle floor, counted as 1 MiB at least):",
        f"  streaming JSON Lines, all votes / 5 %: {flat_jsonl:.2f}x (flat: about 1)",
        f"  streaming Parquet, all votes / 5 %: {flat_parquet:.2f}x",
        f"  naive, 10 % / 5 % of the votes: {above('naive', '10') / above('naive', '5'):.2f}x (grows with the data: 2)",
        f"  naive / streaming, the same 10 %: {above('naive', '10') / above('stream', '10'):.0f}x memory, "
        f"{speed('naive', '10') / speed('stream', '10'):.2f}x the rows per second",
    ]
    if "naive-trl-preference-jsonl-100" in runs:
        lines.append(f"  naive / streaming, all votes: {above('naive', '100') / above('stream', '100'):.0f}x memory")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--votes", type=int, default=1_000_000)
    parser.add_argument("--naive-full", action="store_true", help="also run the naive export on every vote (GBs)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one run, in a child process
    parser.add_argument("--database", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.measure:
        print(json.dumps(measure(arguments.database, json.loads(arguments.measure))))
        return

    with tempfile.TemporaryDirectory(prefix="pairloop-bench-export-") as scratch:
        database = Path(scratch) / "bench.sqlite3"
        print(f"filling {database} with {arguments.votes:,} votes ...")
        fill_result = _in_fill_process(database, arguments.votes)
        results = []
        for run in _runs(arguments.naive_full):
            print(f"running {run['name']} ...", flush=True)
            results.append(_in_subprocess(database, run))
        text = report(fill_result, results)
    print(text)
    if arguments.json:
        arguments.json.write_text(json.dumps({"fill": fill_result, "runs": results}, indent=2) + "\n")


def _in_fill_process(database: Path, votes: int) -> dict[str, Any]:
    # Filling runs in its own process too, so this one never holds Django objects while the exports run.
    command = [sys.executable, "-c", f"import json; from bench.export import fill; from pathlib import Path; "
               f"print(json.dumps(fill(Path({str(database)!r}), {votes})))"]  # fmt: skip
    output = subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
