"""Measure, over several seeds, the training outcomes the training tests rest on, so that each test's threshold is
a stated margin below what every seed reached rather than a guess (the numbers are in the tests' docstrings).

    .venv/bin/python -m tests.training.measure_seeds [SEEDS...]   # default: seeds 0 to 4

Per seed: the fp32 round of the `round_one` fixture (3 steps), the bf16 round of `test_a_bf16_round_on_the_cpu_learns`
(4 steps) and the round two of the `round_two` fixture (2 steps on round one's adapter). Each trained adapter is
scored in fp32 on the six training pairs against the base model: its DPO loss there (log 2 before training), its
implicit-reward accuracy and mean margin. One JSON line per seed and round.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.training.samples import BASE_MODEL_DIR, TINY_PAIRS, tiny_round_config, training_set_scores
from training.data import write_pairs
from training.dpo import train_round


def metrics(output_dir: Path | str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def measure(seed: int, directory: Path, pairs: Path) -> list[dict[str, Any]]:
    rows = []
    one = train_round(tiny_round_config(BASE_MODEL_DIR, directory / "one", seed=seed), pairs)
    logged = metrics(one.output_dir)
    scores = training_set_scores(BASE_MODEL_DIR, Path(one.adapter_dir))
    rows.append({"seed": seed, "round": "one (fp32, 3 steps)", "first_loss": logged[0]["loss"],
                 "last_loss": logged[-1]["loss"], **scores})  # fmt: skip
    bf16 = train_round(tiny_round_config(BASE_MODEL_DIR, directory / "bf16", seed=seed, cpu_bf16=True, max_steps=4),
                       pairs)  # fmt: skip
    logged = metrics(bf16.output_dir)
    rows.append({"seed": seed, "round": "bf16 (4 steps)", "first_loss": logged[0]["loss"],
                 "last_loss": logged[-1]["loss"], "last_margin": logged[-1]["rewards/margins"],
                 **training_set_scores(BASE_MODEL_DIR, Path(bf16.adapter_dir))})  # fmt: skip
    two_config = tiny_round_config(
        BASE_MODEL_DIR, directory / "two", seed=seed, parent_adapter_dir=one.adapter_dir, max_steps=2
    )
    two = train_round(two_config, pairs)
    first, second = metrics(one.output_dir)[0], metrics(two.output_dir)[0]
    shift = abs(second["logps/chosen"] - first["logps/chosen"])
    rewards = [second["rewards/chosen"], second["rewards/rejected"]]
    rows.append({"seed": seed, "round": "two (on one's adapter)", "logps_chosen_shift": shift,
                 "first_loss": second["loss"], "first_rewards": rewards})  # fmt: skip
    return rows


def main(seeds: list[int]) -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as temporary:
        pairs = Path(temporary) / "pairs.jsonl"
        write_pairs(TINY_PAIRS, pairs)
        for seed in seeds:
            for row in measure(seed, Path(temporary) / f"seed-{seed}", pairs):
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main([int(seed) for seed in sys.argv[1:]] or list(range(5)))
