"""Real rounds forked by the trainer's warm process (annotate.rounds.warm, training.warm), on a tiny random Llama: each
round a child of the one warm trainer, which outlives it; the warm trainer killed mid-round fails that round with
the reason and the next round gets a new one; a warm trainer that is not ready costs the round only its warm start."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from annotate.models import TrainingRound
from annotate.rounds import services as rounds
from annotate.rounds import warm

from .conftest import run_round
from .test_rounds_torchrun import ROUND, serving_version, tiny_model_dir  # noqa: F401
from .test_rounds_torchrun import _wait_for_the_first_step as first_step

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
Status = TrainingRound.Status


@pytest.fixture
def warm_loop(loop):  # type: ignore[no-untyped-def]
    loop.TRAINING_LAUNCHER = ""  # the real `python -m training`, not the scripted trainer
    loop.TRAINING_WARM_START = True
    loop.TRAINING_CPU_THREADS = 1
    loop.ROUND_GATE_MIN_ACCURACY = 0.0  # a random model's accuracy on a few pairs is not what is tested here
    loop.ROUND_GATE_TOLERANCE = 1.0
    yield loop
    warm.warm_trainer_stop()


def warm_start_of(training_round: TrainingRound) -> dict[str, bool]:
    return dict(json.loads((Path(training_round.directory) / "evaluation.json").read_text())["warm_start"])


@pytest.mark.django_db(transaction=True)  # the round's heartbeat thread writes beside it (SQLite: no open transaction)
def test_rounds_are_forked_by_one_warm_trainer_that_outlives_them(warm_loop, model_server):
    first = run_round(**ROUND, max_steps=2)
    trainer = warm._trainer
    assert trainer is not None and trainer.alive()
    second = run_round(**ROUND, max_steps=2)

    for training_round in (first, second):
        assert training_round.status == Status.SERVING, training_round.error + training_round.log_tail
        assert warm_start_of(training_round) == {"forked": True, "preloaded_model": True}
        assert training_round.phase_seconds["start"] < training_round.phase_seconds["load"] + 5  # no imports left
    assert warm._trainer is trainer and trainer.alive()  # the same process forked both
    assert second.result_version.name in model_server.models


@pytest.mark.django_db(transaction=True)
def test_the_warm_trainer_killed_mid_round_fails_the_round_and_the_next_gets_a_new_one(warm_loop, serving_version):  # noqa: F811
    training_round = rounds.round_start(trigger="api", overrides={**ROUND, "max_steps": 5000})
    runner = threading.Thread(target=rounds.round_run, args=(training_round.pk,))
    runner.start()
    try:
        child, _ = first_step(training_round)
        trainer = warm._trainer
        assert trainer is not None
        os.kill(trainer.process.pid, signal.SIGKILL)  # as the OOM killer would end it
        runner.join(timeout=120)
    finally:
        if runner.is_alive():
            warm.warm_trainer_stop()
            runner.join(timeout=60)

    assert not runner.is_alive()
    training_round.refresh_from_db()
    assert training_round.status == Status.FAILED and training_round.active is None
    assert "`python -m training round` failed (killed by signal 15)" in training_round.error
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child)  # the round's process went with its server

    after = run_round(**ROUND, max_steps=2)
    assert after.status == Status.SERVING, after.error + after.log_tail
    assert warm_start_of(after) == {"forked": True, "preloaded_model": True}
    assert warm._trainer is not trainer


@pytest.mark.django_db(transaction=True)
def test_a_warm_trainer_not_ready_in_time_costs_the_round_only_its_warm_start(warm_loop, model_server, caplog):
    warm_loop.TRAINING_WARM_READY_SECONDS = 0.01
    training_round = run_round(**ROUND, max_steps=2)

    assert training_round.status == Status.SERVING, training_round.error + training_round.log_tail
    assert warm_start_of(training_round) == {"forked": False, "preloaded_model": False}
    assert "round starts cold: the warm trainer was not ready in 0.01 s" in caplog.text
    assert warm._trainer is None  # stopped: the next round starts another


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"
