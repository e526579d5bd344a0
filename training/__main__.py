"""Command line: `python -m training train|evaluate|compare|round ...` (also under `torchrun`, `accelerate launch`).

    python -m training train --config CONFIG.json --data PAIRS.jsonl
    python -m training evaluate --model DIR [--adapter DIR] [--reference-adapter DIR] --data HELDOUT.jsonl \
        --beta 0.1 --output eval.json
    python -m training compare --model DIR --candidate DIR [--parent DIR] --data HELDOUT.jsonl --beta 0.1 \
        --output compare.json [--reference-cache FILE]
    python -m training round --config CONFIG.json --data PAIRS.jsonl --heldout HELDOUT.jsonl \
        --evaluation-output compare.json [--reference-cache FILE]
    python -m training prescore --config CONFIG.json --data PAIRS.jsonl [--heldout HELDOUT.jsonl] \
        --reference-cache FILE --seconds 15 --output report.json

`compare` scores a candidate adapter and its parent (another adapter, or the base model when --parent is left out)
on the same held-out pairs against the same fixed reference, the base model, so the two numbers compare. `round`
trains like `train`, then scores like `compare` in the same process (the model is loaded once). Both write
{"reference": "base", "interval": ..., "models": {"candidate": {...}, "parent": {...}}, ...}, each model with
accuracy (ties as half), accuracy_low/accuracy_high (95 % Wilson score interval), mean_margin, count, skipped.
The base model's log-probabilities of the held-out pairs are cached in --reference-cache across runs, and so are the
training reference's log-probabilities of the training pairs (`train` and `round`). `prescore` fills that cache
ahead of a round, for at most --seconds: what a trainer does while it waits for the next round.

`warm` imports torch and TRL and loads a base model once, then runs each command it reads on stdin in a forked child
(training.warm): what a trainer keeps between rounds, so a round does not start by importing and loading.

`train` and `round` also run as several processes, `torchrun --standalone --nproc-per-node N -m training round ...`:
they train one adapter together (data-parallel), and rank 0 alone writes it, scores it and reports (training.dpo).

Exit status 0 on success, 2 on input the user can fix (the message says what), 1 on anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.config import RoundConfig
from training.data import load_pairs

STARTED = time.monotonic()  # before torch and TRL are imported: a round's "start" phase is mostly their import

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = {
            "train": train_command,
            "evaluate": evaluate_command,
            "compare": compare_command,
            "round": round_command,
            "prescore": prescore_command,
            "warm": warm_command,
        }
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="DPO rounds on preference pairs.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one DPO round (a LoRA adapter)")
    train.add_argument("--config", type=Path, required=True, help="JSON file holding RoundConfig fields")
    train.add_argument("--data", type=Path, required=True, help="JSON Lines preference pairs in TRL's format")
    train.add_argument("--reference-cache", type=Path, help="JSON file of reference log-probs, reused")

    evaluate = commands.add_parser("evaluate", help="implicit-reward accuracy on held-out pairs")
    evaluate.add_argument("--model", type=Path, required=True, help="base model directory")
    evaluate.add_argument("--adapter", type=Path, help="policy adapter (default: the base model itself)")
    evaluate.add_argument("--reference-adapter", type=Path, help="reference adapter (default: the base model)")
    evaluate.add_argument("--data", type=Path, required=True, help="JSON Lines held-out preference pairs")
    evaluate.add_argument("--beta", type=float, required=True, help="the beta the policy was trained with")
    evaluate.add_argument("--output", type=Path, required=True, help="where to write the result as JSON")
    evaluate.add_argument("--max-length", type=int, default=RoundConfig.max_length)
    evaluate.add_argument("--batch-size", type=int, default=RoundConfig.batch_size)

    compare = commands.add_parser("compare", help="candidate and parent against the base model on held-out pairs")
    compare.add_argument("--model", type=Path, required=True, help="base model directory (the fixed reference)")
    compare.add_argument("--candidate", type=Path, required=True, help="the candidate adapter")
    compare.add_argument("--parent", type=Path, help="the parent adapter (default: the base model itself)")
    compare.add_argument("--data", type=Path, required=True, help="JSON Lines held-out preference pairs")
    compare.add_argument("--beta", type=float, required=True, help="the beta the candidate was trained with")
    compare.add_argument("--output", type=Path, required=True, help="where to write the result as JSON")
    compare.add_argument("--max-length", type=int, default=RoundConfig.max_length)
    compare.add_argument("--batch-size", type=int, default=RoundConfig.batch_size)
    compare.add_argument("--reference-cache", type=Path, help="JSON file of the base model's log-probs, reused")

    round_ = commands.add_parser("round", help="train one round, then compare it with its parent in one process")
    round_.add_argument("--config", type=Path, required=True, help="JSON file holding RoundConfig fields")
    round_.add_argument("--data", type=Path, required=True, help="JSON Lines preference pairs to train on")
    round_.add_argument("--heldout", type=Path, required=True, help="JSON Lines held-out preference pairs")
    round_.add_argument("--evaluation-output", type=Path, required=True, help="where to write the comparison")
    round_.add_argument("--reference-cache", type=Path, help="JSON file of the base model's log-probs, reused")

    prescore = commands.add_parser("prescore", help="score a coming round's reference log-probs into the cache")
    prescore.add_argument("--config", type=Path, required=True, help="JSON file holding the round's RoundConfig")
    prescore.add_argument("--data", type=Path, required=True, help="JSON Lines preference pairs it would train on")
    prescore.add_argument("--heldout", type=Path, help="JSON Lines held-out preference pairs it would score")
    prescore.add_argument("--reference-cache", type=Path, required=True, help="JSON file the log-probs go to")
    prescore.add_argument("--seconds", type=float, default=15.0, help="stop scoring after about this long")
    prescore.add_argument("--output", type=Path, required=True, help="where to write what was done, as JSON")

    warm = commands.add_parser("warm", help="import and load once, then fork a child per command read on stdin")
    warm.add_argument("--model", type=Path, help="base model directory to load once (default: none)")
    return parser


def train_command(args: argparse.Namespace) -> int:
    config = RoundConfig.from_json(_read_text(args.config, "config"))
    _require_file(args.data, "data")
    from training.dpo import is_main_process, train_round  # deferred: torch and TRL take seconds to import
    from training.evaluate import ReferenceCache

    result = train_round(config, args.data, ReferenceCache(args.reference_cache))
    if not is_main_process():  # one of several processes of a launcher: rank 0 reports
        return 0
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


def prescore_command(args: argparse.Namespace) -> int:
    config = RoundConfig.from_json(_read_text(args.config, "config"))
    rows = load_pairs(_require_file(args.data, "data"))
    heldout = load_pairs(_require_file(args.heldout, "heldout")) if args.heldout is not None else []
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    from training.dpo import prescore
    from training.evaluate import ReferenceCache

    report = prescore(config, rows, heldout, ReferenceCache(args.reference_cache), args.seconds)
    report["seconds"] = round(time.monotonic() - STARTED, 3)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def warm_command(args: argparse.Namespace) -> int:
    from training.warm import serve

    # Replies go to the starter through the original stdout; anything else printed here goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return serve(args.model and _require_directory(args.model, "model"), sys.stdin.fileno(), replies)


def compare_command(args: argparse.Namespace) -> int:
    _require_directory(args.model, "model")
    adapters = {"candidate": args.candidate, "parent": args.parent}
    for name, directory in adapters.items():
        if directory is not None and not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{name} adapter {directory} holds no adapter_config.json")
    rows = load_pairs(_require_file(args.data, "data"))
    from training.evaluate import ReferenceCache, compare_against_base, load_model, model_cache_key

    cache = ReferenceCache(args.reference_cache)
    named = {name: directory for name, directory in adapters.items() if directory is not None}
    model, tokenizer = load_model(args.model, named_adapters=named)
    results = compare_against_base(
        model,
        tokenizer,
        model_cache_key(args.model),
        rows,
        {name: name if directory is not None else None for name, directory in adapters.items()},
        args.beta,
        args.max_length,
        args.batch_size,
        cache,
    )
    report = comparison_report(results, cache, args.beta, args.max_length, args.data)
    report.update(model=str(args.model), candidate=str(args.candidate), parent=_optional_path(args.parent))
    _write_report(args.output, report)
    return 0


def round_command(args: argparse.Namespace) -> int:
    config = RoundConfig.from_json(_read_text(args.config, "config"))
    _require_file(args.data, "data")
    _require_file(args.heldout, "heldout")
    from training.dpo import train_and_evaluate_round
    from training.evaluate import ReferenceCache
    from training.warm import WARM

    cache = ReferenceCache(args.reference_cache)
    result, results = train_and_evaluate_round(config, args.data, args.heldout, cache)
    if results is None:  # one of several processes of a launcher: rank 0 scores and reports
        return 0
    print(f"trained {result.steps} steps on {result.pairs} pairs in {result.runtime_seconds:.1f} s")
    print(f"adapter: {result.adapter_dir}")
    # The cache's counts are the held-out pairs' here; the training pairs' are the trainer's own
    cache.hits -= result.reference_hits
    cache.misses -= result.reference_misses
    report = comparison_report(results, cache, config.beta, config.max_length, args.heldout)
    report.update(model=config.base_model_dir, candidate=result.adapter_dir, parent=config.parent_adapter_dir)
    report["training_reference"] = {"hits": result.reference_hits, "misses": result.reference_misses}
    # Where the process's time went; what the phases leave is importing torch and TRL (and writing the adapter).
    report["seconds"] = {
        "process": round(time.monotonic() - STARTED, 3),
        "load": result.load_seconds,
        "train": round(result.runtime_seconds, 3),
        "evaluate": result.evaluate_seconds,
    }
    report["warm_start"] = dict(WARM)  # forked from `python -m training warm`, and on the model it had read
    _write_report(args.evaluation_output, report)
    return 0


def comparison_report(
    results: Mapping[str, Any], cache: Any, beta: float, max_length: int, data: Path
) -> dict[str, Any]:
    return {
        "reference": "base",
        "interval": "95 % Wilson score interval of the accuracy, a tie counted as half a win",
        "models": {name: dataclasses.asdict(result) for name, result in results.items()},
        "beta": beta,
        "max_length": max_length,
        "data": str(data),
        "reference_cache": {"path": _optional_path(cache.path), "hits": cache.hits, "misses": cache.misses},
    }


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    for name, result in report["models"].items():
        print(
            f"{name}: accuracy {result['accuracy']:.3f} [{result['accuracy_low']:.3f}, {result['accuracy_high']:.3f}],"
            f" mean margin {result['mean_margin']:.4f} on {result['count']} pairs"
        )
    print(f"written to {path}")


def _optional_path(path: Path | str | None) -> str | None:
    return None if path is None else str(path)


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
