"""Does the loop move the model? Rounds of DPO on votes from simulated annotators who prefer shorter answers.

    .venv/bin/python bench/loop.py [--rounds 3] [--votes 40] [--learning-rate 2e-4] [--epochs 2]

Runs on a scratch database and var/ folder of its own, with its own vLLM server, Celery worker and training worker
(nothing of `make run` is touched). Per round it prints the mean length of fresh answers to held-out prompts (the
same prompts and seeds every time, and their ratio to the base model measured in this run), the held-out
implicit-reward accuracy, and the wall time of each phase; at the end, before/after answers to two prompts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--votes", type=int, default=40, help="new simulated votes before each round")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-tokens", type=int, default=160, help="answer length limit when sampling")
    parser.add_argument("--samples", type=int, default=2, help="seeded answers per held-out prompt when measuring")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    return parser.parse_args()


def configure_environment(arguments: argparse.Namespace) -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="pairloop-bench-loop-"))
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        PAIRLOOP_VAR_DIR=str(scratch),
        BASE_MODEL_DIR=str(REPO / "var" / "models" / "smollm2-135m-instruct"),  # converted once, shared
        SECRET_KEY="bench-only",
        DJANGO_SETTINGS_MODULE="annotate.settings",
        VLLM_PORT=str(free_port()),
        CELERY_TASK_DEFAULT_QUEUE=queue,
        CELERY_TRAINING_QUEUE=f"{queue}-training",
        SAMPLING_MAX_TOKENS=str(arguments.max_tokens),
        PAIR_BUFFER_TARGET="4",
        ROUND_MIN_TRAIN_PAIRS="8",
        # This measures where the loop moves the model, so every round deploys; the gate's verdict is still shown.
        ROUND_GATE_MIN_ACCURACY="0",
        ROUND_GATE_TOLERANCE="1",
    )
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "VLLM_BASE_URL"):
        os.environ.pop(name, None)
    return scratch


def start(name: str, command: list[str], scratch: Path) -> subprocess.Popen[bytes]:
    log = (scratch / f"{name}.log").open("wb")
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def answers(client: Any, model: str, prompts: list[Any], samples: int) -> list[tuple[Any, str, int]]:
    """Seeded answers: the same prompts and seeds for every model, so lengths compare like with like."""
    from concurrent.futures import ThreadPoolExecutor

    from django.conf import settings

    from annotate.generation import SamplingParams

    jobs = [(prompt, 7000 + index) for prompt in prompts for index in range(samples)]

    def one(job: tuple[Any, int]) -> tuple[Any, str, int]:
        prompt, seed = job
        sample = client.chat(model=model, messages=prompt.messages, params=SamplingParams.from_settings(seed))
        return prompt, sample.text, sample.completion_tokens or 0

    with ThreadPoolExecutor(max_workers=settings.PAIR_GENERATION_CONCURRENCY * 2) as pool:
        return list(pool.map(one, jobs))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main() -> int:
    arguments = parse_arguments()
    scratch = configure_environment(arguments)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    from annotate import rounds
    from annotate.generation import client_from_settings
    from annotate.models import Judgement, Prompt, TrainingRound
    from annotate.rounds import process_group_stop

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)
    call_command("seed_demo", stdout=io.StringIO())
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "annotate", "worker", "--loglevel", "INFO", "--pool", "solo"]
    processes = [
        start("vllm", [python, "manage.py", "serve_model"], scratch),
        start("worker", [*celery, "--queues", os.environ["CELERY_TASK_DEFAULT_QUEUE"], "-n", "w@%h"], scratch),
        start("trainer", [*celery, "--queues", os.environ["CELERY_TRAINING_QUEUE"], "-n", "t@%h"], scratch),
    ]
    results: dict[str, Any] = {"settings": vars(arguments) | {"output": None}, "rounds": []}
    try:
        client = client_from_settings()
        deadline = time.monotonic() + 600
        while not client.is_healthy():
            if time.monotonic() > deadline:
                raise SystemExit(f"vLLM did not start; see {scratch / 'vllm.log'}")
            time.sleep(2)
        heldout = [prompt for prompt in Prompt.objects.all() if rounds._is_heldout(prompt)]
        base_name = rounds.ModelVersion.objects.serving().name
        base_answers = answers(client, base_name, heldout, arguments.samples)
        baseline = mean([tokens for _, _, tokens in base_answers])
        print(f"{len(heldout)} held-out prompts x {arguments.samples} seeds; base model: {baseline:.1f} tokens")
        print(f"{'round':>5} {'votes':>5} {'train':>5} {'held':>4} {'accuracy':>8} {'tokens':>7} {'ratio':>6}  "
              "wall time (s): votes / prepare / train / evaluate / deploy")  # fmt: skip
        latest_answers = base_answers
        for number in range(1, arguments.rounds + 1):
            started = time.monotonic()
            call_command("simulate_annotators", "--prefer", "shorter", "--count", str(arguments.votes), "--sample",
                         stdout=io.StringIO())  # fmt: skip
            votes_seconds = time.monotonic() - started
            training_round = rounds.round_start(
                trigger=TrainingRound.Trigger.COMMAND,
                overrides={"learning_rate": arguments.learning_rate, "epochs": arguments.epochs,
                           "batch_size": arguments.batch_size, "max_length": arguments.max_length,
                           "beta": arguments.beta},
            )  # fmt: skip
            while training_round.is_active:
                time.sleep(3)
                training_round.refresh_from_db()
            if training_round.status != TrainingRound.Status.SERVING:
                raise SystemExit(f"round {number} ended {training_round.status}: {training_round.error}")
            latest_answers = answers(client, training_round.result_version.name, heldout, arguments.samples)
            tokens = mean([tokens for _, _, tokens in latest_answers])
            phases = training_round.phase_seconds
            row = {
                "round": number,
                "votes": Judgement.objects.count(),
                "train_pairs": training_round.train_pairs,
                "heldout_pairs": training_round.heldout_pairs,
                "accuracy": training_round.evaluation.get("accuracy"),
                "gate": training_round.evaluation.get("gate", {}).get("reason"),
                "mean_tokens": tokens,
                "ratio_to_base": tokens / baseline,
                "seconds": {"votes": round(votes_seconds, 1), **phases},
            }
            results["rounds"].append(row)
            print(f"{number:>5} {row['votes']:>5} {row['train_pairs']:>5} {row['heldout_pairs']:>4} "
                  f"{row['accuracy']:>8.3f} {tokens:>7.1f} {tokens / baseline:>6.2f}  "
                  f"{votes_seconds:.0f} / {phases.get('prepare')} / {phases.get('train')} / "
                  f"{phases.get('evaluate')} / {phases.get('deploy')}")  # fmt: skip
        print("\nSamples (seed 7000), base model, then after the last round:")
        for (prompt, before, _), (_, after, _) in list(zip(base_answers, latest_answers, strict=True))[
            :: arguments.samples
        ][:2]:
            print(f"\n### {prompt.last_user_message}\n--- before:\n{before}\n--- after:\n{after}")
            results.setdefault("samples", []).append(
                {"prompt": prompt.last_user_message, "before": before, "after": after}
            )
        results["baseline_tokens"] = baseline
    finally:
        for process in processes:
            process_group_stop(process)
    if arguments.output:
        arguments.output.write_text(json.dumps(results, indent=2))
    print(f"\nlogs and data: {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
