"""A refill's answers on a slow model server: read whole (the client before) against streamed (the client now).

    # a vLLM server first (`manage.py serve_model`, about 40 s to be ready), then:
    .venv/bin/python -m bench.stream_timeout --url http://127.0.0.1:8100 [--requests 32] [--timeout 120] [--repeats 1]

Both sides send the same --requests chat requests at once (the first turn of each MT-Bench question in
../shared/data, --max-tokens each, seed 1000 + i, the refill's sampling otherwise), with the same --timeout:

- `whole`: plain `POST /v1/chat/completions` read whole, as `ModelServerClient.chat` did before: the timeout runs out
  when an answer takes longer than that to write, however steadily the server works;
- `streamed`: `ModelServerClient.chat` as it is now: asked for as a stream and read whole, the timeout bounds the
  server's silence.

The sides take turns (--repeats rounds), each printing answers stored, tokens, the wall time and the machine's load
average; the last line is the ratio of answers stored, streamed to whole, per round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = REPO.parent / "shared" / "data" / "mt_bench_questions.jsonl"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8100", help="a running vLLM server")
    parser.add_argument("--requests", type=int, default=32, help="requests sent at once (the refill's default: 32)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (VLLM_TIMEOUT's default: 120)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    os.environ.setdefault("SECRET_KEY", "bench-only")
    os.environ["DJANGO_SETTINGS_MODULE"] = "annotate.settings"
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    import httpx

    from annotate.sampling.generation import ModelServerClient, SamplingParams

    with ModelServerClient(arguments.url) as client:
        model = client.served_models()[0]
    with QUESTIONS.open() as lines:
        prompts = [json.loads(line)["turns"][0] for line in lines][: arguments.requests]
    if len(prompts) < arguments.requests:
        raise SystemExit(f"{QUESTIONS} holds only {len(prompts)} questions")

    def params(number: int) -> SamplingParams:
        return SamplingParams(temperature=0.7, top_p=0.9, max_tokens=arguments.max_tokens, seed=1000 + number)

    def whole(number: int) -> int:
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompts[number]}], "n": 1}
        body |= asdict(params(number))
        response = httpx.post(f"{arguments.url}/v1/chat/completions", json=body, timeout=arguments.timeout)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])

    def streamed(number: int) -> int:
        with ModelServerClient(arguments.url, timeout=arguments.timeout) as client:
            messages = [{"role": "user", "content": prompts[number]}]
            return client.chat(model=model, messages=messages, params=params(number)).completion_tokens or 0

    def run(name: str, ask: Any) -> int:
        def attempt(number: int) -> int | None:
            try:
                return int(ask(number))
            except Exception:  # a timeout, or the engine gone: counted as an answer not stored
                return None

        load = os.getloadavg()[0]
        started = time.monotonic()
        with ThreadPoolExecutor(arguments.requests) as threads:
            tokens = list(threads.map(attempt, range(arguments.requests)))
        stored = [count for count in tokens if count is not None]
        print(
            f"{name:9} stored {len(stored):3}/{arguments.requests}  tokens {sum(stored):6}  "
            f"wall {time.monotonic() - started:6.1f} s  load {load:.2f} -> {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        return len(stored)

    ratios = []
    for _ in range(arguments.repeats):
        stored_whole = run("whole", whole)
        time.sleep(5)  # the server drops the timed-out requests
        stored_streamed = run("streamed", streamed)
        ratios.append(f"{stored_streamed}/{stored_whole}")
    print(f"answers stored, streamed/whole, per round: {', '.join(ratios)} (timeout {arguments.timeout:g} s)")


if __name__ == "__main__":
    main()
