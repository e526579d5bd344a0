"""Scaling: pairs per second with 1, 2 and 4 model servers and 1, 2 and 4 sampling workers, as ratios to one of each.

    .venv/bin/python -m bench.scale [--seconds 8] [--settle 2] [--repeats 3] [--json FILE]   # about 7 minutes

What runs, all on this machine:

- the model servers: four stand-ins (bench.stand_in_server), each its own process. An answer takes a fixed
  time per generated token, asleep, and a replica generates at most --max-sequences answers at once, so it has a
  fixed capacity and the CPU does not limit it: what is measured is pairloop's side;
- the sampling workers: real Celery worker processes (`celery -A annotate worker --pool solo`, one refill at a time,
  each refill with PAIR_GENERATION_CONCURRENCY prompts in flight), VLLM_BASE_URL listing the cell's stand-ins,
  on a PostgreSQL database of their own (--database, recreated) with Redis as broker and cache (--redis);
- the work: the pair buffer's target is out of reach (PAIR_BUFFER_TARGET 1,000,000), so every refill claims a batch
  of PAIR_REFILL_BATCH pairs (annotate.sampling SamplingClaim) and asks for the next refill before it makes its own,
  and the workers share the batches out as they would a real buffer running low. One refill request starts the
  chain; nothing else is enqueued.

A cell (S servers, W workers) counts the pairs stored in --seconds, after --settle seconds for a change of worker
count to take effect. The cells are interleaved: each repeat goes through the server counts (in reverse order every
other repeat), where 1, 2 then 4 of the four workers started for that set (all sets at the beginning) consume the
refill queue (4, 2, 1 every other repeat); so every repeat has its own one-server-one-worker baseline, and every
cell's ratio is taken to the baseline of its own repeat. It prints the load average around each cell, the workers'
CPU time a pair and how busy the model servers' slots were, which say whether the machine, the workers or the model
servers cap a cell.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
QUEUE = "bench-scale"
COUNTS = (1, 2, 4)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time a cell")
    parser.add_argument("--settle", type=float, default=2.0, help="time for a change of worker count to take effect")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--database", default="bench_scale", help="a PostgreSQL database name (dropped, recreated)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/6", help="broker and cache (flushed first)")
    parser.add_argument("--token-seconds", type=float, default=0.04, help="the stand-ins' time a generated token")
    parser.add_argument("--tokens", type=int, default=32, help="the stand-ins' mean tokens an answer")
    parser.add_argument("--max-sequences", type=int, default=32, help="answers a stand-in generates at once")
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--log-dir", type=Path, default=REPO / "var" / "bench-scale")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


class Process:
    """A child process in its own session (so its children stop with it), logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """CPU time of the process and its children so far (0 once it is gone)."""
        try:
            parent = psutil.Process(self.popen.pid)
            total = 0.0
            for process in [parent, *parent.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
            return total
        except psutil.NoSuchProcess:
            return 0.0

    def terminate(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)  # a Celery worker finishes its refill first (warm shutdown)

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is not None:
            return
        self.terminate()
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def environment(arguments: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ,
        "SECRET_KEY": "bench-only",
        "DJANGO_SETTINGS_MODULE": "annotate.settings",
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": f"{arguments.postgres}/{arguments.database}",
        "CELERY_BROKER_URL": arguments.redis,
        "CACHE_URL": arguments.redis,
        "CELERY_TASK_DEFAULT_QUEUE": QUEUE,
        "PAIR_BUFFER_TARGET": "1000000",
        "HEAD_TO_HEAD_PAIR_SHARE": "0",  # one version only: every pair is an ordinary one
    }


def database_recreate(arguments: argparse.Namespace) -> None:
    import psycopg

    with psycopg.connect(f"{arguments.postgres}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{arguments.database}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{arguments.database}"')


def setup(arguments: argparse.Namespace) -> None:
    """This process's Django, on the bench database: migrated, the base model serving, --prompts prompts."""
    import redis

    os.environ.update(environment(arguments))
    redis.Redis.from_url(arguments.redis).flushdb()
    database_recreate(arguments)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from annotate.models import ModelVersion, Prompt

    call_command("migrate", verbosity=0)
    ModelVersion.objects.ensure_base(name=settings.SERVED_MODEL_NAME, base_model=str(settings.BASE_MODEL_DIR))
    demo = json.loads((REPO / "annotate" / "demo_prompts.json").read_text())
    for number in range(arguments.prompts):
        content = f"{demo[number % len(demo)]['messages'][-1]['content']} ({number})"
        Prompt(messages=[{"role": "user", "content": content}], prompt_set="demo").save()  # save() hashes it


def servers_start(arguments: argparse.Namespace, count: int) -> tuple[list[Process], list[str]]:
    from django.conf import settings

    servers, urls = [], []
    for number in range(count):
        port = free_port()
        command = [sys.executable, "-m", "bench.stand_in_server", "--port", str(port),
                   "--token-seconds", str(arguments.token_seconds), "--tokens", str(arguments.tokens),
                   "--max-sequences", str(arguments.max_sequences), "--model", settings.SERVED_MODEL_NAME]  # fmt: skip
        servers.append(Process(f"server{number + 1}", command, environment(arguments), arguments.log_dir))
        urls.append(f"http://127.0.0.1:{port}")

    def healthy(url: str) -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(lambda: all(healthy(url) for url in urls), 60, "the stand-in servers")
    return servers, urls


def adapter_serve(urls: list[str]) -> None:
    """Serve an adapter, as after a first round: then every refill asks every replica what it serves."""
    from django.conf import settings

    from annotate.models import ModelVersion
    from annotate.sampling.generation import ModelServerClient, ModelServerPool

    version = ModelVersion.objects.create(
        name="bench-scale-adapter", base_model=settings.SERVED_MODEL_NAME, adapter_path="/stand-in/bench-scale-adapter"
    )
    with ModelServerPool([ModelServerClient(url) for url in urls]) as pool:
        version.serve(pool)


@dataclass
class Workers:
    """The sampling workers for one set of model servers: four Celery workers, parked on a queue nobody uses; a
    cell's W of them consume the refill queue (Celery's add_consumer / cancel_consumer: a worker that stops
    consuming finishes its refill first). Every set is started once, at the beginning: a start takes 10 to 60 s of a
    loaded machine, and the workers must be restarted to be given other servers (VLLM_BASE_URL).
    """

    arguments: argparse.Namespace
    urls: list[str]
    running: list[Process] = field(default_factory=list)
    consuming: int = 0

    def start(self, count: int) -> None:
        for number in range(count):
            name = f"servers{len(self.urls)}-worker{number + 1}"
            command = [sys.executable, "-m", "celery", "-A", "annotate", "worker", "--pool", "solo",
                       "--loglevel", "INFO", "--queues", f"{QUEUE}-parked", "--hostname", f"{name}@%h",
                       "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
            env = {**environment(self.arguments), "VLLM_BASE_URL": ",".join(self.urls)}
            self.running.append(Process(name, command, env, self.arguments.log_dir))

    def wait_ready(self) -> None:
        for process in self.running:
            wait_for(lambda p=process: "ready." in p.log() or p.popen.poll() is not None, 180, f"{process.name}")
            if process.popen.poll() is not None:
                raise SystemExit(f"{process.name} exited:\n{process.log()[-3000:]}")

    def consume(self, count: int) -> None:
        """The first `count` workers consume the refill queue, the others not."""
        from annotate.celery import app

        hosts = [f"{process.name}@{socket.gethostname()}" for process in self.running]
        for host in hosts[self.consuming : count]:
            if not app.control.add_consumer(QUEUE, destination=[host], reply=True, timeout=30):
                raise SystemExit(f"{host} did not answer add_consumer")
        for host in hosts[count : self.consuming]:
            if not app.control.cancel_consumer(QUEUE, destination=[host], reply=True, timeout=30):
                raise SystemExit(f"{host} did not answer cancel_consumer")
        self.consuming = count

    def cpu_seconds(self) -> float:
        return sum(process.cpu_seconds() for process in self.running)

    def stop(self) -> None:
        processes_stop(self.running)
        self.running.clear()


def processes_stop(processes: list[Process]) -> None:
    """Stop them together: each Celery worker first finishes its refill, so one at a time would add up."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


def queue_clear() -> None:
    """Between blocks, once no worker consumes: every refill finished (no claim left), none queued, none marked as
    queued, so each block starts its own chain of refills."""
    from django.core.cache import cache

    from annotate.celery import app
    from annotate.models import SamplingClaim
    from annotate.sampling.services import REFILL_QUEUED_KEY

    wait_for(lambda: not SamplingClaim.objects.exists(), 120, "the last refills of a block to finish")
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(QUEUE)
    cache.delete(REFILL_QUEUED_KEY)


@dataclass
class Cell:
    servers: int
    workers: int
    repeat: int
    pairs: int
    seconds: float
    cpu_seconds: float
    slots_busy: float  # the servers' sequence slots in use, a share of all of them (1: at capacity)
    load_before: float
    load_after: float

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds


def generating_seconds(urls: list[str]) -> float:
    return sum(httpx.get(f"{url}/stats", timeout=10).json()["generating_seconds"] for url in urls)


def cell_measure(arguments: argparse.Namespace, workers: Workers, servers: int, repeat: int) -> Cell:
    from annotate.models import Pair

    time.sleep(arguments.settle)
    load_before = os.getloadavg()[0]
    cpu_before = workers.cpu_seconds()
    busy_before = generating_seconds(workers.urls)
    pairs_before = Pair.objects.count()
    started = time.monotonic()
    time.sleep(arguments.seconds)
    pairs_after = Pair.objects.count()
    seconds = time.monotonic() - started
    busy = generating_seconds(workers.urls) - busy_before
    cell = Cell(
        servers=servers,
        workers=workers.consuming,
        repeat=repeat,
        pairs=pairs_after - pairs_before,
        seconds=seconds,
        cpu_seconds=workers.cpu_seconds() - cpu_before,
        slots_busy=busy / (seconds * servers * arguments.max_sequences),
        load_before=load_before,
        load_after=os.getloadavg()[0],
    )
    print(
        f"  repeat {repeat + 1}: {servers} servers x {cell.workers} workers: {cell.pairs:4d} pairs in "
        f"{seconds:4.1f} s = {cell.pairs_per_second:5.1f} pairs/s, workers' CPU "
        f"{cell.cpu_seconds / max(cell.pairs, 1) * 1000:4.1f} ms a pair, server slots busy "
        f"{cell.slots_busy:4.0%}, load {load_before:.1f} -> "
        f"{cell.load_after:.1f}",
        flush=True,
    )
    return cell


def block_run(arguments: argparse.Namespace, workers: Workers, repeat: int) -> list[Cell]:
    """One set of model servers: the workers go 1, 2, 4 (or 4, 2, 1 every other repeat), one cell each."""
    from annotate.sampling.services import pairs_refill_request

    cells = []
    for number, count in enumerate(COUNTS if repeat % 2 == 0 else tuple(reversed(COUNTS))):
        workers.consume(count)
        if number == 0:
            pairs_refill_request(throttle=False)  # starts the chain of refills; each asks for the next
        cells.append(cell_measure(arguments, workers, len(workers.urls), repeat))
    workers.consume(0)
    queue_clear()
    return cells


def summarise(cells: list[Cell], server_capacity: float) -> list[dict[str, Any]]:
    """Medians and spreads a cell; `linear` is the cell's ratio if nothing but the model servers' capacity
    (server_capacity pairs/s each) limited W workers that each made the one-to-one baseline's pairs."""
    baseline = {cell.repeat: cell.pairs_per_second for cell in cells if cell.servers == 1 and cell.workers == 1}
    one_by_one = statistics.median(baseline.values())
    rows = []
    for servers in COUNTS:
        for worker_count in COUNTS:
            mine = [cell for cell in cells if cell.servers == servers and cell.workers == worker_count]
            rates = [cell.pairs_per_second for cell in mine]
            ratios = [cell.pairs_per_second / baseline[cell.repeat] for cell in mine if baseline.get(cell.repeat)]
            rows.append(
                {
                    "servers": servers,
                    "workers": worker_count,
                    "pairs_per_second": statistics.median(rates),
                    "pairs_per_second_range": [min(rates), max(rates)],
                    "ratio": statistics.median(ratios) if ratios else None,
                    "ratio_range": [min(ratios), max(ratios)] if ratios else None,
                    "linear": min(worker_count, servers * server_capacity / one_by_one),
                    "cpu_ms_a_pair": statistics.median(cell.cpu_seconds / max(cell.pairs, 1) * 1000 for cell in mine),
                    "slots_busy": statistics.median(cell.slots_busy for cell in mine),
                    "load": [min(cell.load_before for cell in mine), max(cell.load_after for cell in mine)],
                }
            )
    return rows


def main() -> int:
    arguments = parse_arguments()
    arguments.log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_at_start = os.getloadavg()
    setup(arguments)
    from django.conf import settings

    answer_seconds = arguments.tokens * arguments.token_seconds
    print(
        f"stand-ins: {arguments.tokens} tokens an answer on average x {arguments.token_seconds * 1000:.0f} ms, "
        f"{arguments.max_sequences} at once: {arguments.max_sequences / answer_seconds / 2:.1f} pairs/s a server "
        f"at most; workers: PAIR_REFILL_BATCH {settings.PAIR_REFILL_BATCH}, PAIR_GENERATION_CONCURRENCY "
        f"{settings.PAIR_GENERATION_CONCURRENCY}; {os.cpu_count()} CPUs, load average {load_at_start[0]:.1f} "
        f"{load_at_start[1]:.1f} {load_at_start[2]:.1f}",
        flush=True,
    )
    servers, urls = servers_start(arguments, max(COUNTS))
    adapter_serve(urls)
    worker_sets = {count: Workers(arguments, urls[:count]) for count in COUNTS}
    cells: list[Cell] = []
    try:
        for workers in worker_sets.values():
            workers.start(max(COUNTS))
        for workers in worker_sets.values():
            workers.wait_ready()
        print(f"{len(COUNTS) * max(COUNTS)} workers ready after {time.monotonic() - started:.0f} s", flush=True)
        for repeat in range(arguments.repeats):
            for count in COUNTS if repeat % 2 == 0 else tuple(reversed(COUNTS)):
                cells.extend(block_run(arguments, worker_sets[count], repeat))
    finally:
        for workers in worker_sets.values():
            workers.stop()
        for server in servers:
            server.stop()
    rows = summarise(cells, arguments.max_sequences / answer_seconds / 2)
    print(f"\n{'servers':>7} {'workers':>7} {'pairs/s':>8} {'(range)':>12} {'x 1x1':>6} {'(range)':>11} "
          f"{'linear':>6} {'of linear':>9} {'CPU ms/pair':>11} {'slots busy':>10} {'load':>10}")  # fmt: skip
    for row in rows:
        low, high = row["pairs_per_second_range"]
        ratio_low, ratio_high = row["ratio_range"]
        load_low, load_high = row["load"]
        print(
            f"{row['servers']:>7} {row['workers']:>7} {row['pairs_per_second']:8.1f} {f'{low:.1f}-{high:.1f}':>12} "
            f"{row['ratio']:6.2f} {f'{ratio_low:.2f}-{ratio_high:.2f}':>11} {row['linear']:6.2f} "
            f"{row['ratio'] / row['linear']:9.2f} {row['cpu_ms_a_pair']:11.1f} {row['slots_busy']:10.0%} "
            f"{f'{load_low:.1f}-{load_high:.1f}':>10}"
        )
    load_at_end = os.getloadavg()
    print(
        f"load average at the end {load_at_end[0]:.1f} {load_at_end[1]:.1f} {load_at_end[2]:.1f}; "
        f"{time.monotonic() - started:.0f} s in all"
    )
    if arguments.json:
        results = {"rows": rows, "cells": [vars(cell) for cell in cells], "arguments": vars(arguments)}
        arguments.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
