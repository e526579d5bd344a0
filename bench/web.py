"""Annotation latency and throughput from outside: gunicorn as in the Procfile, PostgreSQL, simulated annotators.

    .venv/bin/python -m bench.web [--annotators 100 --pause 5,30 --paced-seconds 120] [--closed 16,32,64]
                                  [--closed-seconds 15] [--repeats 2] [--conn-max-age 0,60] [--json FILE]
                                  [--baseline DIR] [--port PORT] [--cache-url URL] [--broker-url URL]

Bounded and loopback only: every phase stops at its deadline, every client talks to 127.0.0.1, and the run stops
gunicorn when it ends. It needs PostgreSQL at 127.0.0.1:5432 (user postgres) and Redis at 127.0.0.1:6379; the
database `--database` (default `sampling_bench`) is dropped and made again, so never point it at one you keep.

1. Fills the buffer directly through the models (no model server): `--pairs` open pairs (20,000) over prompts of
   ten pairs each, two answers of about 300 characters, one vote needed each; annotators with API tokens and sessions.
   `--history N` adds N judged pairs with their assignments and votes (in SQL), so the lease query can be checked
   at the size of a long-running deployment; `--explain-only` stops after step 2.
2. Counts the SQL queries of each request after one unmeasured cycle (which fills the cache), through Django's test
   client in this process (CaptureQueriesContext), and prints them, then EXPLAIN ANALYZE of the SELECTs on pairs
   that leasing a pair runs (whatever the lease code is today).
3. For each `--conn-max-age` value, starts gunicorn (`annotate.wsgi`, 2 workers x 4 threads, as in the Procfile)
   with bench/web_settings.py (the product's settings plus a bare view, bench/web_urls.py), then
   - paced: `--annotators` annotators, each pausing a random `--pause` seconds between lease and vote; most use
     the API (`GET /api/pairs/next/`, `POST /api/judgements/`, token authentication), `--html-share` of them the
     page (`GET /`) and its htmx vote (`POST /pairs/ID/judge/`, which answers with the next pair): p50/p95/p99;
   - closed loop: K annotators leasing and voting through the API with no pause, against K clients each calling
     the bare view twice (one indexed query behind the same token authentication), interleaved, `--repeats` times
     for each K: cycles per second and the ratio to the bare view's. With `--baseline DIR` (a checkout of an
     earlier commit, e.g. `git archive REV | tar -x -C DIR` with .venv linked in) a second gunicorn serves that
     code on the same database, and its annotators run in the same rotation (this tree, the baseline, the bare
     view), so before and after are measured under the same load; the paced phase runs this tree only.
The load average (1 minute) is printed with each phase: the load generator shares the machine with the server.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAIR_ID = re.compile(r"/pairs/(\d+)/judge/")
IDEMPOTENCY_KEY = re.compile(r'name="idempotency_key" value="([0-9a-f-]+)"')


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sampling_bench", help="PostgreSQL database, dropped and made again")
    parser.add_argument("--pairs", type=int, default=20_000, help="open pairs in the buffer")
    parser.add_argument("--annotators", type=int, default=100, help="paced annotators")
    parser.add_argument("--pause", default="5,30", help="MIN,MAX seconds an annotator pauses before voting")
    parser.add_argument("--paced-seconds", type=float, default=120.0)
    parser.add_argument("--html-share", type=float, default=0.2, help="share of paced annotators using the page")
    parser.add_argument("--closed", default="16,32,64", help="concurrent annotators of the closed-loop runs")
    parser.add_argument("--closed-seconds", type=float, default=15.0, help="length of each closed-loop run")
    parser.add_argument("--repeats", type=int, default=2, help="closed-loop runs of each kind per level")
    parser.add_argument("--conn-max-age", default="0", help="DATABASE_CONN_MAX_AGE values to run, comma-separated")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop every phase after this many")
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="judged pairs (one vote each) added before the EXPLAIN, e.g. 1000000 with --pairs 100000",
    )
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/2",
                        help="CACHE_URL of the server (as in production); empty for the database cache")  # fmt: skip
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0", help="CELERY_BROKER_URL of the server")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit, run beside this tree")
    parser.add_argument("--port", type=int, default=0, help="this tree's port (the baseline's: the next); 0: free")
    parser.add_argument("--explain-only", action="store_true", help="stop after the query counts and the EXPLAIN")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load() -> float:
    return os.getloadavg()[0]


# --- setup ---------------------------------------------------------------------------------------------------


def configure_environment(arguments: argparse.Namespace) -> dict[str, str]:
    scratch = REPO / "var" / "bench-web"
    scratch.mkdir(parents=True, exist_ok=True)
    environment = {
        "DJANGO_SETTINGS_MODULE": "bench.web_settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{arguments.database}",
        "CELERY_BROKER_URL": arguments.broker_url,
        "CACHE_URL": arguments.cache_url,
        # A queue of its own: the buffer holds thousands of pairs, so no refill should be asked for; if one were,
        # no worker of another deployment takes it.
        "CELERY_TASK_DEFAULT_QUEUE": f"bench-web-{uuid.uuid4().hex[:8]}",
        "SECRET_KEY": "bench-web-only",
        "PAIRLOOP_VAR_DIR": str(scratch),
        "BENCH_WEB_PAIRS": str(arguments.pairs),
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(environment)
    os.environ.pop("DEBUG", None)
    return environment


def database_recreate(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def fill(pair_count: int, user_count: int) -> list[tuple[str, str]]:
    """Pairs and annotators, made directly through the models; returns (token, session key) per annotator."""
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from annotate.models import Campaign, Completion, ModelVersion, Pair, Prompt, conversation_hash

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    version = ModelVersion.objects.create(name="bench-base", base_model="/models/base", status="serving")
    campaign = Campaign.objects.create(name="bench", title="Bench", votes_per_pair=1)  # open to every annotator
    prompts = []
    for number in range(max(1, pair_count // 10)):
        messages = [{"role": "user", "content": f"Question {number}: how would you explain topic {number}?"}]
        prompts.append(Prompt(messages=messages, content_hash=conversation_hash(messages), source="bench"))
    prompts = Prompt.objects.bulk_create(prompts, batch_size=5000)
    filler = "An answer of about three hundred characters, long enough to look like one. " * 4
    sampling = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256, "n": 1}
    completions = Completion.objects.bulk_create(
        [
            Completion(
                prompt=prompts[index // 20],
                model_version=version,
                text=f"{index}: {filler}",
                sampling={**sampling, "seed": index},
                seed=index,
                finish_reason="stop",
                prompt_tokens=20,
                completion_tokens=70,
                latency_ms=1000,
            )
            for index in range(pair_count * 2)
        ],
        batch_size=5000,
    )
    Pair.objects.bulk_create(
        [
            Pair(
                prompt=prompts[index // 10],
                completion_a=completions[2 * index],
                completion_b=completions[2 * index + 1],
                sampled_from=version,
                campaign=campaign,
                judgements_required=1,
            )
            for index in range(pair_count)
        ],
        batch_size=5000,
    )
    users = User.objects.bulk_create([User(username=f"annotator-{number}") for number in range(user_count)])
    tokens = Token.objects.bulk_create([Token(user=user, key=Token.generate_key()) for user in users])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # fresh statistics, as autovacuum would have them after a bulk load
    credentials = []
    for user, token in zip(users, tokens, strict=True):
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.create()
        credentials.append((token.key, str(session.session_key)))
    return credentials


def history(votes: int) -> None:
    """`votes` judged pairs, each with its assignment and its one vote, spread over the annotators: the tables a
    long-running deployment has, in SQL (the ORM would take an hour for a million). They reuse the first open pair's
    prompt and answers; only the sizes and the judged state matter to the lease query's plan."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT min(id), max(id) FROM annotate_pair")
        template, last = cursor.fetchone()
        cursor.execute(
            """INSERT INTO annotate_pair (prompt_id, completion_a_id, completion_b_id, sampled_from_id, campaign_id,
                   judgements_required, judgement_count, lease_count, gold_choice, created_at)
               SELECT prompt_id, completion_a_id, completion_b_id, sampled_from_id, campaign_id, 1, 1, 0, '',
                   now() - make_interval(secs => g)
               FROM annotate_pair, generate_series(1, %s) AS g WHERE id = %s""",
            [votes, template],
        )
        cursor.execute(
            """INSERT INTO annotate_assignment (pair_id, annotator_id, a_on_left, status, kind, leased_at, expires_at,
                   finished_at)
               SELECT p.id, u.ids[1 + p.id %% array_length(u.ids, 1)], p.id %% 2 = 0, 'judged', 'pair', p.created_at,
                   p.created_at + interval '10 minutes', p.created_at + interval '1 minute'
               FROM annotate_pair p, (SELECT array_agg(id) AS ids FROM auth_user) u WHERE p.id > %s""",
            [last],
        )
        cursor.execute(
            """INSERT INTO annotate_judgement (pair_id, annotator_id, assignment_id, choice, strength, rationale,
                   a_on_left, time_spent_ms, idempotency_key, source, source_detail, is_repeat, created_at,
                   updated_at)
               SELECT a.pair_id, a.annotator_id, a.id, CASE WHEN a.id %% 2 = 0 THEN 'a' ELSE 'b' END, 2, '',
                   a.a_on_left, 12000, md5(a.id::text)::uuid, 'human', '', false, a.finished_at, a.finished_at
               FROM annotate_assignment a JOIN annotate_pair p ON p.id = a.pair_id WHERE p.id > %s""",
            [last],
        )
        cursor.execute("ANALYZE")


# --- queries per request and the lease plan --------------------------------------------------------------------


def count_queries(token: str, session_key: str) -> dict[str, list[str]]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    api = Client(headers={"authorization": f"Token {token}"})
    page = Client()
    page.cookies["sessionid"] = session_key
    queries: dict[str, list[str]] = {}

    def measure(name: str, call: Callable[[], Any]) -> Any:
        with CaptureQueriesContext(connection) as captured:
            response = call()
        queries[name] = [query["sql"] for query in captured.captured_queries]
        return response

    # One cycle unmeasured first: a process's first cycle fills the cache (the campaigns open to the annotator,
    # whether they are paused, which events have a webhook endpoint); the counts below are those of every later one.
    warm = api.get("/api/pairs/next/").json()["pair"]
    warm_vote = {"pair": warm, "choice": "left", "strength": 2, "idempotency_key": str(uuid.uuid4())}
    api.post("/api/judgements/", warm_vote, content_type="application/json")
    leased = measure("GET /api/pairs/next/ (new lease)", lambda: api.get("/api/pairs/next/"))
    measure("GET /api/pairs/next/ (lease held)", lambda: api.get("/api/pairs/next/"))
    vote = {"pair": leased.json()["pair"], "choice": "left", "strength": 2, "idempotency_key": str(uuid.uuid4())}
    measure("POST /api/judgements/", lambda: api.post("/api/judgements/", vote, content_type="application/json"))
    shown = measure("GET / (page, new lease)", lambda: page.get("/"))
    pair_id, key = PAIR_ID.search(shown.text), IDEMPOTENCY_KEY.search(shown.text)
    assert pair_id and key, "the annotate page showed no pair"
    measure(
        "POST /pairs/ID/judge/ (htmx vote + next pair)",
        lambda: page.post(
            f"/pairs/{pair_id.group(1)}/judge/",
            {"choice": "left", "strength": "2", "idempotency_key": key.group(1), "rationale": ""},
            headers={"hx-request": "true"},
        ),
    )
    measure("GET /bench/bare/ (baseline)", lambda: api.get("/bench/bare/"))
    return queries


def explain_lease() -> list[str]:
    """EXPLAIN ANALYZE each SELECT on pairs that leasing a pair runs, rolled back so nothing stays leased: for a new
    annotator, and for the one with the most assignments (whose "not seen before" test has the most rows to check)."""
    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from django.db.models import Count
    from django.test.utils import CaptureQueriesContext

    from annotate.annotation import services

    busiest = User.objects.annotate(seen=Count("assignments")).order_by("-seen").first()
    newcomer = User.objects.create(username=f"explain-{uuid.uuid4().hex[:6]}")
    plans = []
    for user in (newcomer, busiest):
        if user is None:
            continue
        with transaction.atomic():
            with CaptureQueriesContext(connection) as captured:
                services.assignment_lease_next(annotator=user)
            transaction.set_rollback(True)
        for query in captured.captured_queries:
            sql = query["sql"]
            if sql.lstrip().upper().startswith("SELECT") and 'FROM "annotate_pair"' in sql:
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                    seen = user.assignments.count()
                    lines = [
                        f"-- annotator {user.pk} ({seen} assignments)",
                        sql,
                        *(row[0] for row in cursor.fetchall()),
                    ]
                    plans.append("\n".join(lines))
                    transaction.set_rollback(True)
    return plans


# --- the server ------------------------------------------------------------------------------------------------


def gunicorn_start(port: int, conn_max_age: int, tree: Path = REPO) -> subprocess.Popen[bytes]:
    name = "" if tree == REPO else "-baseline"
    log = (REPO / "var" / "bench-web" / f"gunicorn-{conn_max_age}{name}.log").open("wb")
    command = [
        str(tree / ".venv" / "bin" / "gunicorn"),
        "annotate.wsgi",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--threads",
        "4",
        "--access-logfile",
        "-",
        "--capture-output",
    ]
    environment = {**os.environ, "DATABASE_CONN_MAX_AGE": str(conn_max_age)}
    process = subprocess.Popen(command, cwd=tree, env=environment, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit("gunicorn did not answer /healthz within 60 s; see var/bench-web/gunicorn-*.log")


def gunicorn_stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- simulated annotators ----------------------------------------------------------------------------------------


class Recorder:
    """Latencies (ms) and status codes per endpoint, shared by the annotator threads; a request budget for all."""

    def __init__(self, max_requests: int) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.cycles = 0
        self.requests = 0
        self.max_requests = max_requests
        self._lock = threading.Lock()

    def request(self, client: Any, name: str, method: str, url: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        response = client.request(method, url, **kwargs)
        elapsed = (time.perf_counter() - started) * 1000
        with self._lock:
            self.latencies[name].append(elapsed)
            self.statuses[name][response.status_code] += 1
            self.requests += 1
        return response

    def cycle(self) -> None:
        with self._lock:
            self.cycles += 1

    @property
    def exhausted(self) -> bool:
        return self.requests >= self.max_requests


def percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"n": len(values)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"n": len(values), "p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": max(values)}


def api_annotator(
    base: str, token: str, recorder: Recorder, deadline: float, pause: tuple[float, float] | None
) -> None:
    import httpx

    with httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, timeout=30) as client:
        if pause:
            time.sleep(random.uniform(0, pause[1]))  # annotators arrive over time, not all in the same second
        while time.monotonic() < deadline and not recorder.exhausted:
            leased = recorder.request(client, "GET /api/pairs/next/", "GET", "/api/pairs/next/")
            if leased.status_code != 200:
                time.sleep(1.0)
                continue
            if pause:
                time.sleep(random.uniform(*pause))
                if time.monotonic() >= deadline:
                    return
            vote = {
                "pair": leased.json()["pair"],
                "choice": random.choice(["left", "right"]),
                "strength": random.choice([1, 2, 3]),
                "idempotency_key": str(uuid.uuid4()),
            }
            recorder.request(client, "POST /api/judgements/", "POST", "/api/judgements/", json=vote)
            recorder.cycle()


def page_annotator(
    base: str, session_key: str, recorder: Recorder, deadline: float, pause: tuple[float, float]
) -> None:
    import httpx

    with httpx.Client(base_url=base, cookies={"sessionid": session_key}, timeout=30) as client:
        time.sleep(random.uniform(0, pause[1]))
        shown = recorder.request(client, "GET / (page)", "GET", "/")
        while time.monotonic() < deadline and not recorder.exhausted:
            pair_id, key = PAIR_ID.search(shown.text), IDEMPOTENCY_KEY.search(shown.text)
            if shown.status_code != 200 or not (pair_id and key):
                time.sleep(1.0)
                shown = recorder.request(client, "GET / (page)", "GET", "/")
                continue
            time.sleep(random.uniform(*pause))
            if time.monotonic() >= deadline:
                return
            shown = recorder.request(
                client,
                "POST /pairs/ID/judge/ (htmx)",
                "POST",
                f"/pairs/{pair_id.group(1)}/judge/",
                data={"choice": "left", "strength": "2", "idempotency_key": key.group(1), "rationale": ""},
                headers={"HX-Request": "true", "X-CSRFToken": client.cookies.get("csrftoken", "")},
            )
            recorder.cycle()


def bare_client(base: str, token: str, recorder: Recorder, deadline: float) -> None:
    import httpx

    with httpx.Client(base_url=base, headers={"Authorization": f"Token {token}"}, timeout=30) as client:
        while time.monotonic() < deadline and not recorder.exhausted:
            for _ in range(2):  # as many requests per cycle as an annotator's lease and vote
                recorder.request(client, "GET /bench/bare/", "GET", "/bench/bare/")
            recorder.cycle()


def run_threads(targets: list[Callable[[], None]], seconds: float) -> None:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)  # requests time out after 30 s: a thread is never waited on for ever


def paced(base: str, credentials: list[tuple[str, str]], arguments: argparse.Namespace) -> dict[str, Any]:
    low, high = (float(value) for value in arguments.pause.split(","))
    recorder = Recorder(arguments.max_requests)
    deadline = time.monotonic() + arguments.paced_seconds
    page_users = round(arguments.annotators * arguments.html_share)
    targets: list[Callable[[], None]] = []
    for index, (token, session_key) in enumerate(credentials[: arguments.annotators]):
        if index < page_users:
            targets.append(lambda s=session_key: page_annotator(base, s, recorder, deadline, (low, high)))
        else:
            targets.append(lambda t=token: api_annotator(base, t, recorder, deadline, (low, high)))
    load_before = load()
    run_threads(targets, arguments.paced_seconds)
    result = {
        name: {**percentiles(values), "statuses": dict(recorder.statuses[name])}
        for name, values in sorted(recorder.latencies.items())
    }
    return {"endpoints": result, "votes": recorder.cycles, "load": [load_before, load()]}


def closed(
    base: str, credentials: list[tuple[str, str]], arguments: argparse.Namespace, baseline: str | None = None
) -> list[dict[str, Any]]:
    levels = [int(value) for value in arguments.closed.split(",") if value]
    rows = []
    kinds_in_turn = ["annotate", "bare"] if baseline is None else ["annotate", "baseline", "bare"]
    for level in levels:
        runs: dict[str, list[float]] = {kind: [] for kind in kinds_in_turn}
        statuses: dict[str, dict[int, int]] = {}
        loads = []
        for repeat in range(arguments.repeats):
            turn = repeat % len(kinds_in_turn)  # each kind goes first in turn: none always meets a warmer machine
            kinds = kinds_in_turn[turn:] + kinds_in_turn[:turn]
            for kind in kinds:
                recorder = Recorder(arguments.max_requests)
                deadline = time.monotonic() + arguments.closed_seconds
                tokens = [token for token, _ in credentials[-level:]]
                if kind in ("annotate", "baseline"):
                    server = base if kind == "annotate" else str(baseline)
                    targets = [
                        (lambda t=token, r=recorder, d=deadline, s=server: api_annotator(s, t, r, d, None))
                        for token in tokens
                    ]
                else:
                    targets = [(lambda t=token, r=recorder, d=deadline: bare_client(base, t, r, d)) for token in tokens]
                started = time.monotonic()
                run_threads(targets, arguments.closed_seconds)
                runs[kind].append(recorder.cycles / (time.monotonic() - started))
                loads.append(load())
                for name, counts in recorder.statuses.items():
                    merged = statuses.setdefault(name, {})
                    for code, count in counts.items():
                        merged[code] = merged.get(code, 0) + count
        annotate_rate, bare_rate = statistics.median(runs["annotate"]), statistics.median(runs["bare"])
        row = {
            "annotators": level,
            "cycles_per_second": annotate_rate,
            "bare_cycles_per_second": bare_rate,
            "ratio": annotate_rate / bare_rate if bare_rate else float("nan"),
            "runs": runs,
            "statuses": statuses,
            "load": statistics.median(loads),
        }
        baseline_note = ""
        if baseline is not None:
            row["baseline_cycles_per_second"] = statistics.median(runs["baseline"])
            row["baseline_ratio"] = row["baseline_cycles_per_second"] / bare_rate if bare_rate else float("nan")
            baseline_note = f", baseline {row['baseline_cycles_per_second']:6.1f} ({row['baseline_ratio']:.2f}x)"
        rows.append(row)
        print(
            f"  closed loop {level:>3}: {annotate_rate:6.1f} cycles/s (lease + vote), bare view {bare_rate:6.1f} "
            f"cycles/s (2 requests): {annotate_rate / bare_rate:.2f}x{baseline_note}; runs {runs}; "
            f"load {row['load']:.1f}",
            flush=True,
        )
    return rows


def print_paced(result: dict[str, Any]) -> None:
    print(f"  paced: {result['votes']} votes; load {result['load'][0]:.1f} -> {result['load'][1]:.1f}")
    for name, figures in result["endpoints"].items():
        if figures["n"] < 2:
            print(f"    {name:<32} n={figures['n']}")
            continue
        print(
            f"    {name:<32} n={figures['n']:>5}  p50 {figures['p50']:6.1f}  p95 {figures['p95']:6.1f}  "
            f"p99 {figures['p99']:6.1f}  max {figures['max']:7.1f} ms  statuses {figures['statuses']}"
        )


def main() -> int:
    arguments = parse_arguments()
    configure_environment(arguments)
    sys.path.insert(0, str(REPO))
    database_recreate(arguments.database)
    import django

    django.setup()
    closed_levels = [int(value) for value in arguments.closed.split(",") if value]
    users = arguments.annotators + max(closed_levels, default=0) + 1
    started = time.monotonic()
    credentials = fill(arguments.pairs, users)
    print(f"filled {arguments.pairs} open pairs and {users} annotators in {time.monotonic() - started:.0f} s")
    if arguments.history:
        started = time.monotonic()
        history(arguments.history)
        print(f"added {arguments.history} judged pairs with their votes in {time.monotonic() - started:.0f} s")
    results: dict[str, Any] = {"arguments": {k: str(v) for k, v in vars(arguments).items()}}

    queries = count_queries(*credentials[arguments.annotators])
    results["queries"] = queries
    print("SQL queries per request:")
    for name, statements in queries.items():
        print(f"  {len(statements):>2}  {name}")
        for statement in statements:
            print(f"        {statement[:160]}")
    plans = explain_lease()
    results["lease_plans"] = plans
    print("EXPLAIN ANALYZE of the lease's SELECTs on pairs:")
    for plan in plans:
        print("  " + plan.replace("\n", "\n  "))
    from django.db import connections

    connections.close_all()  # the server's processes use their own connections
    if arguments.explain_only:
        if arguments.json:
            arguments.json.write_text(json.dumps(results, indent=2, default=str))
        return 0

    results["runs"] = []
    for conn_max_age in (int(value) for value in arguments.conn_max_age.split(",")):
        port = arguments.port or free_port()
        server = gunicorn_start(port, conn_max_age)
        base = f"http://127.0.0.1:{port}"
        baseline_server, baseline_base = None, None
        try:
            if arguments.baseline:
                baseline_port = arguments.port + 1 if arguments.port else free_port()
                baseline_server = gunicorn_start(baseline_port, conn_max_age, arguments.baseline.resolve())
                baseline_base = f"http://127.0.0.1:{baseline_port}"
                print(f"baseline {arguments.baseline} on {baseline_base}")
            print(f"\nDATABASE_CONN_MAX_AGE={conn_max_age}: gunicorn 2 workers x 4 threads on {base}")
            paced_result = paced(base, credentials[: arguments.annotators], arguments)
            print_paced(paced_result)
            closed_result = closed(base, credentials[arguments.annotators + 1 :], arguments, baseline_base)
        finally:
            gunicorn_stop(server)
            if baseline_server is not None:
                gunicorn_stop(baseline_server)
        results["runs"].append({"conn_max_age": conn_max_age, "paced": paced_result, "closed": closed_result})
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
