"""Does the loop move the model, and do people get a say? Rounds of DPO on votes from simulated annotators.

    .venv/bin/python bench/loop.py [--rounds 3] [--votes 32] [--learning-rate 5e-5] [--epochs 1]
        [--prefer shorter-answers] [--profile noisy:0.8*4] [--gate offline|human|both] [--canary-votes 20]

Runs on a scratch database and var/ folder of its own, with its own vLLM server, Celery worker and training worker
(nothing of `make run` is touched). Before each round the simulated annotators (their taste is --prefer, their
profiles --profile, as in `simulate_annotators`) vote on fresh pairs from the serving version; then a round trains on
every vote so far. Per round it prints the mean length of the candidate's fresh answers to held-out prompts (the same
prompts and seeds every time) and their ratio to the base model measured in this run, the share of non-answers (the
"collapsed" check below), the held-out implicit-reward accuracy and the offline gate's verdict at its default
settings, the wall time of each phase, and, with --gate human or both, the canary: its head-to-head votes, the
candidate's win rate with its 95 % interval, and the decision.

Gate modes: offline (the default here) deploys every round whatever the offline gate says, to see where the loop
goes; human and both leave the decision to the canary (CANARY_PAIR_SHARE is 1 here, so every pair sampled while a
canary runs puts the candidate against the serving version; the bench calls the canary's periodic decision after
each batch of votes, as the beat worker would).

Collapsed: a round is called collapsed when at least half of its answers to the held-out prompts are non-answers
(annotate.annotation.simulation.is_non_answer: under 8 words, or not one of the prompt's key words).
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
    parser.add_argument("--votes", type=int, default=32, help="new simulated votes before each round")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the round's (ROUND_LEARNING_RATE)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the round's (ROUND_EPOCHS)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-tokens", type=int, default=128, help="answer length limit when sampling")
    parser.add_argument("--samples", type=int, default=2, help="seeded answers per held-out prompt when measuring")
    parser.add_argument("--prefer", default="shorter", help="the simulated annotators' taste (simulate_annotators)")
    parser.add_argument("--profile", action="append", default=[], metavar="KIND[:P][*COUNT]",
                        help="simulated annotators (simulate_annotators --profile); default one careful")  # fmt: skip
    parser.add_argument("--gate", choices=("offline", "human", "both"), default="offline")
    parser.add_argument("--canary-votes", type=int, default=20, help="CANARY_MIN_VOTES")
    parser.add_argument("--canary-target-win-rate", type=float, default=0.55, help="CANARY_TARGET_WIN_RATE")
    parser.add_argument("--seed", type=int, default=1, help="seeds the simulated annotators' choices")
    parser.add_argument("--prescore", action="store_true",
                        help="let the idle trainer prescore the round's pairs before the click, as beat would ask it "
                             "(annotate.rounds.prescore); its time is shown apart")  # fmt: skip
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
        CANARY_PAIR_SHARE="1",
        VLLM_TIMEOUT="900",  # two loop runs and a training round share two cores: answers can take minutes
        CANARY_MIN_VOTES=str(arguments.canary_votes),
        CANARY_TARGET_WIN_RATE=str(arguments.canary_target_win_rate),
    )
    if arguments.gate == "offline":
        # This measures where the loop moves the model, so every round deploys; the gate's verdict is still shown.
        os.environ.update(ROUND_GATE_MIN_ACCURACY="0", ROUND_GATE_TOLERANCE="1")
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "VLLM_BASE_URL"):
        os.environ.pop(name, None)
    return scratch


def prescore_wait(scratch: Path) -> float:
    """Ask the trainer to prescore (the task beat sends every ROUND_PRESCORE_INTERVAL) until it says it is up to
    date with the votes and the serving version; the seconds that took, all of it the trainer's idle time."""
    from django.conf import settings

    from annotate.broker import enqueue
    from annotate.models import Judgement, ModelVersion
    from annotate.rounds.prescore import PRESCORE_DIR, STATE_FILE

    started = time.monotonic()
    serving = ModelVersion.objects.serving()
    last = Judgement.objects.order_by("-id").values_list("id", flat=True).first()
    state = Path(settings.ROUND_DIR) / PRESCORE_DIR / STATE_FILE
    while time.monotonic() - started < 900:
        try:
            done = json.loads(state.read_text())
        except (OSError, ValueError):
            done = {}
        if serving is not None and done.get("version") == serving.pk and done.get("last_judgement") == last:
            return round(time.monotonic() - started, 1)
        enqueue("annotate.tasks.round_prescore")
        time.sleep(5)
    raise SystemExit(f"the trainer did not prescore in 900 s; see {scratch / 'trainer.log'}")


def start(name: str, command: list[str], scratch: Path) -> subprocess.Popen[bytes]:
    log = (scratch / f"{name}.log").open("wb")
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def answers(client: Any, model: str, prompts: list[Any], samples: int) -> list[tuple[Any, str, int]]:
    """Seeded answers: the same prompts and seeds for every model, so lengths compare like with like."""
    from concurrent.futures import ThreadPoolExecutor

    from django.conf import settings

    from annotate.sampling.generation import SamplingParams

    jobs = [(prompt, 7000 + index) for prompt in prompts for index in range(samples)]

    def one(job: tuple[Any, int]) -> tuple[Any, str, int]:
        prompt, seed = job
        sample = client.chat(model=model, messages=prompt.messages, params=SamplingParams.from_settings(seed))
        return prompt, sample.text, sample.completion_tokens or 0

    with ThreadPoolExecutor(max_workers=settings.PAIR_GENERATION_CONCURRENCY * 2) as pool:
        return list(pool.map(one, jobs))


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def measured(answered: list[tuple[Any, str, int]]) -> tuple[float, float]:
    """Mean tokens, and the share of non-answers (the "collapsed" check)."""
    from annotate.annotation.simulation import is_non_answer

    tokens = mean([tokens for _, _, tokens in answered])
    return tokens, mean([float(is_non_answer(text, prompt.last_user_message)) for prompt, text, _ in answered])


def simulate_votes(arguments: argparse.Namespace, count: int, seed: int) -> None:
    from django.core.management import call_command

    profiles = [option for spec in arguments.profile for option in ("--profile", spec)]
    call_command("simulate_annotators", "--prefer", arguments.prefer, "--count", str(count), "--sample",
                 "--seed", str(seed), *profiles, stdout=io.StringIO())  # fmt: skip


def leaderboard_print() -> list[dict[str, Any]]:
    """The leaderboard as the page shows it (Bradley-Terry on every head-to-head vote, the base model at 1000, 95 %
    bootstrap intervals), and for each version its record against its parent with the Wilson 95 % interval of its
    win rate (ties and both-bad votes half a win): "above its parent" needs that interval wholly above 0.5."""
    from annotate.leaderboard.selectors import leaderboard_standings
    from training.stats import wilson_interval

    board = leaderboard_standings()
    records = {
        (row.version.pk, column.pk): cell
        for row in board.matrix
        for column, cell in zip(board.matrix_columns, row.cells, strict=True)
    }
    rows = []
    print(f"\nLeaderboard ({board.votes} head-to-head votes, {board.bootstrap_rounds} bootstrap rounds):")
    for standing in board.standings:
        version, rating = standing.version, standing.rating
        row: dict[str, Any] = {"version": version.name, "status": version.status, "votes": standing.record.votes}
        row.update(rating=rating.rating, lower=rating.lower, upper=rating.upper)
        line = f"  {version.name} ({version.status}): {rating.rating:.1f} [{rating.lower:.1f}, {rating.upper:.1f}]"
        line += f", {standing.record.votes} votes"
        parent = version.parent
        record = records.get((version.pk, parent.pk)) if parent is not None else None
        if parent is not None and record is not None and record.votes:
            low, high = wilson_interval(record.wins + record.ties / 2, record.votes)
            row["against_parent"] = {"votes": record.votes, "wins": record.wins, "ties": record.ties}
            row["against_parent"].update(losses=record.losses, win_rate=record.win_rate, low=low, high=high)
            line += f"; against its parent {parent.name}: {record.wins}-{record.ties}-{record.losses}"
            line += f" (wins-ties-losses), win rate {record.win_rate:.3f} [{low:.3f}, {high:.3f}]"
            line += " (above its parent)" if low > 0.5 else ""
        print(line, flush=True)
        rows.append(row)
    return rows


def main() -> int:
    arguments = parse_arguments()
    scratch = configure_environment(arguments)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from annotate.models import Judgement, Prompt, TrainingRound
    from annotate.rounds import canary
    from annotate.rounds import services as rounds
    from annotate.rounds.runner import process_group_stop
    from annotate.sampling.generation import client_from_settings

    Status = TrainingRound.Status
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
    overrides: dict[str, Any] = {"batch_size": arguments.batch_size, "max_length": arguments.max_length,
                                 "beta": arguments.beta}  # fmt: skip
    if arguments.learning_rate is not None:
        overrides["learning_rate"] = arguments.learning_rate
    if arguments.epochs is not None:
        overrides["epochs"] = arguments.epochs
    results: dict[str, Any] = {"settings": vars(arguments) | {"output": None}, "rounds": []}
    try:
        client = client_from_settings()
        deadline = time.monotonic() + 600
        while not client.is_healthy():
            if time.monotonic() > deadline:
                raise SystemExit(f"vLLM did not start; see {scratch / 'vllm.log'}")
            time.sleep(2)
        fraction = settings.ROUND_HOLDOUT_FRACTION
        heldout = [prompt for prompt in Prompt.objects.all() if rounds.is_heldout(prompt, fraction)]
        serving = rounds.ModelVersion.objects.serving()
        assert serving is not None
        base_name = serving.name
        base_answers = answers(client, base_name, heldout, arguments.samples)
        baseline, base_non_answers = measured(base_answers)
        results.update(baseline_tokens=baseline, baseline_non_answers=base_non_answers)
        print(f"{len(heldout)} held-out prompts x {arguments.samples} seeds; base model: {baseline:.1f} tokens, "
              f"{base_non_answers:.0%} non-answers; gate {arguments.gate}; taste {arguments.prefer}, "
              f"annotators {arguments.profile or ['careful']}", flush=True)  # fmt: skip
        samples: dict[str, list[tuple[Any, str, int]]] = {"base": base_answers}
        for number in range(1, arguments.rounds + 1):
            started = time.monotonic()
            simulate_votes(arguments, arguments.votes, arguments.seed * 1000 + number)
            votes_seconds = time.monotonic() - started
            prescore_seconds = prescore_wait(scratch) if arguments.prescore else None
            clicked = time.monotonic()
            training_round = rounds.round_start(
                trigger=TrainingRound.Trigger.COMMAND, overrides=overrides, gate_mode=arguments.gate
            )
            while training_round.is_active and training_round.status != Status.CANARY:
                time.sleep(1)
                training_round.refresh_from_db()
            ready_seconds = time.monotonic() - clicked  # click to serving (offline) or to the canary's start
            if training_round.result_version is None:
                raise SystemExit(f"round {number} ended {training_round.status}: {training_round.error}")
            candidate = training_round.result_version
            # While a canary runs its candidate is loaded; in offline mode it serves by now.
            candidate_answers = answers(client, candidate.name, heldout, arguments.samples)
            tokens, non_answers = measured(candidate_answers)
            canary_seconds, batch = 0.0, 0
            if training_round.status == Status.CANARY:
                canary_started = time.monotonic()
                while training_round.status == Status.CANARY:
                    batch += 1
                    simulate_votes(arguments, 6, arguments.seed * 1000 + number * 100 + batch)
                    canary.canaries_decide()
                    training_round.refresh_from_db()
                    # The sequential test may ask for up to CANARY_MAX_VOTES (200) votes, each pair sampled on CPU.
                    if time.monotonic() - canary_started > 4 * 3600:
                        raise SystemExit(f"round {number}: the canary has not decided in four hours")
                while training_round.is_active:  # a promoted canary deploys
                    time.sleep(1)
                    training_round.refresh_from_db()
                canary_seconds = time.monotonic() - canary_started
            if training_round.status == Status.SERVING:
                samples[f"round {number}"] = candidate_answers
            decided = training_round.canary_decision
            evaluation = training_round.evaluation
            phases = training_round.phase_seconds
            row = {
                "round": number,
                "votes": Judgement.objects.count(),
                "train_pairs": training_round.train_pairs,
                "heldout_pairs": training_round.heldout_pairs,
                "accuracy": evaluation.get("accuracy"),
                "parent_accuracy": evaluation.get("parent_accuracy"),
                "offline_gate": evaluation.get("gate", {}),
                "mean_tokens": tokens,
                "ratio_to_base": tokens / baseline,
                "non_answers": non_answers,
                "collapsed": non_answers >= 0.5,
                "canary": {key: decided.get(key) for key in ("decision", "reason", "votes", "win_rate", "low", "high")}
                if decided
                else None,
                "status": training_round.status,
                "seconds": {
                    "votes": round(votes_seconds, 1),
                    "click_to_ready": round(ready_seconds, 1),
                    "prescore_seconds": prescore_seconds,
                    **phases,
                    "canary": round(canary_seconds, 1),
                },
            }
            results["rounds"].append(row)
            if arguments.output:  # kept round by round: a run stopped later still leaves what it measured
                arguments.output.write_text(json.dumps(results, indent=2))
            ready = "serving" if arguments.gate == "offline" else "canary"
            accuracy = row["accuracy"] if row["accuracy"] is not None else float("nan")
            parent = row["parent_accuracy"] if row["parent_accuracy"] is not None else float("nan")
            print(f"\nround {number}: {row['votes']} votes so far, {row['train_pairs']} train / "
                  f"{row['heldout_pairs']} held-out pairs; held-out accuracy {accuracy:.3f} (parent {parent:.3f}); "
                  f"offline gate at its defaults: {'pass' if row['offline_gate'].get('promote') else 'fail'} "
                  f"({row['offline_gate'].get('reason')})\n"
                  f"  candidate: {tokens:.1f} tokens ({tokens / baseline:.2f}x base), {non_answers:.0%} non-answers"
                  f"{' (collapsed)' if row['collapsed'] else ''}; round ended {training_round.status}\n"
                  f"  wall time (s): votes {votes_seconds:.0f}, "
                  + (f"prescoring before the click {prescore_seconds:.0f}, " if prescore_seconds is not None else "")
                  + f"click to {ready} {ready_seconds:.0f} (phases {phases})", flush=True)  # fmt: skip
            if row["canary"]:
                c = row["canary"]
                print(f"  canary: {c['votes']} head-to-head votes, win rate {c['win_rate']:.3f} "
                      f"[{c['low']:.3f}, {c['high']:.3f}]: {c['decision']} ({c['reason']}), "
                      f"{canary_seconds:.0f} s", flush=True)  # fmt: skip
        results["leaderboard"] = leaderboard_print()
        print("\nSamples (seed 7000): the base model, then each serving round's candidate:")
        for index in range(0, min(2, len(heldout)) * arguments.samples, arguments.samples):
            prompt = base_answers[index][0]
            print(f"\n### {prompt.last_user_message}")
            shown = {name: answered[index][1] for name, answered in samples.items()}
            for name, text in shown.items():
                print(f"--- {name}:\n{text}")
            results.setdefault("samples", []).append({"prompt": prompt.last_user_message, **shown})
    finally:
        for process in processes:
            process_group_stop(process)
    if arguments.output:
        arguments.output.write_text(json.dumps(results, indent=2))
    print(f"\nlogs and data: {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
