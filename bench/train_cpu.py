"""Benchmark: a DPO round's training speed, (a) TRL's DPOTrainer at its defaults against (b) the project's round.

Both train the same model, LoRA shape, pairs, batch size, learning rate, epochs and max_length. (a) is TRL's
DPOTrainer with everything else at TRL's defaults (on the CPU bf16 off, which TRL's default would refuse there);
that was the project's round before the speed levers. (b) is `training.dpo.run_training` with the RoundConfig
defaults (reference log-probs computed once, batches grouped by length, gradient checkpointing off, bf16 autocast on
a CPU that has bf16 arithmetic, only the answer tokens scored by the LM head). Other variants switch one lever of (b):
`round:precompute_reference=false`, `round:cpu_bf16=false`, `round:gradient_checkpointing=true`,
`round:group_by_length=false`, `round:torch_compile=true`, `round:pass_tokens=0` (the whole batch in one pass, as
before the memory lever). `--baseline` names the variant the ratios are taken against (default: (a)).

Each run is a fresh subprocess (peak memory is its own), the variants interleaved and repeated; the script prints
per-variant medians and the spread, the ratios of pairs per second and of peak memory against the baseline variant,
and the machine's load average. Peak memory on the CPU is the run's peak resident set (the kernel's high-water mark,
`ru_maxrss`, over the whole process: imports, training and scoring the held-out pairs); on a GPU, torch's peak
allocation.
After training, each run scores its adapter on the same held-out pairs against the base model (accuracy with a tie
as half, 95 % Wilson interval); the base model's log-probs are cached in the output folder and shared by all runs.

    .venv/bin/python -m bench.train_cpu --pairs 32 --heldout 300 --max-length 160 --repeats 3
    .venv/bin/python -m bench.train_cpu --dataset short --max-length 256 --variants round:pass_tokens=0,round \
        --baseline round:pass_tokens=0
    python -m bench.train_cpu --device cuda --pairs 512 --heldout 500 --max-length 512 --batch-size 32

Data: rows of Anthropic HH-RLHF (harmless); `--dataset hh` trains on whole conversations, `--dataset short` on
the loop benchmark's kind of pair: the first question, the shorter answer preferred. Training pairs come from the
start of the file, held-out pairs from its end, so they never overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh_rlhf_harmless_dev.jsonl"
DEFAULT_MODEL = REPO / "var" / "models" / "smollm2-135m-instruct"
BASELINE = "trl"


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("HH_RLHF_PATH") or DEFAULT_DATA))
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("BASE_MODEL_DIR") or DEFAULT_MODEL))
    parser.add_argument("--dataset", choices=("hh", "short"), default="hh")
    parser.add_argument("--pairs", type=int, default=32, help="training pairs")
    parser.add_argument("--heldout", type=int, default=300, help="held-out pairs (the issue asks for >= 300)")
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="trl,round", help="comma-separated; see the module docstring")
    parser.add_argument("--baseline", default=BASELINE, help="the variant the ratios are taken against")
    parser.add_argument("--output-dir", type=Path, help="default: var/bench/train-cpu-<time>")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one run, in its own process
    return parser.parse_args(argv)


# --- data ---------------------------------------------------------------------------------------------------------


def load_rows(arguments: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """(training pairs, held-out pairs): the first and the last usable rows of the file, never the same row."""
    from training.data import hh_rlhf_to_trl

    pairs = []
    for line in arguments.data.read_text(encoding="utf-8").splitlines():
        try:
            row = hh_rlhf_to_trl(json.loads(line))
        except ValueError:
            continue
        pairs.append(short_pair(row) if arguments.dataset == "short" else row)
    usable = [row for row in pairs if row is not None]
    if arguments.pairs + arguments.heldout > len(usable):
        raise SystemExit(f"--pairs + --heldout must be at most {len(usable)} (usable rows of {arguments.data})")
    return usable[: arguments.pairs], usable[len(usable) - arguments.heldout :]


def short_pair(row: Any) -> Any:
    """The loop benchmark's kind of vote: a single question, the shorter of two answers preferred."""
    answers = sorted([row["chosen"][0]["content"], row["rejected"][0]["content"]], key=len)
    if answers[0] == answers[1]:
        return None
    return {
        "prompt": row["prompt"][:1],
        "chosen": [{"role": "assistant", "content": answers[0]}],
        "rejected": [{"role": "assistant", "content": answers[1]}],
    }


# --- one run (in its own process) ---------------------------------------------------------------------------------


def worker(arguments: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(arguments.threads)
    from training.data import load_pairs
    from training.evaluate import ReferenceCache, compare_against_base, model_cache_key

    variant = arguments.worker
    output_dir = arguments.output_dir / f"run-{variant.replace(':', '-').replace('=', '-')}-{time.time_ns()}"
    train_path, heldout_path = arguments.output_dir / "train.jsonl", arguments.output_dir / "heldout.jsonl"
    started = time.perf_counter()
    if variant == BASELINE:
        trainer = trl_trainer(arguments, load_pairs(train_path), output_dir)
        train_output = trainer.train()
        steps = train_output.global_step
    else:
        trainer, result = project_trainer(arguments, variant, train_path, output_dir)
        steps = result.steps
    if arguments.device == "cuda":
        torch.cuda.synchronize()
    round_seconds = time.perf_counter() - started
    train_seconds = float(trainer.state.log_history[-1].get("train_runtime", round_seconds))
    tokens = non_padding_tokens(trainer, arguments.max_length)
    pairs = len(trainer.train_dataset)
    peak = peak_memory_gib(arguments.device)

    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)  # scored in fp32, as in a round
    model.eval()
    evaluated = time.perf_counter()
    scores = compare_against_base(
        model,
        trainer.processing_class,
        model_cache_key(arguments.model),
        load_pairs(heldout_path),
        {"trained": "default"},
        arguments.beta,
        arguments.max_length,
        arguments.batch_size,
        ReferenceCache(arguments.output_dir / "reference-cache.json"),
    )["trained"]
    return {
        "variant": variant,
        "pairs": pairs,
        "steps": steps,
        "round_seconds": round_seconds,
        "train_seconds": train_seconds,
        "pairs_per_second": pairs * arguments.epochs / round_seconds,
        "tokens_per_second": tokens * arguments.epochs / round_seconds,
        "peak_memory_gib": peak,
        "heldout": {
            "accuracy": scores.accuracy,
            "accuracy_low": scores.accuracy_low,
            "accuracy_high": scores.accuracy_high,
            "mean_margin": scores.mean_margin,
            "count": scores.count,
            "skipped": scores.skipped,
        },
        "evaluate_seconds": time.perf_counter() - evaluated,
    }


def trl_trainer(arguments: argparse.Namespace, rows: list[Any], output_dir: Path) -> Any:
    """(a): TRL's DPOTrainer, given what a round gives it and nothing else."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    on_gpu = arguments.device == "cuda"
    precision = {} if on_gpu else {"bf16": False}  # TRL's default bf16=True is refused without a GPU
    config = DPOConfig(
        output_dir=str(output_dir),
        beta=arguments.beta,
        learning_rate=arguments.learning_rate,
        num_train_epochs=arguments.epochs,
        per_device_train_batch_size=arguments.batch_size,
        max_length=arguments.max_length,
        seed=0,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **precision,
    )
    lora = LoraConfig(
        r=arguments.lora_rank,
        lora_alpha=2 * arguments.lora_rank,
        lora_dropout=0.05,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(arguments.model, dtype=torch.float32),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(arguments.model),
        peft_config=lora,
    )


def project_trainer(arguments: argparse.Namespace, variant: str, train_path: Path, output_dir: Path) -> Any:
    """(b): the project's round, with `round:field=value` overrides of its RoundConfig."""
    from training.config import RoundConfig
    from training.dpo import run_training

    overrides: dict[str, Any] = {}
    for setting in variant.split(":")[1:]:
        name, _, value = setting.partition("=")
        overrides[name] = json.loads(value)
    config = RoundConfig.from_dict(
        {
            "base_model_dir": str(arguments.model),
            "output_dir": str(output_dir),
            "beta": arguments.beta,
            "learning_rate": arguments.learning_rate,
            "epochs": arguments.epochs,
            "batch_size": arguments.batch_size,
            "max_length": arguments.max_length,
            "lora_rank": arguments.lora_rank,
            "lora_alpha": 2 * arguments.lora_rank,
            **overrides,
        }
    )
    return run_training(config, train_path)


def non_padding_tokens(trainer: Any, max_length: int) -> int:
    dataset = trainer.train_dataset
    total = 0
    for prompt, chosen, rejected in zip(
        dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True
    ):
        total += min(max_length, len(prompt) + len(chosen)) + min(max_length, len(prompt) + len(rejected))
    return total


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        import torch

        return float(torch.cuda.max_memory_allocated()) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# --- the comparison -----------------------------------------------------------------------------------------------


def run_variant(arguments: argparse.Namespace, variant: str, argv: Sequence[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.train_cpu", *argv, "--output-dir", str(arguments.output_dir)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(arguments.threads), "TQDM_DISABLE": "1"}
    if arguments.device == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = ""
    finished = subprocess.run(
        [*command, "--worker", variant], cwd=REPO, env=environment, capture_output=True, text=True, check=False
    )
    if finished.returncode != 0:
        raise SystemExit(f"run {variant} failed:\n{finished.stderr[-4000:]}")
    return dict(json.loads(finished.stdout.strip().splitlines()[-1]))


def summarise(runs: list[dict[str, Any]], variants: list[str], baseline_name: str = BASELINE) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for variant in variants:
        mine = [run for run in runs if run["variant"] == variant]
        summary[variant] = {
            key: {"median": statistics.median(run[key] for run in mine), "min": min(run[key] for run in mine),
                  "max": max(run[key] for run in mine)}
            for key in ("pairs_per_second", "tokens_per_second", "round_seconds", "train_seconds", "peak_memory_gib")
        }  # fmt: skip
        summary[variant]["heldout"] = mine[-1]["heldout"]  # same seed and pairs: every repeat trains the same adapter
        summary[variant]["heldout_accuracies"] = [run["heldout"]["accuracy"] for run in mine]
    baseline = summary.get(baseline_name)
    for variant in variants:
        if baseline is not None:
            mine = summary[variant]
            mine["baseline"] = baseline_name
            mine["speed_ratio"] = mine["pairs_per_second"]["median"] / baseline["pairs_per_second"]["median"]
            mine["peak_memory_ratio"] = mine["peak_memory_gib"]["median"] / baseline["peak_memory_gib"]["median"]
            low, high = baseline["heldout"]["accuracy_low"], baseline["heldout"]["accuracy_high"]
            mine["accuracy_within_or_above_baseline_interval"] = mine["heldout"]["accuracy"] >= low
            mine["baseline_interval"] = [low, high]
    return summary


def without_option(argv: Sequence[str], option: str) -> list[str]:
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            kept.append(item)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = parse_arguments(argv)
    if arguments.worker:
        print(json.dumps(worker(arguments)))
        return 0
    if arguments.output_dir is None:
        scratch = REPO / "var" / "bench"
        scratch.mkdir(parents=True, exist_ok=True)
        arguments.output_dir = Path(tempfile.mkdtemp(prefix="train-cpu-", dir=scratch))
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    from training.data import write_pairs

    train, heldout = load_rows(arguments)
    write_pairs(train, arguments.output_dir / "train.jsonl")
    write_pairs(heldout, arguments.output_dir / "heldout.jsonl")
    variants = [name.strip() for name in arguments.variants.split(",") if name.strip()]
    if arguments.baseline not in variants:
        raise SystemExit(f"--baseline {arguments.baseline} must be one of --variants {variants}")
    passed = without_option(argv, "--output-dir")
    runs, loads = [], []
    for repeat in range(arguments.repeats):
        # Interleaved, and the order flipped every repeat, so a change in the machine's load hits every variant alike
        for variant in variants if repeat % 2 == 0 else list(reversed(variants)):
            loads.append(os.getloadavg()[0])
            run = run_variant(arguments, variant, passed)
            runs.append(run)
            print(
                f"repeat {repeat + 1} {variant:<40} {run['pairs_per_second']:.3f} pairs/s "
                f"{run['tokens_per_second']:.0f} tokens/s {run['round_seconds']:.1f} s "
                f"{run['peak_memory_gib']:.2f} GiB  held-out accuracy {run['heldout']['accuracy']:.3f} "
                f"[{run['heldout']['accuracy_low']:.3f}, {run['heldout']['accuracy_high']:.3f}] "
                f"(load {loads[-1]:.1f})",
                flush=True,
            )
    summary = summarise(runs, variants, arguments.baseline)
    report = {
        "setting": {key: str(value) for key, value in vars(arguments).items() if key != "worker"},
        "cores": os.cpu_count(),
        "load_average_before_each_run": loads,
        "runs": runs,
        "summary": summary,
    }
    (arguments.output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    for variant, figures in summary.items():
        print(
            f"{variant:<40} {figures['round_seconds']['median']:.1f} s a round "
            f"[{figures['round_seconds']['min']:.1f}, {figures['round_seconds']['max']:.1f}], "
            f"{figures['speed_ratio']:.2f}x the pairs/s of {arguments.baseline}; peak memory "
            f"{figures['peak_memory_gib']['median']:.2f} GiB [{figures['peak_memory_gib']['min']:.2f}, "
            f"{figures['peak_memory_gib']['max']:.2f}], {figures['peak_memory_ratio']:.2f}x; held-out accuracy "
            f"{figures['heldout']['accuracy']:.3f} [{figures['heldout']['accuracy_low']:.3f}, "
            f"{figures['heldout']['accuracy_high']:.3f}]"
        )
    print(f"load average (1 min) before the runs: median {statistics.median(loads):.1f}, max {max(loads):.1f}")
    print(f"written to {arguments.output_dir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
