"""Soak: many annotators voting through the API and the HTML form while the parts around them fail and come back.

    .venv/bin/python -m bench.soak [--annotators 100] [--minutes 6] [--html-share 0.3] [--no-vllm] [--json FILE]

Everything runs on this machine, on loopback only, and stops by itself (bounded in time and in requests): its own
PostgreSQL database (dropped at the end), its own Redis server on a free port (the broker), gunicorn as in the
Procfile (2 workers x 4 threads), a real Celery worker refilling pairs, and the real vLLM server with the default
model. Pairs are made up front (through the models, as a long-running buffer would hold them) so annotators are
never starved by the CPU-bound model server; the worker keeps sampling more from vLLM throughout.

Annotators pause --pause-min to --pause-max seconds between votes; some send a vote twice at once (a double
click), some give up waiting (a client timeout) and send the same vote again with the same idempotency key. In the
middle the pair worker is restarted, vLLM is restarted, and the broker is cut for 30 s.

At the end it checks, from the database, that every acknowledged vote is stored exactly once, that no pair has
more votes than it needs, that no annotator voted twice on a pair, that nobody was told "no pair" while one was
open for them, and that no response was a 5xx; it prints the counts and exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=6.0, help="how long the load runs")
    parser.add_argument("--pause-min", type=float, default=1.0)
    parser.add_argument("--pause-max", type=float, default=4.0)
    parser.add_argument("--html-share", type=float, default=0.3, help="annotators who use the HTML form")
    parser.add_argument("--double-submit", type=float, default=0.1, help="share of votes sent twice at once")
    parser.add_argument("--impatient", type=float, default=0.05, help="share of votes sent with a 50 ms timeout")
    parser.add_argument("--pairs", type=int, default=4000, help="pairs made up front")
    parser.add_argument("--votes-per-pair", type=int, default=2)
    parser.add_argument("--no-vllm", action="store_true", help="no model server (the worker's refills then fail)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="a hard bound on requests sent")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    return parser.parse_args()


# --- The parts ------------------------------------------------------------------------------------------------


class Part:
    """A process of the system under test, which the soak can stop and start again."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.command, self.env, self.log_dir = name, command, env, log_dir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            self.command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def wait_for(url: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


# --- What the annotators saw ----------------------------------------------------------------------------------


@dataclass
class Record:
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    acknowledged: dict[str, int] = field(default_factory=dict)  # idempotency key -> judgement id
    acknowledged_twice_differently: list[str] = field(default_factory=list)
    no_pair_while_open: list[str] = field(default_factory=list)
    no_pair: int = 0
    timeouts: int = 0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, what: str, response: httpx.Response) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[f"{what} {response.status_code}"] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{what} {response.status_code}: {response.text[:200]}")

    def acknowledge(self, key: str, judgement_id: int) -> None:
        with self.lock:
            earlier = self.acknowledged.setdefault(key, judgement_id)
            if earlier != judgement_id:
                self.acknowledged_twice_differently.append(key)


def open_pairs_for(username: str) -> int:
    """Pairs with a free place that this annotator has not been given (read straight from the database)."""
    from django.contrib.auth.models import User
    from django.db.models import Exists, OuterRef

    from annotate.models import Assignment, Campaign, Pair

    user = User.objects.get(username=username)
    seen = Assignment.objects.filter(pair=OuterRef("pk"), annotator=user)
    campaigns = Campaign.objects.open_to(user).values("id")
    return Pair.objects.open().filter(campaign_id__in=campaigns).filter(~Exists(seen)).count()


class Annotator(threading.Thread):
    def __init__(self, number: int, base_url: str, token: str, html: bool, args: argparse.Namespace,
                 record: Record, deadline: float) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.username, self.base_url, self.token, self.html = f"soak{number}", base_url, token, html
        self.args, self.record, self.deadline = args, record, deadline
        self.random = random.Random(number)

    def run(self) -> None:
        from django.db import connection

        try:
            hooks = {"response": [self._keep_cookies]}
            with httpx.Client(base_url=self.base_url, timeout=30, follow_redirects=False, event_hooks=hooks) as client:
                self.client = client
                if self.html:
                    self._log_in(client)
                else:
                    client.headers["Authorization"] = f"Token {self.token}"
                while time.monotonic() < self.deadline and self.record.requests < self.args.max_requests:
                    try:
                        self._one_vote(client)
                    except httpx.HTTPError:
                        with self.record.lock:
                            self.record.timeouts += 1
                        time.sleep(1)
                    time.sleep(self.random.uniform(self.args.pause_min, self.args.pause_max))
        finally:
            connection.close()

    def _keep_cookies(self, response: httpx.Response) -> None:
        # The standard cookie jar refuses cookies of a dotless host such as localhost: keep them by name instead.
        for header in response.headers.get_list("set-cookie"):
            name, _, rest = header.partition("=")
            self.client.cookies.set(name.strip(), rest.split(";", 1)[0])

    def _log_in(self, client: httpx.Client) -> None:
        page = client.get("/accounts/login/")
        self.record.saw("GET /accounts/login/", page)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        form = {
            "username": self.username,
            "password": "soak-password-1",
            "csrfmiddlewaretoken": token.group(1) if token else "",
        }
        answer = client.post("/accounts/login/", data=form, headers={"Referer": f"{self.base_url}/accounts/login/"})
        self.record.saw("login", answer)

    def _one_vote(self, client: httpx.Client) -> None:
        if self.html:
            self._vote_html(client)
        else:
            self._vote_api(client)

    def _no_pair(self) -> None:
        open_now = open_pairs_for(self.username)
        with self.record.lock:
            self.record.no_pair += 1
            if open_now:
                self.record.no_pair_while_open.append(f"{self.username}: {open_now} open")

    def _vote_api(self, client: httpx.Client) -> None:
        leased = client.get("/api/pairs/next/")
        self.record.saw("GET /api/pairs/next/", leased)
        if leased.status_code == 204:
            self._no_pair()
            return
        if leased.status_code != 200:
            return
        pair = leased.json()["pair"]
        choice = self.random.choice(["left", "right", "left", "right", "tie", "both_bad"])
        body = {"pair": pair, "choice": choice, "idempotency_key": str(uuid.uuid4()), "rationale": "soak"}
        if choice in ("left", "right"):
            body["strength"] = self.random.choice([1, 2, 3])
        self._send_vote(client, "POST /api/judgements/", "/api/judgements/", body, json_body=True)

    def _vote_html(self, client: httpx.Client) -> None:
        page = client.get("/")
        self.record.saw("GET /", page)
        found = re.search(r'action="/pairs/(\d+)/judge/"', page.text)
        if found is None:
            if 'data-testid="waiting"' in page.text:
                self._no_pair()
            return
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        key = re.search(r'name="idempotency_key" value="([^"]+)"', page.text)
        choice = self.random.choice(["left", "right", "tie", "both_bad"])
        body = {"choice": choice, "strength": "2", "rationale": "soak", "idempotency_key": key.group(1) if key else "",
                "csrfmiddlewaretoken": csrf.group(1) if csrf else ""}  # fmt: skip
        path = f"/pairs/{found.group(1)}/judge/"
        self._send_vote(client, "POST judge", path, body, json_body=False, headers={"Referer": self.base_url + "/"})

    def _send_vote(self, client: httpx.Client, what: str, path: str, body: dict[str, Any], *, json_body: bool,
                   headers: dict[str, str] | None = None) -> None:  # fmt: skip
        def send(timeout: float | None = None) -> httpx.Response:
            options: dict[str, Any] = {"json": body} if json_body else {"data": body}
            return client.post(path, headers=headers, timeout=timeout or 30, **options)

        if self.random.random() < self.args.double_submit:
            # A double click: the same vote twice at once.
            results: list[httpx.Response] = []

            def click_again() -> None:
                try:
                    results.append(send())
                except httpx.HTTPError:  # the server went away under this click: the other one may still land
                    with self.record.lock:
                        self.record.timeouts += 1

            second = threading.Thread(target=click_again)
            second.start()
            results.append(send())
            second.join()
        elif self.random.random() < self.args.impatient:
            try:
                results = [send(timeout=0.05)]
            except httpx.TimeoutException:
                with self.record.lock:
                    self.record.timeouts += 1
                results = [send()]  # the client retries with the same key
        else:
            results = [send()]
        for response in results:
            self.record.saw(what, response)
            if json_body and response.status_code in (200, 201):
                self.record.acknowledge(body["idempotency_key"], response.json()["id"])
            elif not json_body and response.status_code in (200, 302):
                self.record.acknowledge(body["idempotency_key"], -1)  # the page does not show the id


# --- Set-up, disruptions, checks ------------------------------------------------------------------------------


def make_pairs(count: int, votes_per_pair: int) -> None:
    from annotate.models import Campaign, Completion, ModelVersion, Pair, Prompt, conversation_hash

    version = ModelVersion.objects.ensure_base(name=os.environ["SERVED_MODEL_NAME"], base_model="default")
    Campaign.objects.update_or_create(name="default", defaults={"votes_per_pair": votes_per_pair})
    campaign = Campaign.objects.get(name="default")
    conversations = [[{"role": "user", "content": f"Soak question {n}?"}] for n in range(count)]
    # bulk_create skips Prompt.save, which sets the hash: set it the same way (rounds read it to hold prompts out).
    prompts = Prompt.objects.bulk_create(
        Prompt(messages=messages, content_hash=conversation_hash(messages)) for messages in conversations
    )
    answers = Completion.objects.bulk_create(
        Completion(prompt=prompt, model_version=version, text=f"Answer {side} to {prompt.pk}.", sampling={}, seed=side)
        for prompt in prompts
        for side in (1, 2)
    )
    Pair.objects.bulk_create(
        Pair(
            prompt=prompt,
            completion_a=answers[2 * n],
            completion_b=answers[2 * n + 1],
            sampled_from=version,
            campaign=campaign,
            judgements_required=votes_per_pair,
        )
        for n, prompt in enumerate(prompts)
    )


def make_annotators(count: int) -> list[str]:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    tokens = []
    for number in range(count):
        user = User.objects.create_user(f"soak{number}", password="soak-password-1")
        tokens.append(Token.objects.create(user=user).key)
    return tokens


def check(record: Record) -> dict[str, Any]:
    from django.db.models import Count, F

    from annotate.models import Judgement, Pair

    stored_keys = {str(key) for key in Judgement.objects.values_list("idempotency_key", flat=True)}
    api_acknowledged = {key for key, judgement in record.acknowledged.items() if judgement != -1}
    missing = sorted(set(record.acknowledged) - stored_keys)
    per_key = Judgement.objects.values("idempotency_key").annotate(n=Count("id")).filter(n__gt=1).count()
    over_voted = Pair.objects.filter(judgement_count__gt=F("judgements_required")).count()
    counted = Judgement.objects.filter(is_repeat=False).values("pair").annotate(n=Count("id"))
    count_mismatch = sum(1 for row in counted if Pair.objects.get(pk=row["pair"]).judgement_count != row["n"])
    twice = (
        Judgement.objects.filter(is_repeat=False).values("pair", "annotator").annotate(n=Count("id")).filter(n__gt=1)
    ).count()
    return {
        "requests": record.requests,
        "responses": dict(sorted(record.statuses.items())),
        "client_timeouts": record.timeouts,
        "votes_stored": Judgement.objects.count(),
        "votes_acknowledged": len(record.acknowledged),
        "votes_acknowledged_through_the_api": len(api_acknowledged),
        "acknowledged_but_missing": len(missing),
        "one_key_answered_with_two_votes": len(record.acknowledged_twice_differently),
        "keys_stored_more_than_once": per_key,
        "pairs_over_voted": over_voted,
        "pair_counts_not_matching_votes": count_mismatch,
        "annotator_voted_twice_on_a_pair": twice,
        "told_no_pair": record.no_pair,
        "told_no_pair_while_one_was_open": len(record.no_pair_while_open),
        "server_errors_5xx": len(record.server_errors),
        "first_server_errors": record.server_errors[:5],
    }


def deployment_env() -> dict[str, str]:
    """What every bench deployment sets alike: the model, the settings module, a bench-only key, no throttling (the
    benches measure robustness, not rate limits: rates far above what they send)."""
    return {
        "SECRET_KEY": "bench-only-secret",
        "BASE_MODEL_DIR": os.environ.get("BASE_MODEL_DIR", str(REPO / "var" / "models" / "smollm2-135m-instruct")),
        "SERVED_MODEL_NAME": "smollm2-135m-instruct",
        "DJANGO_SETTINGS_MODULE": "annotate.settings",
        "API_THROTTLE_USER": "100000/minute",
        "API_THROTTLE_ANON": "100000/minute",
    }


def scratch_database_create(env: dict[str, str], database: str, scratch: Path) -> Path:
    """Puts `env` in this process's environment, creates the PostgreSQL database and returns the logs' folder."""
    os.environ.update(env)
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"create database {database}"], check=True)
    log_dir = scratch / "logs"
    log_dir.mkdir()
    return log_dir


def main() -> int:
    args = parse_arguments()
    scratch = Path(tempfile.mkdtemp(prefix="pairloop-soak-"))
    database = f"pairloop_soak_{uuid.uuid4().hex[:8]}"
    redis_port, web_port, vllm_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PAIRLOOP_VAR_DIR": str(scratch),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CELERY_TASK_DEFAULT_QUEUE": f"soak-{uuid.uuid4().hex[:6]}",
        "VLLM_PORT": str(vllm_port),
        "SAMPLING_MAX_TOKENS": "48",
        "PAIR_BUFFER_TARGET": "16",
        "JUDGEMENTS_PER_PAIR": str(args.votes_per_pair),
        **deployment_env(),
    }
    log_dir = scratch_database_create(env, database, scratch)
    python = sys.executable
    parts = {
        "redis": Part(
            "redis", ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], env, log_dir
        ),
        "web": Part(
            "web",
            [
                str(REPO / ".venv/bin/gunicorn"),
                "annotate.wsgi",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                "2",
                "--threads",
                "4",
                "--timeout",
                "60",
            ],
            env,
            log_dir,
        ),
        "worker": Part(
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "annotate",
                "worker",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--queues",
                env["CELERY_TASK_DEFAULT_QUEUE"],
            ],
            env,
            log_dir,
        ),
        "vllm": Part("vllm", [python, "manage.py", "serve_model"], env, log_dir),
    }
    if args.no_vllm:
        del parts["vllm"]
    figures: dict[str, Any] = {}
    try:
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("createcachetable", verbosity=0)
        call_command("collectstatic", "--noinput", verbosity=0)  # gunicorn serves them as in production
        make_pairs(args.pairs, args.votes_per_pair)
        tokens = make_annotators(args.annotators)
        for part in parts.values():
            part.start()
        base_url = f"http://localhost:{web_port}"  # a host name: cookie jars keep cookies for it
        if not wait_for(f"{base_url}/healthz", 120):
            raise SystemExit("the web server did not start; see " + str(log_dir))
        if "vllm" in parts:
            wait_for(f"http://127.0.0.1:{vllm_port}/health", 240)
        record = Record()
        started = time.monotonic()
        deadline = started + args.minutes * 60
        annotators = [
            Annotator(n, base_url, token, n < args.annotators * args.html_share, args, record, deadline)
            for n, token in enumerate(tokens)
        ]
        for annotator in annotators:
            annotator.start()
        events: list[str] = []
        schedule = [(0.25, "restart the pair worker"), (0.45, "restart vLLM"), (0.7, "cut the broker for 30 s")]
        for share, event in schedule:
            time.sleep(max(0.0, started + share * args.minutes * 60 - time.monotonic()))
            events.append(f"{time.monotonic() - started:.0f} s: {event}")
            print(events[-1], flush=True)
            if event.startswith("restart the pair worker"):
                parts["worker"].restart()
            elif event.startswith("restart vLLM") and "vllm" in parts:
                parts["vllm"].restart()
            elif event.startswith("cut the broker"):
                parts["redis"].stop()
                time.sleep(30)
                parts["redis"].start()
        for annotator in annotators:
            annotator.join(timeout=max(1.0, deadline - time.monotonic() + 60))
        figures = {"minutes": args.minutes, "annotators": args.annotators, "events": events, **check(record)}
        figures["load_average"] = os.getloadavg()
    finally:
        for part in reversed(list(parts.values())):
            part.stop()
        from django.db import connections

        connections.close_all()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"drop database if exists {database}"])
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    failed = [name for name in ("acknowledged_but_missing", "one_key_answered_with_two_votes",
                                "keys_stored_more_than_once", "pairs_over_voted", "pair_counts_not_matching_votes",
                                "annotator_voted_twice_on_a_pair", "told_no_pair_while_one_was_open",
                                "server_errors_5xx") if figures.get(name)]  # fmt: skip
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
