"""How many live conversation streams (annotate.turns) one web process holds at once, and what they cost the rest.

    .venv/bin/python -m bench.turns_streams [--database-url postgres://postgres@127.0.0.1:5432/h_turns]
                                            [--port 8614] [--clients 1,2,4,8] [--json FILE]

Bounded and loopback only. It migrates and empties the database named (never point it at one you keep), starts the
stand-in model server (bench/stand_in_server.py: 32 tokens an answer, 40 ms a token, so a stream lasts about 1.3 s)
and, for each process shape, one gunicorn process (`annotate.wsgi`, gthread) with CONTINUATION_STREAMS_PER_PROCESS
set. For each count of clients it makes that many annotators, each with a vote continued through the service, and
opens all their streams at once while a prober asks for the login page every 50 ms. It prints, per run: streams that
ran (a `started` event) and those told `busy`, the time to the last `ready`, and the prober's median and worst
latency. A `busy` page polls instead (the page works without the stream); what is measured is what one process
holds at once without starving its other requests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
# (gunicorn threads, CONTINUATION_STREAMS_PER_PROCESS): the Procfile's 4 threads with the default limit, and more
# threads for a process meant to hold more streams.
SHAPES = ((4, 2), (4, 3), (16, 12))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/h_turns")
    parser.add_argument("--port", type=int, default=8614)
    parser.add_argument("--clients", default="1,2,4,8,12")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def django_setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "annotate.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)  # the default cache is a database table
    call_command("collectstatic", interactive=False, verbosity=0)  # gunicorn serves the pages' static files
    call_command("flush", interactive=False, verbosity=0)


def continued_conversations(count: int, run: str) -> list[tuple[str, int]]:
    """`count` annotators, each with a pending continuation of their own vote: (session cookie, continuation id)."""
    from django.contrib.auth.models import User
    from django.test import Client

    from annotate.annotation import services as annotation
    from annotate.models import Campaign, Completion, ModelVersion, Pair, Prompt
    from annotate.turns import services as turns

    version = ModelVersion.objects.ensure_base(name=MODEL, base_model="/models/bench")
    Campaign.objects.get_or_create(name="talk", defaults={"continuation_allowed": True})
    made = []
    for number in range(count):
        annotator = User.objects.create_user(f"streamer-{run}-{number}")
        prompt = Prompt.objects.create(
            messages=[{"role": "user", "content": f"Question {run}-{number}?"}], prompt_set="talk", source="bench"
        )
        answers = [
            Completion.objects.create(prompt=prompt, model_version=version, text=text, seed=seed)
            for seed, text in enumerate(("One answer.", "Another answer."))
        ]
        Pair.objects.create(prompt=prompt, completion_a=answers[0], completion_b=answers[1], sampled_from=version)
        assignment = annotation.assignment_lease_next(annotator=annotator)
        assert assignment is not None
        annotation.judgement_record(
            annotator=annotator, pair_id=assignment.pair_id, choice="left", strength=2, rationale="",
            idempotency_key=uuid.uuid4(),
        )  # fmt: skip
        started = turns.continuation_start(
            annotator=annotator, pair_id=assignment.pair_id, message="And then?", idempotency_key=uuid.uuid4()
        )
        client = Client()
        client.force_login(annotator)
        made.append((client.cookies["sessionid"].value, started.continuation.pk))
    return made


def process_start(command: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, cwd=REPO, env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_for(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within 60 s (logs in var/bench-turns/)")


def stream_read(base: str, cookie: str, continuation: int) -> dict[str, Any]:
    """One page's stream, read to its end: which events came and when."""
    opened = time.monotonic()
    seen: dict[str, Any] = {"texts": 0}
    with httpx.stream(
        "GET", f"{base}/conversations/{continuation}/stream/", cookies={"sessionid": cookie}, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
                if name == "text":
                    seen["texts"] += 1
                else:
                    seen.setdefault("first", name)
                    seen[name] = round(time.monotonic() - opened, 3)
    return seen


def probe(base: str, stop: threading.Event, latencies: list[float]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        httpx.get(f"{base}/accounts/login/", timeout=30)
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)


def run_once(base: str, conversations: list[tuple[str, int]]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(base, stop, latencies))
    prober.start()
    time.sleep(0.3)
    began = time.monotonic()
    readers = [
        threading.Thread(target=lambda c=cookie, n=number: results.append(stream_read(base, c, n)))
        for cookie, number in conversations
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=90)
    elapsed = time.monotonic() - began
    stop.set()
    prober.join()
    ran = [result for result in results if result.get("first") == "started"]
    return {
        "clients": len(conversations),
        "streamed": len(ran),
        "busy": sum(result.get("first") == "busy" for result in results),
        "ready": sum("ready" in result for result in ran),
        "seconds_to_last_ready": round(max((result.get("ready", 0) for result in ran), default=0), 2),
        "wall_seconds": round(elapsed, 2),
        "probe_median_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "probe_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }


def main() -> int:
    options = arguments()
    django_setup(options.database_url)
    logs = REPO / "var" / "bench-turns"
    stand_in_port, base = options.port + 1000, f"http://127.0.0.1:{options.port}"
    stand_in = process_start(
        [sys.executable, "-m", "bench.stand_in_server", "--port", str(stand_in_port), "--tokens", "32",
         "--token-seconds", "0.04", "--max-sequences", "64", "--model", MODEL],
        dict(os.environ), logs / "stand-in.log",
    )  # fmt: skip
    rows = []
    try:
        wait_for(f"http://127.0.0.1:{stand_in_port}/health")
        for threads, limit in SHAPES:
            environment = {
                **os.environ,
                "DATABASE_URL": options.database_url,
                "VLLM_BASE_URL": f"http://127.0.0.1:{stand_in_port}",
                "SERVED_MODEL_NAME": MODEL,
                "CONTINUATION_STREAMS_PER_PROCESS": str(limit),
            }
            web = process_start(
                [str(REPO / ".venv" / "bin" / "gunicorn"), "annotate.wsgi", "--bind", f"127.0.0.1:{options.port}",
                 "--workers", "1", "--threads", str(threads), "--timeout", "120"],
                environment, logs / f"gunicorn-{threads}-{limit}.log",
            )  # fmt: skip
            try:
                wait_for(f"{base}/accounts/login/")
                for clients in [int(value) for value in options.clients.split(",")]:
                    conversations = continued_conversations(clients, f"{threads}x{limit}x{clients}")
                    row = {"threads": threads, "streams_per_process": limit, **run_once(base, conversations)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                web.terminate()
                web.wait(timeout=30)
    finally:
        stand_in.terminate()
        stand_in.wait(timeout=10)
    if options.json:
        options.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
