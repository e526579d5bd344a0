"""Benchmark: exports in votes per second for every format, against a plain dump of the same votes, at flat memory.

    .venv/bin/python -m bench.export                       # 200,000 votes (100,000 pairs, two votes each), SQLite
    .venv/bin/python -m bench.export --votes 50000         # a quick run
    .venv/bin/python -m bench.export --database postgres://postgres@127.0.0.1:5432/bench_export   # PostgreSQL

Fills a scratch database (SQLite in a temporary directory, or the PostgreSQL database given, emptied first) through
bulk_create, then runs each export in a fresh Python process, so that its peak resident memory (ru_maxrss) is its own.
One pair in RANKING_EVERY is a ranking pair of four answers whose two votes are rankings (some of them "all bad"),
so that the ultrafeedback format writes rows and the paired formats also write the pairs rankings imply:

    idle        Django set up and the export modules imported, nothing exported: the floor of every process
    export      annotate.data.exports.export_write, the code behind the page, the API and the command
    dump        the baseline: the same columns of the same votes read with values_list and written as JSON lines,
                one per vote, with no combining and no row building (about as fast as Python reads and writes them)

Every format and file format is measured, interleaved with the dump and repeated (--repeat); the median and the
spread are printed, with the ratio to the dump of the same round and the load average. Memory: the export of all votes
against the export of 10 % of them (by prompt set), for every format and file format, should be about the same above
the idle floor.

    --previous DIR   also runs every export with the code of another checkout (say, `git worktree add DIR COMMIT`),
                     interleaved with this one's on the same database, and prints the ratio of this one to it
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
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
SHARES = {"10%": ("a", "b"), "100%": ()}
RANKING_EVERY = 10  # pair n is a ranking pair of RANKED_ANSWERS answers when n % RANKING_EVERY == 0
RANKED_ANSWERS = 4


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


# --- Data --------------------------------------------------------------------------------------------------------


def _answer(rng: random.Random, number: int) -> str:
    words = ["the", "model", "answer", "because", "first", "then", "so", "which", "data", "vote", "pair", "clear"]
    return f"Answer {number}: " + " ".join(rng.choice(words) for _ in range(45)) + "."


def fill(database: str, scratch: Path, votes: int, seed: int = 0) -> dict[str, Any]:
    """Write `votes` votes (two per pair) with everything they hang on; returns the counts and seconds taken."""
    _django(database, scratch)
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import transaction

    from annotate.annotation.rankings import choice_of_ranking, ranking_all_bad, ranks_dense
    from annotate.models import Completion, Judgement, ModelVersion, Pair, PairExtraAnswer, Prompt, conversation_hash

    started = time.perf_counter()
    call_command("flush", interactive=False, verbosity=0) if database.startswith("postgres") else None
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

    def vote(n: int, annotator: int) -> Judgement:
        ranking = None
        if n % RANKING_EVERY:
            choice = rng.choices(("a", "b", "tie", "both_bad"), weights=(45, 45, 6, 4))[0]
        elif rng.random() < 0.04:
            ranking, choice = ranking_all_bad(RANKED_ANSWERS), Judgement.Choice.BOTH_BAD
        else:
            ranking = ranks_dense([rng.randint(1, RANKED_ANSWERS) for _ in range(RANKED_ANSWERS)])
            choice = choice_of_ranking(ranking)
        strength = rng.choice((1, 2, 3)) if ranking is None and choice in ("a", "b") else None
        return Judgement(
            pair_id=n,
            annotator_id=annotator,
            choice=choice,
            strength=strength,
            a_on_left=rng.random() < 0.5,
            idempotency_key=uuid.UUID(int=rng.getrandbits(128)),
            ranking=ranking,
        )

    # The extra answers of ranking pairs get ids after the pairs' own two (2n - 1 and 2n).
    extra_ids = iter(range(2 * pairs + 1, 2 * pairs + RANKED_ANSWERS * pairs))
    for start in range(0, pairs, BATCH):
        numbers = range(start + 1, min(start + BATCH, pairs) + 1)
        extra = [(n, position, next(extra_ids)) for n in numbers if n % RANKING_EVERY == 0
                 for position in range(2, RANKED_ANSWERS)]  # fmt: skip
        with transaction.atomic():
            Completion.objects.bulk_create(
                [
                    Completion(
                        id=number,
                        prompt_id=n % PROMPTS or PROMPTS,
                        model_version_id=versions[n % 2],
                        text=_answer(rng, number),
                        sampling={"temperature": 0.8, "top_p": 0.95, "max_tokens": 256, "seed": n},
                        seed=n,
                    )
                    for n, number in [(n, 2 * n - side) for n in numbers for side in (1, 0)]
                    + [(n, number) for n, _, number in extra]
                ],
                batch_size=BATCH,
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
                    answer_count=2 if n % RANKING_EVERY else RANKED_ANSWERS,
                )
                for n in numbers
            )
            PairExtraAnswer.objects.bulk_create(
                PairExtraAnswer(pair_id=n, position=position, completion_id=number) for n, position, number in extra
            )
            Judgement.objects.bulk_create(vote(n, annotator) for n in numbers for annotator in rng.sample(users, 2))
        print(f"  {min(start + BATCH, pairs):,} / {pairs:,} pairs", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {
        "votes": Judgement.objects.count(),
        "rankings": Judgement.objects.filter(ranking__isnull=False).count(),
        "pairs": pairs,
        "seconds": round(time.perf_counter() - started, 1),
    }


# --- One measured run (in its own process) -----------------------------------------------------------------------


def dump(filters: Any, path: Path) -> int:
    """The baseline: every matching vote's columns, as a JSON line each, in pair order."""
    from annotate.data.exports.stream import votes_to_export
    from training.jsonl import JsonLinesWriter

    count = 0
    with JsonLinesWriter(path) as writer:
        for row in votes_to_export(filters).iterator(chunk_size=2000):
            writer.write([*row[:7], row[7].isoformat(), *row[8:]])
            count += 1
    return count


def measure(database: str, scratch: Path, run: dict[str, Any]) -> dict[str, Any]:
    _django(database, scratch)
    from annotate.data.exports import ExportFilters, export_write, judgements_matching
    from annotate.quality.preferences import PreferenceRules

    filters = ExportFilters(
        prompt_sets=SHARES[run["share"]], rules=PreferenceRules(include_ties=True, include_both_bad=True)
    )
    path = scratch / f"{run['name']}.{run['file_format']}"
    votes = judgements_matching(filters).count()
    started, cpu_started = time.perf_counter(), time.process_time()
    if run["kind"] == "export":
        rows = export_write(
            dataset_format=run["dataset_format"], file_format=run["file_format"], filters=filters, path=path
        ).rows
    elif run["kind"] == "dump":
        rows = dump(filters, path)
    else:
        rows = 0
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    size = path.stat().st_size if path.exists() else 0
    path.unlink(missing_ok=True)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        **run,
        "votes": votes,
        "rows": rows,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mib": peak_kib / 1024,
        "file_mib": size / 2**20,
    }


def _in_subprocess(database: str, scratch: Path, run: dict[str, Any], previous: Path | None = None) -> dict[str, Any]:
    # The previous implementation runs in its own checkout (its bench.export's measure, which takes the same run).
    command = [sys.executable, "-m", "bench.export", "--measure", json.dumps(run), "--database", database,
               "--scratch", str(scratch)]  # fmt: skip
    where = previous if run.get("previous") and previous else REPO
    output = subprocess.run(command, cwd=where, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


# --- The whole benchmark -----------------------------------------------------------------------------------------

FORMATS = ("trl-preference", "trl-unpaired", "arena", "hh-rlhf", "ultrafeedback")
GOAL_VOTES_PER_SECOND = 50_000


def _run(kind: str, share: str, dataset_format: str = "-", file_format: str = "jsonl") -> dict[str, Any]:
    name = f"{kind}-{dataset_format}-{file_format}-{share.rstrip('%')}"
    return {"name": name, "kind": kind, "share": share, "dataset_format": dataset_format, "file_format": file_format}


def _rounds(previous: bool = False) -> list[dict[str, Any]]:
    """One round: the dump, then every format and file format, interleaved with the dump again (and with the
    previous implementation's export of the same, when there is one)."""
    runs = [_run("dump", "100%")]
    for dataset_format in FORMATS:
        for file_format in ("jsonl", "parquet"):
            runs.append(_run("export", "100%", dataset_format, file_format))
            if previous:
                runs.append({**_run("export", "100%", dataset_format, file_format), "previous": True})
                runs[-1]["name"] += "-previous"
            runs.append(_run("dump", "100%"))
    return runs


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _speeds(runs: list[dict[str, Any]], clock: str) -> list[float]:
    return [r["votes"] / max(r[clock], 1e-9) for r in runs]


def report(fill_result: dict[str, Any], results: list[dict[str, Any]], database: str, load: str) -> str:
    """Votes per second by the wall clock and per CPU second of the exporting process (on a loaded machine the
    second says what one free core would do; on PostgreSQL it leaves out the server's own work)."""
    idle = next(r for r in results if r["kind"] == "idle")["peak_mib"]
    previous = [r for r in results if r.get("previous")]
    results = [r for r in results if not r.get("previous")]
    dumps = [r for r in results if r["kind"] == "dump" and r["share"] == "100%"]
    dump_wall, dump_cpu = _median(_speeds(dumps, "seconds")), _median(_speeds(dumps, "cpu_seconds"))
    lines = [
        f"database: {'PostgreSQL' if database.startswith('postgres') else 'SQLite'}; "
        f"load average before: {load}; after: {_load()}",
        f"data: {fill_result['votes']:,} votes on {fill_result['pairs']:,} pairs ({fill_result.get('rankings', 0):,} "
        f"of them rankings of {RANKED_ANSWERS} answers), written in {fill_result['seconds']}s",
        f"idle process (Django and the export modules loaded): {idle:.0f} MiB",
        f"baseline dump ({len(dumps)} runs): median {dump_wall:,.0f} votes/s by the clock, "
        f"{dump_cpu:,.0f} per CPU second",
        "",
        f"{'export':<24} {'rows':>8} {'votes/s':>8} {'spread':>15} {'x dump':>6} {'votes/CPU s':>11} "
        f"{'x dump':>6} {'goal':>5} {'MiB':>5}",
    ]
    for dataset_format in FORMATS:
        for file_format in ("jsonl", "parquet"):
            runs = [
                r for r in results
                if r["kind"] == "export" and r["share"] == "100%"
                and (r["dataset_format"], r["file_format"]) == (dataset_format, file_format)
            ]  # fmt: skip
            wall, cpu = _speeds(runs, "seconds"), _speeds(runs, "cpu_seconds")
            lines.append(
                f"{dataset_format + ' ' + file_format:<24} {runs[0]['rows']:>8,} {_median(wall):>8,.0f} "
                f"{min(wall):>7,.0f}-{max(wall):<7,.0f} {_median(wall) / dump_wall:>6.2f} {_median(cpu):>11,.0f} "
                f"{_median(cpu) / dump_cpu:>6.2f} {'met' if _median(wall) >= GOAL_VOTES_PER_SECOND else 'miss':>5} "
                f"{max(r['peak_mib'] for r in runs) - idle:>5.0f}"
            )
    lines.append("(goal: 50,000 votes/s by the clock; MiB: peak memory above the idle process)")
    if previous:
        lines += ["", f"{'against the previous code':<26} {'votes/s':>8} {'previous':>8} {'x':>5} {'votes/CPU s':>11} "
                      f"{'previous':>8} {'x':>5} {'MiB':>4} {'prev.':>5}"]  # fmt: skip
        for dataset_format in FORMATS:
            for file_format in ("jsonl", "parquet"):
                key = (dataset_format, file_format)
                ours = [r for r in results if r["kind"] == "export" and r["share"] == "100%"
                        and (r["dataset_format"], r["file_format"]) == key]  # fmt: skip
                theirs = [r for r in previous if (r["dataset_format"], r["file_format"]) == key]
                wall, wall_before = _median(_speeds(ours, "seconds")), _median(_speeds(theirs, "seconds"))
                cpu, cpu_before = _median(_speeds(ours, "cpu_seconds")), _median(_speeds(theirs, "cpu_seconds"))
                lines.append(
                    f"{dataset_format + ' ' + file_format:<26} {wall:>8,.0f} {wall_before:>8,.0f} "
                    f"{wall / wall_before:>5.2f} {cpu:>11,.0f} {cpu_before:>8,.0f} {cpu / cpu_before:>5.2f} "
                    f"{max(r['peak_mib'] for r in ours) - idle:>4.0f} {max(r['peak_mib'] for r in theirs) - idle:>5.0f}"
                )
    for run in (r for r in results if r["kind"] == "export" and r["share"] == "10%"):
        full = max(
            r["peak_mib"] for r in results
            if r["kind"] == "export" and r["share"] == "100%"
            and (r["dataset_format"], r["file_format"]) == (run["dataset_format"], run["file_format"])
        )  # fmt: skip
        ratio = max(1.0, full - idle) / max(1.0, run["peak_mib"] - idle)
        lines.append(
            f"memory, {run['dataset_format']} {run['file_format']}: all votes {full - idle:.0f} MiB above idle, "
            f"10 % of them {run['peak_mib'] - idle:.0f} MiB: {ratio:.2f}x (flat: about 1)"
        )
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--votes", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every export, interleaved with the dump")
    parser.add_argument("--database", help="a PostgreSQL URL (emptied first); default: SQLite in a temporary folder")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--previous", type=Path, help="a checkout of the code to compare with, interleaved")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one run, in a child process
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.measure:
        print(json.dumps(measure(arguments.database, arguments.scratch, json.loads(arguments.measure))))
        return

    with tempfile.TemporaryDirectory(prefix="pairloop-bench-export-") as directory:
        scratch = Path(directory)
        database = arguments.database or f"sqlite:///{scratch / 'bench.sqlite3'}"
        load = _load()
        print(f"filling the database with {arguments.votes:,} votes ...", flush=True)
        fill_result = _in_fill_process(database, scratch, arguments.votes)
        runs = [_run("idle", "10%")]
        for _ in range(arguments.repeat):
            runs += _rounds(previous=arguments.previous is not None)
        runs += [_run("export", "10%", dataset_format, file_format) for dataset_format in FORMATS
                 for file_format in ("jsonl", "parquet")]  # fmt: skip
        results = []
        for number, run in enumerate(runs, start=1):
            print(f"[{number}/{len(runs)}] {run['name']} ...", flush=True)
            results.append(_in_subprocess(database, scratch, run, arguments.previous))
        text = report(fill_result, results, database, load)
    print(text)
    if arguments.json:
        arguments.json.write_text(json.dumps({"fill": fill_result, "runs": results}, indent=2) + "\n")


def _in_fill_process(database: str, scratch: Path, votes: int) -> dict[str, Any]:
    # Filling runs in its own process too, so this one never holds Django objects while the exports run.
    command = [sys.executable, "-c", f"import json; from bench.export import fill; from pathlib import Path; "
               f"print(json.dumps(fill({database!r}, Path({str(scratch)!r}), {votes})))"]  # fmt: skip
    output = subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
