"""Command line: `python -m training train ...` and `python -m training evaluate ...` (also under `accelerate launch`).

    python -m training train --config CONFIG.json --data PAIRS.jsonl
    python -m training evaluate --model DIR [--adapter DIR] [--reference-adapter DIR] --data HELDOUT.jsonl \
        --beta 0.1 --output eval.json

Exit status 0 on success, 2 on input the user can fix (the message says what), 1 on anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from training.config import RoundConfig
from training.data import load_pairs

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return train_command(args)
        return evaluate_command(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="DPO rounds on preference pairs.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one DPO round (a LoRA adapter)")
    train.add_argument("--config", type=Path, required=True, help="JSON file holding RoundConfig fields")
    train.add_argument("--data", type=Path, required=True, help="JSON Lines preference pairs in TRL's format")

    evaluate = commands.add_parser("evaluate", help="implicit-reward accuracy on held-out pairs")
    evaluate.add_argument("--model", type=Path, required=True, help="base model directory")
    evaluate.add_argument("--adapter", type=Path, help="policy adapter (default: the base model itself)")
    evaluate.add_argument("--reference-adapter", type=Path, help="reference adapter (default: the base model)")
    evaluate.add_argument("--data", type=Path, required=True, help="JSON Lines held-out preference pairs")
    evaluate.add_argument("--beta", type=float, required=True, help="the beta the policy was trained with")
    evaluate.add_argument("--output", type=Path, required=True, help="where to write the result as JSON")
    evaluate.add_argument("--max-length", type=int, default=RoundConfig.max_length)
    evaluate.add_argument("--batch-size", type=int, default=RoundConfig.batch_size)
    return parser


def train_command(args: argparse.Namespace) -> int:
    config = RoundConfig.from_json(_read_text(args.config, "config"))
    _require_file(args.data, "data")
    from training.dpo import train_round  # deferred: torch and TRL take seconds to import

    result = train_round(config, args.data)
    # The machine-readable outcome is result.json; stdout also carries the trainer's own log lines.
    print(f"trained {result.steps} steps on {result.pairs} pairs in {result.runtime_seconds:.1f} s")
    print(f"adapter: {result.adapter_dir}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    _require_directory(args.model, "model")
    for name, directory in (("adapter", args.adapter), ("reference adapter", args.reference_adapter)):
        if directory is not None and not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{name} {directory} holds no adapter_config.json")
    rows = load_pairs(_require_file(args.data, "data"))
    from training.evaluate import implicit_reward_accuracy

    result = implicit_reward_accuracy(
        args.model, args.adapter, args.reference_adapter, rows, args.beta, args.max_length, args.batch_size
    )
    report = {
        **dataclasses.asdict(result),
        "beta": args.beta,
        "max_length": args.max_length,
        "model": str(args.model),
        "adapter": None if args.adapter is None else str(args.adapter),
        "reference_adapter": None if args.reference_adapter is None else str(args.reference_adapter),
        "data": str(args.data),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"accuracy {result.accuracy:.3f}, mean margin {result.mean_margin:.4f} on {result.count} pairs")
    print(f"written to {args.output}")
    return 0


def _read_text(path: Path, what: str) -> str:
    return _require_file(path, what).read_text(encoding="utf-8")


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return path


def _require_directory(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory {path} does not exist")
    return path


if __name__ == "__main__":
    sys.exit(main())
