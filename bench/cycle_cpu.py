"""The annotator's cycle in CPU time: what one lease and one vote cost the web process, against the bare view.

    .venv/bin/python -m bench.cycle_cpu [--pairs 5000] [--cycles 100] [--repeats 7] [--database cycle_cpu_bench]

bench/web.py measures cycles a second from outside, through gunicorn, with the load generator on the same two cores;
on a machine that other work loads, its runs spread by 40 %. This one measures what the server's own code costs: in
one process, through Django's test client (the whole middleware stack and DRF, no socket), the CPU seconds
(`time.process_time`) of `--cycles` API cycles (`GET /api/pairs/next/` for a new lease, then `POST /api/judgements/`,
token authentication, the cache in Redis as in production) against the same number of bare cycles (the bare view of
bench/web_urls.py twice: one indexed read behind the same authentication). The two kinds take turns, `--repeats`
times, the first block of each unmeasured; it prints the median CPU milliseconds a cycle of each with their spread,
their ratio (bare / product: the share of the bare view's rate the cycle could reach were the server's CPU all that
counted), and the load average. PostgreSQL's and Redis's own CPU is not in it (another process): the database's
share of a cycle is what the statement counts of tests/annotate/test_cycle_queries.py pin.

It needs PostgreSQL at 127.0.0.1:5432 (user postgres) and Redis at 127.0.0.1:6379; `--database` is dropped and
made again, so never point it at one you keep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="cycle_cpu_bench", help="PostgreSQL database, dropped and made again")
    parser.add_argument("--pairs", type=int, default=5000, help="open pairs (one vote each: every cycle uses one)")
    parser.add_argument("--annotators", type=int, default=8, help="annotators taking turns")
    parser.add_argument("--cycles", type=int, default=100, help="cycles of each kind in a block")
    parser.add_argument("--repeats", type=int, default=7, help="measured blocks of each kind")
    parser.add_argument("--cache-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--json", type=Path, help="also write the results here")
    arguments = parser.parse_args()
    needed = arguments.cycles * (arguments.repeats + 1)
    if arguments.pairs < needed:
        parser.error(f"--pairs must be at least --cycles x (--repeats + 1) = {needed}: each cycle votes on one")
    return arguments


def block(call: Callable[[], None], cycles: int) -> float:
    """CPU milliseconds a cycle over `cycles` calls."""
    started = time.process_time()
    for _ in range(cycles):
        call()
    return (time.process_time() - started) * 1000 / cycles


def main() -> int:
    arguments = parse_arguments()
    sys.path.insert(0, str(REPO))
    from bench import web

    web.configure_environment(
        argparse.Namespace(
            database=arguments.database,
            cache_url=arguments.cache_url,
            broker_url="redis://127.0.0.1:6379/0",
            pairs=arguments.pairs,
        )
    )
    web.database_recreate(arguments.database)
    import django

    django.setup()
    from django.core.cache import cache
    from django.test import Client

    cache.clear()
    credentials = web.fill(arguments.pairs, arguments.annotators)
    clients = [Client(headers={"authorization": f"Token {token}"}) for token, _ in credentials]
    turn = {"next": 0}

    def product_cycle() -> None:
        api = clients[turn["next"] % len(clients)]
        turn["next"] += 1
        leased = api.get("/api/pairs/next/")
        assert leased.status_code == 200, leased.status_code
        vote: dict[str, Any] = {"pair": leased.json()["pair"], "choice": "left", "strength": 2}
        voted = api.post("/api/judgements/", {**vote, "idempotency_key": str(uuid.uuid4())}, "application/json")
        assert voted.status_code == 201, voted.content

    def bare_cycle() -> None:
        api = clients[turn["next"] % len(clients)]
        turn["next"] += 1
        for _ in range(2):
            assert api.get("/bench/bare/").status_code == 200

    load_before = os.getloadavg()[0]
    block(product_cycle, arguments.cycles)  # unmeasured: fills the caches, warms the connection
    block(bare_cycle, arguments.cycles)
    product: list[float] = []
    bare: list[float] = []
    for _ in range(arguments.repeats):
        product.append(block(product_cycle, arguments.cycles))
        bare.append(block(bare_cycle, arguments.cycles))
    load_after = os.getloadavg()[0]
    result = {
        "product_ms": statistics.median(product),
        "product_spread": [min(product), max(product)],
        "bare_ms": statistics.median(bare),
        "bare_spread": [min(bare), max(bare)],
        "ratio": statistics.median(bare) / statistics.median(product),
        "ratios": [b / p for b, p in zip(bare, product, strict=True)],
        "load": [load_before, load_after],
        "cycles": arguments.cycles,
        "repeats": arguments.repeats,
    }
    print(
        f"CPU a cycle, median of {arguments.repeats} blocks of {arguments.cycles} (min, max):\n"
        f"  API cycle (new lease + vote): {result['product_ms']:.2f} ms ({min(product):.2f}, {max(product):.2f})\n"
        f"  bare view twice:              {result['bare_ms']:.2f} ms ({min(bare):.2f}, {max(bare):.2f})\n"
        f"  ratio bare / cycle: {result['ratio']:.3f}x (per block {min(result['ratios']):.3f}-"
        f"{max(result['ratios']):.3f}); load average {load_before:.1f} before, {load_after:.1f} after"
    )
    if arguments.json:
        import json

        arguments.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
