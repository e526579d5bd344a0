"""Benchmark: one DPO round on Anthropic HH-RLHF (harmless) votes, held-out implicit-reward accuracy before and after.

Rows 1-800 of ../shared/data/hh_rlhf_harmless_dev.jsonl are the training pool, rows 801-1000 the held-out votes.
The defaults are the small CPU setting (2 cores: 400 pairs, max_length 192, 1 epoch; about 17 minutes on an idle
machine, `--train-pairs 300` for about 14); every size is an argument, so a GPU runs the full setting:

    .venv/bin/python -m bench.hh_rlhf_cpu
    python -m bench.hh_rlhf_cpu --train-pairs 800 --max-length 1024 --epochs 2
    .venv/bin/python -m bench.hh_rlhf_cpu --train-pairs 300 --train-pool 700 --eval-pairs 300 --cpu-bf16 off

Pairs whose prompt alone fills max_length are dropped (TRL drops them from training; the evaluation skips them),
so a short max_length also trains and evaluates on fewer, shorter conversations.

Accuracy is the fraction of held-out pairs whose chosen answer earns the higher implicit reward
beta * (log pi(y|x) - log pi_base(y|x)); the base model against itself ties everywhere and scores 0.5 by
construction. The log-likelihood accuracy (log pi(chosen) > log pi(rejected), no reference) is printed beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.config import RoundConfig
from training.data import PreferenceRow, hh_rlhf_to_trl, write_pairs
from training.dpo import train_round
from training.evaluate import (
    POLICY_ADAPTER,
    active_adapter,
    evaluate_pairs,
    load_model,
    pair_logprobs,
    reward_accuracy,
)
from training.model_prep import prepare_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh_rlhf_harmless_dev.jsonl"
DEFAULT_MODEL = REPO / "var" / "models" / "smollm2-135m-instruct"
TRAIN_POOL = 800  # rows 1-800 train, the rest is held out


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="prepared base model directory")
    parser.add_argument("--output-dir", type=Path, help="default: var/bench/hh-rlhf-<time>")
    parser.add_argument("--train-pairs", type=int, default=400, help=f"first N of the {TRAIN_POOL} training rows")
    parser.add_argument("--eval-pairs", type=int, default=200, help="first N of the held-out rows")
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=RoundConfig.learning_rate)
    parser.add_argument("--beta", type=float, default=RoundConfig.beta)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-pool", type=int, default=TRAIN_POOL,
                        help="rows 1-N are the training pool, the rest held out (700 leaves 300 held out)")  # fmt: skip
    parser.add_argument("--cpu-bf16", choices=("on", "off"), help="bf16 autocast on the CPU (default: the round's)")
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.train_pairs <= arguments.train_pool or arguments.eval_pairs < 1:
        parser.error(f"--train-pairs must be in [1, {arguments.train_pool}] and --eval-pairs >= 1")
    return arguments


def convert_rows(lines: Sequence[str]) -> tuple[list[PreferenceRow], int]:
    """The convertible rows among `lines`, and how many were left out (identical answers, differing prompts)."""
    pairs = []
    for line in lines:
        try:
            pairs.append(hh_rlhf_to_trl(json.loads(line)))
        except ValueError:
            continue
    return pairs, len(lines) - len(pairs)


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    lines = [line for line in arguments.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    train_rows, train_skipped = convert_rows(lines[: arguments.train_pool][: arguments.train_pairs])
    heldout, heldout_skipped = convert_rows(lines[arguments.train_pool :][: arguments.eval_pairs])
    output_dir = arguments.output_dir or REPO / "var" / "bench" / time.strftime("hh-rlhf-%Y%m%d-%H%M%S")
    output_dir.mkdir(parents=True, exist_ok=True)
    write_pairs(train_rows, output_dir / "train.jsonl")
    base_model_dir = prepare_model(str(arguments.model), arguments.model)
    config = RoundConfig(
        base_model_dir=str(base_model_dir),
        output_dir=str(output_dir / "round"),
        beta=arguments.beta,
        learning_rate=arguments.learning_rate,
        epochs=arguments.epochs,
        max_steps=arguments.max_steps,
        batch_size=arguments.batch_size,
        max_length=arguments.max_length,
        seed=arguments.seed,
        **({} if arguments.cpu_bf16 is None else {"cpu_bf16": arguments.cpu_bf16 == "on"}),
    )

    started = time.monotonic()
    trained = train_round(config, output_dir / "train.jsonl")
    train_seconds = time.monotonic() - started

    started = time.monotonic()
    model, tokenizer = load_model(base_model_dir, trained.adapter_dir)
    with active_adapter(model, None):
        base = pair_logprobs(model, tokenizer, heldout, arguments.max_length, arguments.batch_size)
    with active_adapter(model, POLICY_ADAPTER):
        policy = pair_logprobs(model, tokenizer, heldout, arguments.max_length, arguments.batch_size)
    evaluate_seconds = time.monotonic() - started

    return {
        "setting": {
            **{key: value for key, value in dataclasses.asdict(config).items() if key != "output_dir"},
            "train_rows": len(train_rows),
            "train_rows_skipped": train_skipped,
            "heldout_rows": len(heldout),
            "heldout_rows_skipped": heldout_skipped,
        },
        "train": {
            "pairs": trained.pairs,
            "steps": trained.steps,
            "seconds": round(train_seconds, 1),
            "final_loss": trained.final_metrics.get("loss"),
            "tokens_per_second": trained.final_metrics.get("tokens_per_second"),
        },
        "heldout": {
            "scored": len(base.kept),
            "base_implicit_reward": dataclasses.asdict(evaluate_pairs(base, base, config.beta, len(heldout))),
            "trained_implicit_reward": dataclasses.asdict(evaluate_pairs(policy, base, config.beta, len(heldout))),
            "base_likelihood_accuracy": reward_accuracy(base.chosen, base.rejected).accuracy,
            "trained_likelihood_accuracy": reward_accuracy(policy.chosen, policy.rejected).accuracy,
            "seconds": round(evaluate_seconds, 1),
        },
        "output_dir": str(output_dir),
    }


def main(argv: Sequence[str] | None = None) -> int:
    report = run(parse_arguments(argv))
    (Path(report["output_dir"]) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
