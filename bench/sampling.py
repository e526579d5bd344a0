"""The buffer refill against plain concurrent requests to the same vLLM server, interleaved, in one run.

    # a vLLM server first (about 40 s to be ready, about 4 GB), then:
    .venv/bin/python -m bench.sampling --url http://127.0.0.1:8131 [--pairs 16] [--repeats 3]

Each configuration produces the same number of answers (2 x --pairs) from the demo prompts with the same sampling
parameters (SAMPLING_TEMPERATURE, SAMPLING_TOP_P, SAMPLING_MAX_TOKENS; a fresh seed per answer):

- `refill C/T`: `sampling.services.pairs_refill` with PAIR_GENERATION_CONCURRENCY=C and PAIR_BUFFER_TARGET=T from an
  empty buffer, repeated until --pairs pairs are stored (so a small target pays its tail once per refill, as it does
  in production); the real code path: least-sampled prompts, the HTTP client, pairs written to the database;
- `raw K`: answers requested with plain `POST /v1/chat/completions` (n=1) from K threads, K sequences in flight;
- `raw n=2 xK`: K/2 requests in flight, each asking for n=2 answers (K sequences in flight).

The runs are interleaved (every configuration once, then again, --repeats times) so load on the shared machine
touches all of them alike; the table gives medians and the spread (min-max) of pairs per minute and generated tokens
per second, and each configuration's median ratio to the best raw configuration. Finally a few stored answers are
requested again, one at a time, with their recorded sampling (seed included) and compared to the stored text.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8131", help="a running vLLM server")
    parser.add_argument("--model", default="", help="served model name (default: SERVED_MODEL_NAME)")
    parser.add_argument("--pairs", type=int, default=16, help="pairs (2 answers each) per configuration and run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--refill",
        default="",
        help="refill configurations CONCURRENCY/TARGET, comma-separated (default: the settings' own, and 4/8)",
    )
    parser.add_argument("--raw", default="8,16,32", help="sequences in flight for the raw n=1 configurations")
    parser.add_argument("--raw-n2", default="32", help="sequences in flight for the raw n=2 configurations")
    parser.add_argument("--prompts", type=int, default=16, help="the first N demo prompts (issue 11 measured 16)")
    parser.add_argument("--replays", type=int, default=4, help="stored answers to request again from their lineage")
    parser.add_argument("--database", type=Path, default=REPO / "var" / "bench-sampling.sqlite3")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def setup_django(arguments: argparse.Namespace) -> None:
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "annotate.settings"
    os.environ["DATABASE_URL"] = f"sqlite:///{arguments.database}"
    os.environ["VLLM_BASE_URL"] = arguments.url
    arguments.database.parent.mkdir(parents=True, exist_ok=True)
    arguments.database.unlink(missing_ok=True)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)


def load_demo_prompts(count: int) -> list[Any]:
    from annotate.models import Prompt

    demo = json.loads((REPO / "annotate" / "demo_prompts.json").read_text())[:count]
    return [
        Prompt.objects.get_or_create(
            messages=entry["messages"], defaults={"prompt_set": "demo", "tags": entry.get("tags", [])}
        )[0]
        for entry in demo
    ]


Run = dict[str, float]


def run_refill(concurrency: int, target: int, pairs: int) -> Run:
    from django.conf import settings
    from django.db.models import Min, Sum
    from django.utils import timezone

    from annotate.models import Completion, Pair
    from annotate.sampling import services as sampling

    settings.PAIR_GENERATION_CONCURRENCY, settings.PAIR_BUFFER_TARGET = concurrency, target
    first_completion = (Completion.objects.order_by("-id").values_list("id", flat=True).first() or 0) + 1
    first_pair = (Pair.objects.order_by("-id").values_list("id", flat=True).first() or 0) + 1
    made = 0
    started_at = timezone.now()
    started = time.monotonic()
    while made < pairs:
        settings.PAIR_BUFFER_TARGET = min(target, pairs - made)
        made_now = sampling.pairs_refill()
        if made_now == 0:
            raise SystemExit("the refill made no pair; is the model server up and the model name right?")
        made += made_now
        Pair.objects.update(judgement_count=1)  # the pairs were "judged": the buffer is empty for the next refill
    seconds = time.monotonic() - started
    tokens = Completion.objects.filter(id__gte=first_completion).aggregate(total=Sum("completion_tokens"))["total"]
    first_stored = Pair.objects.filter(id__gte=first_pair).aggregate(first=Min("created_at"))["first"]
    return {
        "seconds": seconds,
        "pairs": made,
        "tokens": tokens or 0,
        "first_pair_seconds": (first_stored - started_at).total_seconds(),
    }


def run_raw(client: Any, model: str, prompts: list[Any], pairs: int, in_flight: int, n: int) -> Run:
    """2 x pairs answers from plain requests, `in_flight` sequences at a time (in_flight / n requests)."""
    import secrets

    from django.conf import settings

    requests = [prompts[index % len(prompts)] for index in range(pairs * 2 // n)]

    def one(prompt: Any) -> int:
        body = {
            "model": model,
            "messages": prompt.messages,
            "n": n,
            "temperature": settings.SAMPLING_TEMPERATURE,
            "top_p": settings.SAMPLING_TOP_P,
            "max_tokens": settings.SAMPLING_MAX_TOKENS,
            "seed": secrets.randbits(31),
        }
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, in_flight // n)) as pool:
        tokens = sum(pool.map(one, requests))
    return {"seconds": time.monotonic() - started, "pairs": pairs, "tokens": tokens}


def replay_lineage(client: Any, count: int) -> tuple[int, int]:
    """Request stored answers again with their recorded model, messages and sampling; count identical texts."""
    from annotate.models import Completion

    same = 0
    completions = list(Completion.objects.select_related("prompt", "model_version").order_by("?")[:count])
    for completion in completions:
        body = {"model": completion.model_version.name, "messages": completion.prompt.messages, **completion.sampling}
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        same += response.json()["choices"][0]["message"]["content"] == completion.text
    return same, len(completions)


def summarise(name: str, runs: list[Run], load: list[float]) -> dict[str, Any]:
    pairs_per_minute = [run["pairs"] / run["seconds"] * 60 for run in runs]
    tokens_per_second = [run["tokens"] / run["seconds"] for run in runs]
    return {
        "name": name,
        "pairs_per_minute": statistics.median(pairs_per_minute),
        "pairs_per_minute_range": (min(pairs_per_minute), max(pairs_per_minute)),
        "tokens_per_second": statistics.median(tokens_per_second),
        "tokens_per_second_range": (min(tokens_per_second), max(tokens_per_second)),
        "seconds": statistics.median(run["seconds"] for run in runs),
        "load_average": statistics.median(load),
        "first_pair_seconds": (
            statistics.median(run["first_pair_seconds"] for run in runs) if "first_pair_seconds" in runs[0] else None
        ),
    }


def main() -> int:
    arguments = parse_arguments()
    setup_django(arguments)
    import httpx
    from django.conf import settings

    from annotate.models import ModelVersion

    model = arguments.model or settings.SERVED_MODEL_NAME
    ModelVersion.objects.ensure_base(name=model, base_model=str(settings.BASE_MODEL_DIR))
    prompts = load_demo_prompts(arguments.prompts)
    refills = [
        tuple(int(part) for part in item.split("/"))
        for item in (
            arguments.refill.split(",")
            if arguments.refill
            else [f"{settings.PAIR_GENERATION_CONCURRENCY}/{settings.PAIR_BUFFER_TARGET}", "4/8"]
        )
    ]
    refills = list(dict.fromkeys(refills))  # the defaults may be 4/8 already
    client = httpx.Client(base_url=arguments.url, timeout=settings.VLLM_TIMEOUT)
    configurations: dict[str, Callable[[], Run]] = {}
    for concurrency, target in refills:
        configurations[f"refill {concurrency}/{target}"] = lambda c=concurrency, t=target: run_refill(
            c, t, arguments.pairs
        )
    for in_flight in (int(value) for value in arguments.raw.split(",") if value):
        configurations[f"raw {in_flight}"] = lambda k=in_flight: run_raw(client, model, prompts, arguments.pairs, k, 1)
    for in_flight in (int(value) for value in arguments.raw_n2.split(",") if value):
        configurations[f"raw n=2 x{in_flight}"] = lambda k=in_flight: run_raw(
            client, model, prompts, arguments.pairs, k, 2
        )

    print(
        f"{len(prompts)} demo prompts, {arguments.pairs} pairs ({arguments.pairs * 2} answers) per run, "
        f"temperature {settings.SAMPLING_TEMPERATURE}, top_p {settings.SAMPLING_TOP_P}, "
        f"max_tokens {settings.SAMPLING_MAX_TOKENS}; defaults: concurrency {settings.PAIR_GENERATION_CONCURRENCY}, "
        f"target {settings.PAIR_BUFFER_TARGET}"
    )
    run_raw(client, model, prompts, 2, 4, 1)  # warm-up: the server's first requests are slower
    runs: dict[str, list[Run]] = {name: [] for name in configurations}
    load: dict[str, list[float]] = {name: [] for name in configurations}
    for repeat in range(arguments.repeats):
        order = list(configurations) if repeat % 2 == 0 else list(reversed(configurations))
        for name in order:
            run = configurations[name]()
            runs[name].append(run)
            load[name].append(os.getloadavg()[0])
            print(
                f"  run {repeat + 1} {name:>14}: {run['seconds']:6.1f} s, {run['tokens']:6.0f} tokens, "
                f"{run['tokens'] / run['seconds']:6.1f} tokens/s, load {load[name][-1]:.1f}",
                flush=True,
            )
    results = [summarise(name, runs[name], load[name]) for name in configurations]
    raw = [result for result in results if result["name"].startswith("raw")]
    best = max(raw, key=lambda result: result["tokens_per_second"])
    print(
        f"\n{'configuration':>16} {'pairs/min':>10} {'(range)':>15} {'tokens/s':>9} {'(range)':>15} {'x best raw':>10}"
    )
    for result in results:
        result["ratio_to_best_raw_tokens"] = result["tokens_per_second"] / best["tokens_per_second"]
        result["ratio_to_best_raw_pairs"] = result["pairs_per_minute"] / best["pairs_per_minute"]
        low, high = result["pairs_per_minute_range"]
        token_low, token_high = result["tokens_per_second_range"]
        print(
            f"{result['name']:>16} {result['pairs_per_minute']:10.1f} {f'{low:.1f}-{high:.1f}':>15} "
            f"{result['tokens_per_second']:9.1f} {f'{token_low:.1f}-{token_high:.1f}':>15} "
            f"{result['ratio_to_best_raw_tokens']:10.2f}"
            + (
                f"  first pair stored after {result['first_pair_seconds']:.1f} s"
                if result["first_pair_seconds"]
                else ""
            )
        )
    all_loads = [value for values in load.values() for value in values]
    print(f"best raw: {best['name']}; load average (1 min) median {statistics.median(all_loads):.1f}")
    same, replayed = replay_lineage(client, arguments.replays)
    print(f"lineage: {same} of {replayed} stored answers came back identical when requested again with their record")
    if arguments.json:
        arguments.json.write_text(json.dumps({"results": results, "replay": [same, replayed]}, indent=2))
    client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
