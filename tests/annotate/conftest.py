"""Fixtures for the Django side's tests that drive a round through its real paths."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection

from annotate.models import TrainingRound
from annotate.rounds import services as rounds

from .edges import FakeModelServer, fake_model_server, scripted_trainer
from .ranking_pairs import make_ranking_pair, ranking_campaign  # noqa: F401 (fixtures)
from .voting import vote_as_annotator


@pytest.fixture
def model_server():
    return FakeModelServer(max_lora_rank=16)


@pytest.fixture
def loop(settings, tmp_path, make_pair, django_user_model, serving_version, model_server, monkeypatch):
    """Eight decisive votes (cast through the annotation services), a scripted trainer, and the fake vLLM server at
    VLLM_BASE_URL."""
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ADAPTER_STORE_DIR = tmp_path / "adapters"
    settings.ROUND_MIN_TRAIN_PAIRS = 2
    settings.ROUND_HOLDOUT_FRACTION = 0.25
    settings.ROUND_POLL_SECONDS = 0.05
    settings.ROUND_GATE_MIN_ACCURACY = 0.5
    settings.TRAINING_LAUNCHER = scripted_trainer(tmp_path)
    voter = django_user_model.objects.create_user("voter")
    for number in range(8):
        pair = make_pair(texts=(f"short {number}", f"a much longer answer {number}"))
        vote_as_annotator(voter, pair=pair, choice="a", strength=2)
    model_server.models = [serving_version.name]
    with fake_model_server(model_server) as url:
        settings.VLLM_BASE_URL = url
        yield settings


def run_round(**overrides: object) -> TrainingRound:
    """Start a round and run it as the training worker would (scripted trainer, fake model server)."""
    training_round = rounds.round_start(trigger="api", overrides=overrides)
    rounds.round_run(training_round.pk)
    training_round.refresh_from_db()
    return training_round


def run_in_threads(jobs: list[Callable[[], None]]) -> None:
    """Run the jobs at once, each in a thread with its own database connection; re-raise the first error."""
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
