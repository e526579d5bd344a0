"""Benchmark: a round's training process started cold (`python -m training round`, what a trainer did before) against
the same round forked by the warm trainer (`python -m training warm`, training.warm), and forked after the idle
trainer prescored its pairs (`python -m training prescore`, annotate.rounds.prescore), interleaved and repeated.

    .venv/bin/python -m bench.warm_start                      # 32 pairs (26 train, 6 held out), 3 repeats
    .venv/bin/python -m bench.warm_start --pairs 32 --heldout 10 --repeats 5 --threads 2

All three run the round's default RoundConfig on the default base model, with the same pairs (HH-RLHF questions,
the shorter answer preferred: the loop benchmark's kind of vote), the same seed and thread budget, each into its own
folder, with the reference cache empty (a first round) except for "prescored", whose cache the prescoring filled
just before (its own time is shown apart: the trainer's idle time, not the round's). Timed by the clock from the
request to the process's exit, as the trainer waits for it; each run's phases are the ones the process reports
(start = imports and anything before loading, load = model and data and the reference pass, train, evaluate). The
warm trainer is started and loaded before the first run, as a trainer worker does when it starts. Prints the
medians with their spread, the ratios of the medians, whether the adapters are the same bit for bit, and the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.train_cpu import DEFAULT_DATA, DEFAULT_MODEL, load_rows

REPO = Path(__file__).resolve().parents[1]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--pairs", type=int, default=26, help="training pairs")
    parser.add_argument("--heldout", type=int, default=6, help="held-out pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    arguments = parser.parse_args()
    arguments.dataset = "short"
    return arguments


def round_argv(folder: Path, model: Path, train: Path, heldout: Path) -> list[str]:
    from training.config import RoundConfig

    folder.mkdir(parents=True)
    config = RoundConfig(base_model_dir=str(model), output_dir=str(folder / "output"))
    (folder / "config.json").write_text(config.to_json())
    return ["round", "--config", str(folder / "config.json"), "--data", str(train), "--heldout", str(heldout),
            "--evaluation-output", str(folder / "evaluation.json"), "--reference-cache",
            str(folder / "reference.json")]  # fmt: skip


def prescore_argv(folder: Path, train: Path, heldout: Path) -> list[str]:
    """What the idle trainer runs before the round in `folder` (round_argv wrote its config): into its cache."""
    return ["prescore", "--config", str(folder / "config.json"), "--data", str(train), "--heldout", str(heldout),
            "--reference-cache", str(folder / "reference.json"), "--seconds", "900",
            "--output", str(folder / "prescore.json")]  # fmt: skip


class Warm:
    def __init__(self, model: Path, environment: dict[str, str]) -> None:
        command = [sys.executable, "-m", "training", "warm", "--model", str(model)]
        self.process = subprocess.Popen(command, cwd=REPO, env=environment, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
        assert self.read() == {"ready": True}

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        return dict(json.loads(self.process.stdout.readline()))

    def run(self, argv: list[str], log: Path, threads: int) -> int:
        assert self.process.stdin is not None
        request = {"argv": argv, "log": str(log), "cwd": str(REPO), "threads": threads}
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        self.read()  # {"pid": ...}
        return int(self.read()["code"])


def main() -> int:
    arguments = parse_arguments()
    from safetensors.torch import load_file

    from training.data import write_pairs

    train_rows, heldout_rows = load_rows(arguments)
    threads = str(arguments.threads)
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    load_before = os.getloadavg()
    kinds = ("cold", "warm", "prescored")
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as scratch:
        folder = Path(scratch)
        train, heldout = folder / "train.jsonl", folder / "heldout.jsonl"
        write_pairs(train_rows, train)
        write_pairs(heldout_rows, heldout)
        started = time.monotonic()
        warm = Warm(arguments.model, environment)
        resident = next(line for line in Path(f"/proc/{warm.process.pid}/status").read_text().splitlines()
                        if line.startswith("VmRSS:"))  # fmt: skip
        print(f"warm trainer ready in {time.monotonic() - started:.1f} s (once per trainer worker), resident "
              f"{int(resident.split()[1]) / 2**20:.2f} GiB", flush=True)  # fmt: skip
        for repeat in range(arguments.repeats):
            for kind in kinds[repeat % 3 :] + kinds[: repeat % 3]:  # each kind first once in three
                run = folder / f"{kind}-{repeat}"
                argv = round_argv(run, arguments.model, train, heldout)
                prescore_seconds = None
                if kind == "prescored":
                    started = time.monotonic()
                    if warm.run(prescore_argv(run, train, heldout), folder / f"{kind}-{repeat}-prescore.log",
                                arguments.threads) != 0:  # fmt: skip
                        raise SystemExit(f"prescoring {repeat} failed: see {folder / f'{kind}-{repeat}-prescore.log'}")
                    prescore_seconds = time.monotonic() - started
                started = time.monotonic()
                if kind == "cold":
                    with (folder / f"{kind}-{repeat}.log").open("wb") as log:
                        code = subprocess.run([sys.executable, "-m", "training", *argv], cwd=REPO, env=environment,
                                              stdout=log, stderr=subprocess.STDOUT).returncode  # fmt: skip
                else:
                    code = warm.run(argv, folder / f"{kind}-{repeat}.log", arguments.threads)
                seconds = time.monotonic() - started
                if code != 0:
                    raise SystemExit(f"{kind} run {repeat} failed: see {folder / f'{kind}-{repeat}.log'}")
                report = json.loads((run / "evaluation.json").read_text())
                phases = dict(report["seconds"])
                phases["start"] = phases["process"] - phases["load"] - phases["train"] - phases["evaluate"]
                adapter = load_file(run / "output" / "adapter" / "adapter_model.safetensors")
                accuracy = report["models"]["candidate"]["accuracy"]
                runs[kind].append({"seconds": seconds, "phases": phases, "adapter": adapter, "accuracy": accuracy})
                scored = report["training_reference"]["misses"] + report["reference_cache"]["misses"]
                print(f"{kind} {repeat}: {seconds:.1f} s, phases "
                      + ", ".join(f"{name} {phases[name]:.1f}" for name in ("start", "load", "train", "evaluate"))
                      + f", accuracy {accuracy:.3f}, pairs the round scored with a reference {scored}"
                      + (f" (prescoring took {prescore_seconds:.1f} s before)" if prescore_seconds else "")
                      + f", load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
        assert warm.process.stdin is not None
        warm.process.stdin.close()
        warm.process.wait()
    medians = {kind: statistics.median(run["seconds"] for run in runs[kind]) for kind in runs}
    for kind in runs:
        values = sorted(run["seconds"] for run in runs[kind])
        phase_medians = {name: statistics.median(run["phases"][name] for run in runs[kind])
                         for name in ("start", "load", "train", "evaluate")}  # fmt: skip
        print(f"{kind}: median {medians[kind]:.1f} s [{values[0]:.1f}, {values[-1]:.1f}], phases "
              + ", ".join(f"{name} {value:.1f}" for name, value in phase_medians.items()))  # fmt: skip
    reference = runs["cold"][0]["adapter"]
    same = all(all(run["adapter"][name].equal(reference[name]) for name in reference) for kind in runs
               for run in runs[kind])  # fmt: skip
    print(
        f"prescored / warm (median seconds): {medians['prescored'] / medians['warm']:.2f}x; "
        f"prescored / cold: {medians['prescored'] / medians['cold']:.2f}x"
    )
    print(f"warm / cold (median seconds): {medians['warm'] / medians['cold']:.2f}x; "
          f"adapters the same bit for bit in every run: {same}")  # fmt: skip
    print(f"load average before {load_before[0]:.1f} {load_before[1]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"{os.getloadavg()[1]:.1f} (1 and 5 min), {os.cpu_count()} cores, threads {arguments.threads}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
