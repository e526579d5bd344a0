"""Chaos soak: every process of a two-of-everything deployment SIGKILLed at random while people vote and a round runs.

    .venv/bin/python -m bench.chaos [--minutes 10] [--annotators 50] [--kill-every 20 40] [--seed 1] [--json FILE]

Everything runs on this machine, on loopback only, and stops by itself: its own PostgreSQL database (dropped at the
end) and Redis server (the broker and the cache), two gunicorns (2 workers x 4 threads each; annotators are spread
over both, as a load balancer would), two sampling workers, the trainer, beat, and two real vLLM-CPU replicas with
the default model (VLLM_BASE_URL lists both). Annotators vote through the API and the HTML form with retries,
double clicks and impatient clients (bench/soak.py's annotators); pairs are made up front so people are never
starved by the CPU-bound replicas, and the workers keep sampling more. During the run staff start a round (another
when a kill ended it), ask for an export and import preference data through the API.

Every --kill-every seconds (drawn between the two bounds) one process is chosen at random (a web server, a sampling
worker, the trainer mid-round, beat, a vLLM replica, Redis), SIGKILLed with its children, and started again at once.
A process that exits by itself is started again too, as its supervisor would, and listed.

At the end, after waiting out the leases, it prints: votes acknowledged against stored (each once), pairs over-voted,
annotators told "no pair" while one was open to them, 5xx answers, rounds, exports and imports left non-terminal
without a live owner, the time from each kill to the next pair sampled from a replica (median and max, and the
same counted from the moment the killed process was back), and every sampled answer's replica and model version
checked against its pair. It exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.soak import (
    REPO,
    Annotator,
    Part,
    Record,
    check,
    deployment_env,
    free_port,
    make_annotators,
    make_pairs,
    scratch_database_create,
    wait_for,
)

HH_RLHF = REPO.parent / "shared" / "data" / "hh_rlhf_harmless_dev.jsonl"
ROUND_STALE_SECONDS = 60  # the trainer heartbeats its round every eighth of this: a round silent this long has no owner
EXPORT_LEASE_SECONDS = 15


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load and the kills run")
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(20.0, 40.0), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=1, help="which processes are killed, and when")
    parser.add_argument("--pause-min", type=float, default=1.0)
    parser.add_argument("--pause-max", type=float, default=4.0)
    parser.add_argument("--html-share", type=float, default=0.3)
    parser.add_argument("--double-submit", type=float, default=0.1)
    parser.add_argument("--impatient", type=float, default=0.05)
    parser.add_argument("--pairs", type=int, default=3000, help="pairs made up front")
    parser.add_argument("--votes-per-pair", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def celery(name: str, queue: str, env: dict[str, str], log_dir: Path, *extra: str) -> Part:
    command = [sys.executable, "-m", "celery", "-A", "annotate", *extra, "--loglevel", "INFO"]
    if extra[0] == "worker":
        command += ["--queues", queue, "--hostname", f"{name}@%h"]
    return Part(name, command, env, log_dir)


def gunicorn(name: str, port: int, env: dict[str, str], log_dir: Path) -> Part:
    command = [str(REPO / ".venv/bin/gunicorn"), "annotate.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
               "--threads", "4", "--timeout", "60"]  # fmt: skip
    return Part(name, command, env, log_dir)


class Staff:
    """What staff do through the API during the run: rounds, an export, an import."""

    def __init__(self, base_url: str, token: str) -> None:
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=60)
        self.rounds: list[int] = []
        self.exports: list[int] = []
        self.imports: list[str] = []
        self.statuses: list[str] = []

    def _send(self, method: str, path: str, **options: Any) -> httpx.Response | None:
        for _ in range(10):  # a killed web server or Redis: try again, as a script would
            try:
                response = self.client.request(method, path, **options)
            except httpx.HTTPError:
                time.sleep(2)
                continue
            self.statuses.append(f"{method} {path.split('?')[0]} {response.status_code}")
            if response.status_code < 500:
                return response
            time.sleep(2)
        return None

    def round_start(self) -> None:
        response = self._send("POST", "/api/rounds/", json={"max_steps": 2, "gate_mode": "offline"})
        if response is not None and response.status_code in (200, 201, 202):
            self.rounds.append(response.json()["id"])

    def round_status(self, round_id: int) -> str:
        response = self._send("GET", f"/api/rounds/{round_id}/")
        return response.json()["status"] if response is not None and response.status_code == 200 else "unknown"

    def export(self) -> None:
        response = self._send("POST", "/api/exports/", json={"dataset_format": "trl-preference"})
        if response is not None and response.status_code in (200, 201, 202):
            self.exports.append(response.json()["id"])

    def import_preferences(self) -> None:
        lines = HH_RLHF.read_text().splitlines()[:200]
        files = {"file": ("chaos.jsonl", "\n".join(lines).encode(), "application/json")}
        form = {"format": "hh-rlhf", "skip_bad": "true"}  # the real file has a row with an empty answer
        response = self._send("POST", "/api/preferences/import/", data=form, files=files)
        if response is not None:
            self.imports.append(f"{response.status_code}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def sampled_pairs() -> int:
    from annotate.models import Pair

    return Pair.objects.exclude(completion_a__server="").count()


def answers_checked(urls: list[str]) -> dict[str, int]:
    """Every sampled answer names one of the replicas; both answers of a pair of one version are that version's."""
    from django.db.models import F

    from annotate.models import Completion, Pair

    sampled = Completion.objects.exclude(server="")
    same_version = Pair.objects.exclude(completion_a__server="").filter(
        completion_a__model_version=F("completion_b__model_version")
    )
    return {
        "answers_sampled": sampled.count(),
        "answers_from_an_unknown_server": sampled.exclude(server__in=urls).count(),
        "answers_per_server": {url: sampled.filter(server=url).count() for url in urls},  # type: ignore[dict-item]
        "pairs_whose_answers_are_not_their_version": same_version.exclude(
            sampled_from=F("completion_a__model_version")
        ).count(),
    }


def left_without_owner() -> dict[str, int]:
    """Work still marked as running or queued whose owner has been silent past its bound."""
    from datetime import timedelta

    from django.utils import timezone

    from annotate.models import DataImport, Export, SamplingClaim, TrainingRound

    now = timezone.now()
    # A canary has no worker (it waits for votes; beat decides it), and a trained round waits for staff.
    active_rounds = TrainingRound.objects.filter(status__in=TrainingRound.ACTIVE_STATUSES).exclude(
        status__in=(TrainingRound.Status.CANARY, TrainingRound.Status.TRAINED)
    )
    return {
        "rounds": active_rounds.filter(heartbeat_at__lt=now - timedelta(seconds=ROUND_STALE_SECONDS)).count(),
        "exports": Export.objects.filter(
            status=Export.Status.RUNNING, heartbeat_at__lt=now - timedelta(seconds=EXPORT_LEASE_SECONDS)
        ).count(),
        "exports_queued": Export.objects.filter(status=Export.Status.QUEUED).count(),
        "imports": DataImport.objects.filter(
            status=DataImport.Status.RUNNING, heartbeat_at__lt=now - timedelta(seconds=EXPORT_LEASE_SECONDS)
        ).count(),
        "imports_queued": DataImport.objects.filter(status=DataImport.Status.QUEUED).count(),
        "sampling_claims_expired": SamplingClaim.objects.filter(expires_at__lt=now).count(),
    }


def main() -> int:
    args = parse_arguments()
    chooser = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="pairloop-chaos-"))
    database = f"pairloop_chaos_{uuid.uuid4().hex[:8]}"
    redis_port = free_port()
    web_ports = [free_port(), free_port()]
    vllm_ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{port}" for port in vllm_ports]
    queue = f"chaos-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "PAIRLOOP_VAR_DIR": str(scratch),
        "ROUND_DIR": str(scratch / "rounds"),
        "ADAPTER_STORE_DIR": str(scratch / "adapters"),
        "EXPORT_DIR": str(scratch / "exports"),
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CACHE_URL": f"redis://127.0.0.1:{redis_port}/1",
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "CELERY_TRAINING_QUEUE": f"{queue}-training",
        "VLLM_BASE_URL": ",".join(urls),
        "VLLM_SERVER_RETRY_SECONDS": "5",
        "SAMPLING_MAX_TOKENS": "32",
        "PAIR_BUFFER_TARGET": str(args.pairs + 400),  # never full: the workers sample the whole time
        "PAIR_REFILL_BATCH": "4",
        "PAIR_REFILL_INTERVAL": "10",
        "SAMPLING_CLAIM_LEASE_SECONDS": "15",
        "EXPORT_LEASE_SECONDS": str(EXPORT_LEASE_SECONDS),
        "DATA_IMPORT_LEASE_SECONDS": str(EXPORT_LEASE_SECONDS),
        "ROUND_STALE_SECONDS": str(ROUND_STALE_SECONDS),
        "ROUND_MIN_TRAIN_PAIRS": "4",
        "ROUND_GATE_MIN_ACCURACY": "0",  # every round deploys: the soak is about kills, not what two steps learn
        "ROUND_GATE_TOLERANCE": "1",
        "ROUND_LENGTH_PROMPTS": "3",
        "JUDGEMENTS_PER_PAIR": str(args.votes_per_pair),
        **deployment_env(),
    }
    log_dir = scratch_database_create(env, database, scratch)
    python = sys.executable
    redis = ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"]
    parts = {
        "redis": Part("redis", redis, env, log_dir),
        "web-a": gunicorn("web-a", web_ports[0], env, log_dir),
        "web-b": gunicorn("web-b", web_ports[1], env, log_dir),
        "worker-a": celery("worker-a", queue, env, log_dir, "worker", "--concurrency", "1"),
        "worker-b": celery("worker-b", queue, env, log_dir, "worker", "--concurrency", "1"),
        "trainer": celery("trainer", f"{queue}-training", env, log_dir, "worker", "--pool", "solo"),
        "beat": Part(
            "beat",
            [
                python,
                "-m",
                "celery",
                "-A",
                "annotate",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(scratch / "beat-schedule"),
            ],
            env,
            log_dir,
        ),
        "vllm-a": Part(
            "vllm-a", [python, "manage.py", "serve_model"], {**env, "VLLM_PORT": str(vllm_ports[0])}, log_dir
        ),
        "vllm-b": Part(
            "vllm-b", [python, "manage.py", "serve_model"], {**env, "VLLM_PORT": str(vllm_ports[1])}, log_dir
        ),
    }
    figures: dict[str, Any] = {}
    try:
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from rest_framework.authtoken.models import Token

        call_command("migrate", verbosity=0)
        call_command("createcachetable", verbosity=0)
        call_command("collectstatic", "--noinput", verbosity=0)
        call_command("seed_demo", verbosity=0)  # prompts for the workers to sample
        make_pairs(args.pairs, args.votes_per_pair)
        tokens = make_annotators(args.annotators)
        staff_user = User.objects.create_user("chaos-staff", is_staff=True, password="chaos-password-1")
        staff = Staff(f"http://localhost:{web_ports[0]}", Token.objects.create(user=staff_user).key)
        for part in parts.values():
            part.start()
        for port in web_ports:
            if not wait_for(f"http://localhost:{port}/healthz", 120):
                raise SystemExit("a web server did not start; see " + str(log_dir))
        for url in urls:
            if not wait_for(f"{url}/health", 600):
                raise SystemExit("a vLLM replica did not start; see " + str(log_dir))
        print(f"all parts up; logs in {log_dir}", flush=True)

        record = Record()
        started = time.monotonic()
        deadline = started + args.minutes * 60
        annotators = [
            Annotator(
                n,
                f"http://localhost:{web_ports[n % 2]}",
                token,
                n < args.annotators * args.html_share,
                args,
                record,
                deadline,
            )
            for n, token in enumerate(tokens)
        ]
        for annotator in annotators:
            annotator.start()

        kills: list[dict[str, Any]] = []
        exits: list[dict[str, Any]] = []

        def observe() -> None:
            """What a supervisor does, and what the figures need: exited processes started again, each killed
            process's return (it answers again) and the first pair sampled after its kill."""
            # A supervisor's part (systemd's Restart=always, a Kubernetes pod): a process that exited by itself is
            # started again, and counted. Celery workers exit when Redis goes away while they hold unacknowledged
            # messages (kombu's restore_unacked on a closed channel: "Unrecoverable error: AttributeError").
            for name, part in parts.items():
                if part.process is not None and part.process.poll() is not None:
                    exits.append({"part": name, "at_s": round(time.monotonic() - started, 1),
                                  "returncode": part.process.returncode})  # fmt: skip
                    print(f"{time.monotonic() - started:.0f} s: {name} exited by itself, started again", flush=True)
                    part.start()
            for kill in kills:
                if kill["back_at"] is None:
                    name = kill["part"]
                    if name.startswith("vllm"):
                        back = answers(f"{urls[0 if name == 'vllm-a' else 1]}/health")
                    elif name.startswith("web"):
                        back = answers(f"http://localhost:{web_ports[0 if name == 'web-a' else 1]}/healthz")
                    else:
                        back = True
                    if back:
                        kill["back_at"] = time.monotonic()
                if kill["next_pair_at"] is None and sampled_pairs() > kill["pairs_before"]:
                    kill["next_pair_at"] = time.monotonic()

        staff_plan = [(0.1, "round"), (0.3, "export"), (0.5, "import")]
        next_kill = started + chooser.uniform(*args.kill_every)
        while time.monotonic() < deadline:
            now = time.monotonic()
            while staff_plan and now >= started + staff_plan[0][0] * args.minutes * 60:
                what = staff_plan.pop(0)[1]
                print(f"{now - started:.0f} s: staff: {what}", flush=True)
                threading.Thread(
                    target={"round": staff.round_start, "export": staff.export, "import": staff.import_preferences}[
                        what
                    ],
                    daemon=True,
                ).start()
            # A round a kill ended (failed as stale, or cancelled) is started again, as staff would.
            again = staff.rounds and not staff_plan and len(staff.rounds) < 4
            if again and staff.round_status(staff.rounds[-1]) in ("failed", "cancelled"):
                staff.round_start()
            if now >= next_kill:
                name = chooser.choice(sorted(parts))
                part = parts[name]
                before = sampled_pairs()
                if part.process is not None and part.process.poll() is None:
                    os.killpg(part.process.pid, signal.SIGKILL)
                    part.process.wait()
                killed_at = time.monotonic()
                part.start()
                kills.append({"part": name, "at": round(killed_at - started, 1), "pairs_before": before,
                              "killed_at": killed_at, "back_at": None, "next_pair_at": None})  # fmt: skip
                print(f"{killed_at - started:.0f} s: SIGKILL {name}, started again", flush=True)
                next_kill = killed_at + chooser.uniform(*args.kill_every)
            observe()
            time.sleep(1)

        for annotator in annotators:
            annotator.join(timeout=90)
        # Kills stop here; give every lease, heartbeat and beat pass one full bound to end what the kills left, and
        # watch until every killed process is back with a pair after it (a vLLM-CPU start takes minutes here), for
        # at most another five minutes.
        settle_until = time.monotonic() + max(ROUND_STALE_SECONDS, EXPORT_LEASE_SECONDS) + 45
        give_up = settle_until + 300
        while time.monotonic() < settle_until or (
            time.monotonic() < give_up and any(k["back_at"] is None or k["next_pair_at"] is None for k in kills)
        ):
            observe()
            time.sleep(1)

        def seconds(kill: dict[str, Any], since: str) -> float | None:
            if kill["next_pair_at"] is None or kill[since] is None:
                return None
            return round(max(0.0, kill["next_pair_at"] - kill[since]), 1)

        after_kill = [s for s in (seconds(k, "killed_at") for k in kills) if s is not None]
        after_back = [s for s in (seconds(k, "back_at") for k in kills) if s is not None]
        from annotate.models import DataImport, Export, TrainingRound

        figures = {
            "minutes": args.minutes,
            "annotators": args.annotators,
            "cpus": os.cpu_count(),
            "kills": [
                {
                    "part": k["part"],
                    "at_s": k["at"],
                    "next_pair_after_s": seconds(k, "killed_at"),
                    "next_pair_after_back_s": seconds(k, "back_at"),
                }
                for k in kills
            ],
            "kills_without_a_next_pair": sum(1 for k in kills if k["next_pair_at"] is None),
            "exited_by_themselves_and_restarted": exits,
            "next_pair_after_kill_s": {
                "median": statistics.median(after_kill) if after_kill else None,
                "max": max(after_kill) if after_kill else None,
            },
            "next_pair_after_back_s": {
                "median": statistics.median(after_back) if after_back else None,
                "max": max(after_back) if after_back else None,
            },
            **check(record),
            "left_without_owner": left_without_owner(),
            **answers_checked(urls),
            "rounds": dict(TrainingRound.objects.values_list("id", "status")),
            "rounds_serving": TrainingRound.objects.filter(status=TrainingRound.Status.SERVING).count(),
            "exports": dict(Export.objects.values_list("id", "status")),
            "imports": dict(DataImport.objects.values_list("id", "status")),
            "import_requests": staff.imports,
            "staff_requests": staff.statuses,
            "load_average": os.getloadavg(),
        }
    finally:
        for part in reversed(list(parts.values())):
            part.stop()
        from django.db import connections

        connections.close_all()
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"drop database if exists {database}"])
    print(json.dumps(figures, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    failed = [name for name in ("acknowledged_but_missing", "one_key_answered_with_two_votes",
                                "keys_stored_more_than_once", "pairs_over_voted", "pair_counts_not_matching_votes",
                                "annotator_voted_twice_on_a_pair", "told_no_pair_while_one_was_open",
                                "server_errors_5xx", "answers_from_an_unknown_server",
                                "pairs_whose_answers_are_not_their_version") if figures.get(name)]  # fmt: skip
    failed += [f"left_without_owner.{name}" for name, count in figures.get("left_without_owner", {}).items() if count]
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
