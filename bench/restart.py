"""Restart: `make run` stopped with Ctrl-C, and killed with SIGKILL in the middle of a refill, starts again and
stores a new pair within one refill interval of its model server being up.

    .venv/bin/python -m bench.restart [--repeats 2] [--json FILE]

Runs `make run` itself, on this machine and loopback only, in this checkout, with its own SQLite database and file
broker in a temporary folder (so a developer's var/pairloop.sqlite3 is left alone), its own ports, and a buffer target
high enough that refills run the whole time. Each repeat:

1. starts `make run` and waits for its vLLM server to answer and the first pair to be stored;
2. sends SIGINT to the whole process group, as Ctrl-C in a terminal does, and times the stop (goal: 10 s or less);
3. starts it again, waits for a refill to hold a claim (a batch being sampled), and SIGKILLs every process at once;
4. starts it again and times, from the moment its vLLM server answers, the first new pair stored (goal: at most one
   refill interval, PAIR_REFILL_INTERVAL, 30 s by default). Before sampling claims, this waited for the dead
   refill's 360 s cache lock.

It prints each measurement, their median and maximum, the load average, and exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
STOP_GOAL_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> float:
    """Seconds until `condition` held; raises when it did not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


class Run:
    """One `make run`, its environment and its database."""

    def __init__(self, folder: Path, refill_interval: float) -> None:
        self.folder = folder
        self.web_port, self.vllm_port = free_port(), free_port()
        self.database = folder / "pairloop.sqlite3"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.database}",
            "CELERY_BROKER_URL": f"sqla+sqlite:///{folder / 'broker.sqlite3'}",
            "CELERY_TASK_DEFAULT_QUEUE": f"bench-restart-{os.getpid()}",
            "CELERY_TRAINING_QUEUE": f"bench-restart-{os.getpid()}-training",
            "PORT": str(self.web_port),
            "VLLM_PORT": str(self.vllm_port),
            "PAIR_BUFFER_TARGET": "500",  # never full during the bench: refills run the whole time
            "PAIR_REFILL_INTERVAL": str(refill_interval),
            "SAMPLING_MAX_TOKENS": "32",
            "PAIR_REFILL_BATCH": "4",
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_offset = 0
        self.log = (folder / "make-run.log").open("ab")

    def start(self) -> None:
        self.log.flush()
        self.log_offset = (self.folder / "make-run.log").stat().st_size
        self.process = subprocess.Popen(
            ["make", "run"], cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _query(self, sql: str) -> int:
        if not self.database.exists():
            return 0
        try:
            with sqlite3.connect(self.database, timeout=5) as connection:
                return int(connection.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:  # not migrated yet
            return 0

    def pairs(self) -> int:
        return self._query("SELECT count(*) FROM annotate_pair")

    def claims(self) -> int:
        return self._query("SELECT count(*) FROM annotate_samplingclaim")

    def model_server_up(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.vllm_port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def groups(self) -> list[int]:
        """make's process group, and those honcho started its processes in (each in a session of its own)."""
        assert self.process is not None
        with (self.folder / "make-run.log").open("rb") as log:
            log.seek(self.log_offset)
            started = re.findall(rb"started \(pid=(\d+)\)", log.read())
        return [self.process.pid, *(int(pid) for pid in started)]

    def alive(self) -> bool:
        """Any process of the run still running (a zombie waiting for its reaper is gone for good)."""
        groups = set(self.groups())
        for process in psutil.process_iter(["status"]):
            try:
                if os.getpgid(process.pid) in groups and process.info["status"] != psutil.STATUS_ZOMBIE:
                    return True
            except ProcessLookupError:
                continue
        return False

    def signal(self, number: int) -> None:
        """To make's group, as the terminal does."""
        assert self.process is not None
        os.killpg(self.process.pid, number)

    def kill_all(self) -> None:
        """kill -9 on every process of the run at once, as when its machine or container goes."""
        for group in self.groups():
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def kill(self) -> None:
        if self.process is not None and self.alive():
            self.kill_all()
            self.process.wait(timeout=30)
            wait_for(lambda: not self.alive(), 30, "the killed processes to go")


def repeat(run: Run, refill_interval: float) -> dict[str, float]:
    run.start()
    wait_for(run.model_server_up, 600, "the model server to answer")
    wait_for(lambda: run.pairs() > 0, 300, "the first pair")

    run.signal(signal.SIGINT)  # Ctrl-C in the terminal reaches the whole foreground group
    stop_seconds = wait_for(lambda: not run.alive(), 120, "make run to stop after Ctrl-C")
    assert run.process is not None
    run.process.wait(timeout=30)

    run.start()
    wait_for(run.model_server_up, 600, "the model server to answer after Ctrl-C")
    wait_for(lambda: run.claims() > 0, 300, "a refill to claim a batch")
    run.kill()  # kill -9 mid-refill: its claim stays behind, naming a process that is gone
    left_claims = run.claims()

    before = run.pairs()
    run.start()
    wait_for(run.model_server_up, 600, "the model server to answer after kill -9")
    pair_seconds = wait_for(lambda: run.pairs() > before, refill_interval * 10, "a new pair after kill -9")
    run.signal(signal.SIGINT)
    wait_for(lambda: not run.alive(), 120, "make run to stop")
    run.process.wait(timeout=30)
    return {"stop_seconds": stop_seconds, "claims_left_by_the_kill": left_claims, "first_pair_seconds": pair_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--refill-interval", type=float, default=30.0, help="PAIR_REFILL_INTERVAL of the runs")
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    results: list[dict[str, float]] = []
    load: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as folder:
        run = Run(Path(folder), arguments.refill_interval)
        try:
            for number in range(arguments.repeats):
                load.append(os.getloadavg()[0])
                result = repeat(run, arguments.refill_interval)
                results.append(result)
                print(f"repeat {number + 1}: " + ", ".join(f"{key} {value:.1f}" for key, value in result.items()))
        finally:
            run.kill()
    stops = [result["stop_seconds"] for result in results]
    firsts = [result["first_pair_seconds"] for result in results]
    summary = {
        "repeats": results,
        "stop_seconds": {"median": statistics.median(stops), "max": max(stops), "goal": STOP_GOAL_SECONDS},
        "first_pair_after_kill_seconds": {
            "median": statistics.median(firsts),
            "max": max(firsts),
            "goal": arguments.refill_interval,
        },
        "load_average": {"min": min(load), "max": max(load)},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(summary, indent=2))
    return int(max(stops) > STOP_GOAL_SECONDS or max(firsts) > arguments.refill_interval)


if __name__ == "__main__":
    raise SystemExit(main())
