"""Fixtures of the training tests: the prepared base model, a tiny random model, six short pairs, one tiny round.

Everything stays tiny because the CPU is slow: 6 short pairs, max_length 64, batch 2, 3 steps. The tiny model is
a two-layer Llama with random weights and the base model's tokenizer: real code paths in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.samples import BASE_MODEL_DIR, TINY_PAIRS, tiny_model_write, tiny_round_config
from training.data import write_pairs
from training.dpo import TrainResult, train_round
from training.model_prep import prepare_model


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    return prepare_model(None, BASE_MODEL_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_write(base_model_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_pairs_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    write_pairs(TINY_PAIRS, path)
    return path


@pytest.fixture(scope="session")
def round_one(base_model_dir: Path, tiny_pairs_path: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    output_dir = tmp_path_factory.mktemp("rounds") / "round-1"
    return train_round(tiny_round_config(base_model_dir, output_dir), tiny_pairs_path)
