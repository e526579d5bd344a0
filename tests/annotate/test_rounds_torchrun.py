"""A real round trained by two processes, as TRAINING_LAUNCHER="torchrun --standalone --nproc-per-node 2" runs it:
data-parallel on the CPU over gloo, on a tiny random Llama. One adapter, one evaluation, one report, all by rank 0;
a rank killed mid-round ends the round failed, with the launcher's account of which rank died and how."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from annotate.models import ModelVersion, TrainingRound
from annotate.rounds import services as rounds

from .conftest import run_round

# torchrun itself, as this Python runs it (the venv's `torchrun` script is the same entry point)
TORCHRUN = f"{shlex.quote(sys.executable)} -m torch.distributed.run --standalone --nproc-per-node 2"
# Each rank's share: 2 pairs a step, so the two ranks together take 4 pairs a step
ROUND = {"max_length": 64, "batch_size": 2, "learning_rate": 1e-2}

pytestmark = [pytest.mark.django_db, pytest.mark.slow]
Status = TrainingRound.Status


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.training.samples import BASE_MODEL_DIR, tiny_model_write
    from training.model_prep import prepare_model

    return tiny_model_write(prepare_model(None, BASE_MODEL_DIR), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def serving_version(db, tiny_model_dir):  # type: ignore[no-untyped-def]
    """The version serving at the start, on the tiny model (the rounds train on its base model)."""
    return ModelVersion.objects.create(
        name="policy-v0", base_model=str(tiny_model_dir), status=ModelVersion.Status.SERVING
    )


@pytest.fixture
def torchrun_loop(loop):  # type: ignore[no-untyped-def]
    loop.TRAINING_LAUNCHER = TORCHRUN
    loop.TRAINING_CPU_THREADS = 1  # per rank: two ranks share this machine's cores
    loop.ROUND_GATE_MIN_ACCURACY = 0.0  # a random model's accuracy on a few pairs is not what is tested here
    loop.ROUND_GATE_TOLERANCE = 1.0
    return loop


def test_two_ranks_train_one_adapter_that_rank_zero_alone_scores_and_reports(torchrun_loop, model_server):
    training_round = run_round(**ROUND, max_steps=2)

    assert training_round.status == Status.SERVING, training_round.error + training_round.log_tail
    version = training_round.result_version
    assert version.status == ModelVersion.Status.SERVING and version.name in model_server.models
    assert (Path(version.adapter_path) / "adapter_model.safetensors").is_file()
    directory = Path(training_round.directory)
    log = (directory / "train.log").read_text()
    # one report: rank 0 prints it, rank 1 ends after training without a word
    assert log.count("trained 2 steps on") == 1 and log.count("written to ") == 1
    output = directory / "output"
    result = json.loads((output / "result.json").read_text())
    assert result["steps"] == 2 and result["pairs"] == training_round.train_pairs
    # Data-parallel, not two copies: each step takes 2 pairs on each rank, so an epoch is half as many steps as alone
    steps_per_epoch = math.ceil(math.ceil(training_round.train_pairs / 2) / 2)
    assert result["final_metrics"]["epoch"] == pytest.approx(2 / steps_per_epoch)
    metrics = (output / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2]  # rank 0's lines only
    assert [step.step for step in training_round.steps.all()] == [1, 2]
    # one evaluation: the base model's log-probs of each held-out pair computed once, into the one cache file
    evaluation = json.loads((directory / "evaluation.json").read_text())
    held_out = training_round.heldout_pairs
    assert evaluation["models"]["candidate"]["count"] == held_out
    assert evaluation["reference_cache"]["misses"] == held_out and evaluation["reference_cache"]["hits"] == 0
    assert training_round.evaluation["accuracy"] == evaluation["models"]["candidate"]["accuracy"]


@pytest.mark.django_db(transaction=True)
def test_a_rank_killed_mid_round_fails_the_round_with_the_reason(torchrun_loop, serving_version):
    training_round = rounds.round_start(trigger="api", overrides={**ROUND, "max_steps": 5000})
    runner = threading.Thread(target=rounds.round_run, args=(training_round.pk,))
    runner.start()
    try:
        launcher, metrics = _wait_for_the_first_step(training_round)
        rank_one = _worker_of_rank(launcher, 1)
        os.kill(rank_one, signal.SIGKILL)  # as the OOM killer, or a lost host, would end it
        runner.join(timeout=120)
    finally:
        _stop(training_round, runner)

    assert not runner.is_alive()
    training_round.refresh_from_db()
    assert training_round.status == Status.FAILED and training_round.active is None
    assert "`python -m training round` failed (exit 1)" in training_round.error  # torchrun's status, not rank 0's
    # The launcher's account, in the log tail the round keeps: which rank died, and of what
    assert "rank      : 1 (local_rank: 1)" in training_round.log_tail
    assert f"exitcode  : -9 (pid: {rank_one})" in training_round.log_tail
    assert "Signal 9 (SIGKILL) received by PID" in training_round.log_tail
    # Nothing written as if it had passed: no adapter, no result, no evaluation, no version
    output = metrics.parent
    assert not (output / "adapter").exists() and not (output / "result.json").exists()
    assert not (output.parent / "evaluation.json").exists()
    assert training_round.result_version is None
    assert ModelVersion.objects.serving() == serving_version
    assert 1 <= len(metrics.read_text().splitlines()) < 5000


def _wait_for_the_first_step(training_round: TrainingRound, timeout: float = 300) -> tuple[int, Path]:
    """The launcher's pid and the metrics file, once rank 0 has written a step to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        training_round.refresh_from_db()
        if training_round.process_id and training_round.directory:
            metrics = Path(training_round.directory) / "output" / "metrics.jsonl"
            if metrics.is_file() and metrics.read_text().strip():
                return training_round.process_id, metrics
        assert training_round.is_active, training_round.error + training_round.log_tail
        time.sleep(0.2)
    raise AssertionError(f"no training step in {timeout} s")


def _worker_of_rank(launcher: int, rank: int) -> int:
    """The pid of the worker process torchrun started for `rank` (torchrun sets RANK in each one's environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == launcher and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    raise AssertionError(f"torchrun {launcher} has no worker of rank {rank}")


def _stop(training_round: TrainingRound, runner: threading.Thread) -> None:
    """Leave no process behind, whatever the test found: the launcher's whole process group goes."""
    if not runner.is_alive():
        return
    training_round.refresh_from_db()
    if training_round.process_id:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(training_round.process_id, signal.SIGKILL)
    runner.join(timeout=60)
