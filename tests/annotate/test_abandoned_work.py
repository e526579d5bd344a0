"""Work whose worker dies without a word is ended with a reason, within a bound, never left "running".

An export or a round runs in its own process, as a Celery worker runs it, on this test's database; the process is
SIGKILLed or SIGSTOPped midway, and the beat's `work_abandoned_end` looks, as it does every 30 s."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from annotate.annotation import services as annotation
from annotate.data import exports
from annotate.data.exports import ExportFilters
from annotate.models import Export, TrainingRound
from annotate.rounds import services as rounds
from annotate.tasks import work_abandoned_end
from tests.integration.conftest import REPO, shared_database_url, wait_until

from .edges import FakeModelServer, fake_model_server, scripted_trainer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def export(make_pair, annotator, staff):
    """A vote cast as an annotator casts it, and an export of it asked for by staff."""
    make_pair()
    assignment = annotation.assignment_lease_next(annotator=annotator)
    assert assignment is not None
    annotation.judgement_record(
        annotator=annotator, pair_id=assignment.pair_id, choice="left", strength=2, rationale="",
        idempotency_key=uuid.uuid4(),
    )  # fmt: skip
    return exports.export_create(
        created_by=staff, dataset_format="trl-preference", file_format="jsonl", filters=ExportFilters()
    )


def _export_in_another_process(export: Export, tmp_path, lease: float) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """The export run as a worker runs it, stuck after its first votes (a huge export, a slow disk)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "annotate.settings", "DATABASE_URL": shared_database_url(),
           "EXPORT_DIR": str(tmp_path), "EXPORT_LEASE_SECONDS": str(lease)}  # fmt: skip
    code = (
        "import time\nfrom annotate.data.exports import export_run\nfrom annotate.models import Export\n"
        f"export_run(export=Export.objects.get(pk={export.pk}), on_progress=lambda done: time.sleep(600))"
    )
    return subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, start_new_session=True
    )


def _running(export: Export, process: subprocess.Popen[bytes]) -> Export:
    def started() -> Export | None:
        export.refresh_from_db()
        return export if export.status == Export.Status.RUNNING else None

    return wait_until(started, 90, "the other process to start the export", process)


def test_an_export_whose_worker_was_killed_is_ended_with_the_reason_at_the_next_look(export, tmp_path, settings):
    settings.EXPORT_LEASE_SECONDS = 30
    worker = _export_in_another_process(export, tmp_path, lease=30)
    try:
        _running(export, worker)
        assert f":{worker.pid}:" in export.holder
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)

    # Its process is gone from this host: no need to wait for the lease.
    assert work_abandoned_end() == 1
    export.refresh_from_db()
    assert export.status == Export.Status.FAILED and export.finished_at is not None
    assert "stopped without finishing" in export.error and str(worker.pid) in export.error
    assert work_abandoned_end() == 0


def test_a_live_worker_keeps_its_export_and_a_frozen_one_loses_it_when_the_lease_ends(export, tmp_path, settings):
    lease = 4.0
    settings.EXPORT_LEASE_SECONDS = lease
    worker = _export_in_another_process(export, tmp_path, lease=lease)
    try:
        _running(export, worker)
        time.sleep(lease * 1.5)
        assert work_abandoned_end() == 0  # its heartbeat renews it past the lease
        export.refresh_from_db()
        assert export.status == Export.Status.RUNNING

        os.killpg(worker.pid, signal.SIGSTOP)  # alive but silent: a frozen pod on another host looks the same
        stopped_at = time.monotonic()
        assert work_abandoned_end() == 0  # not yet: its lease still runs
        wait_until(lambda: work_abandoned_end() == 1, lease * 3, "the export to be ended after its lease")
        assert time.monotonic() - stopped_at <= lease + lease / 3 + 2
        export.refresh_from_db()
        assert export.status == Export.Status.FAILED and "no sign of life since" in export.error

        os.killpg(worker.pid, signal.SIGCONT)  # it wakes up: its heartbeat finds the export no longer its own
        time.sleep(lease / 3 + 1)
        export.refresh_from_db()
        assert export.status == Export.Status.FAILED
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


# --- Rounds: the training worker heartbeats its round in every phase ---------------------------------------------

Status = TrainingRound.Status
STALE = 4  # ROUND_STALE_SECONDS here: the worker heartbeats every half second


@pytest.fixture
def round_ready(settings, tmp_path, make_pair, annotator):
    """Eight votes cast as an annotator casts them, and the settings a round needs here (the child process gets the
    same through its environment)."""
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ADAPTER_STORE_DIR = tmp_path / "adapters"
    settings.ROUND_MIN_TRAIN_PAIRS = 2
    settings.ROUND_HOLDOUT_FRACTION = 0.5
    settings.ROUND_STALE_SECONDS = STALE
    for number in range(8):
        make_pair(texts=(f"short {number}", f"a much longer answer {number}"))
        assignment = annotation.assignment_lease_next(annotator=annotator)
        assert assignment is not None
        annotation.judgement_record(
            annotator=annotator, pair_id=assignment.pair_id, choice="left", strength=2, rationale="",
            idempotency_key=uuid.uuid4(),
        )  # fmt: skip
    return settings


def _sleeping_trainer(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A training process that runs for minutes (a long DPO run), writing its pid first."""
    path = tmp_path / "sleeping_trainer.sh"
    path.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/trainer.pid\nexec sleep 300\n")
    path.chmod(0o755)
    return str(path)


def _round_in_another_process(  # type: ignore[no-untyped-def]
    training_round: TrainingRound, settings, launcher: str, model_server: str = "", task: str = "round_run"
):
    """The round run by the training worker's task (`task`), as the `trainer` process runs it."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "annotate.settings", "DATABASE_URL": shared_database_url(),
           "ROUND_DIR": str(settings.ROUND_DIR), "ADAPTER_STORE_DIR": str(settings.ADAPTER_STORE_DIR),
           "ROUND_MIN_TRAIN_PAIRS": "2", "ROUND_STALE_SECONDS": str(STALE), "ROUND_POLL_SECONDS": "0.2",
           "TRAINING_LAUNCHER": launcher, "VLLM_BASE_URL": model_server}  # fmt: skip
    code = f"from annotate.tasks import {task}\n{task}({training_round.pk})"
    return subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, start_new_session=True
    )


def _in_status(training_round: TrainingRound, status: str, process: subprocess.Popen[bytes]) -> TrainingRound:
    def reached() -> TrainingRound | None:
        training_round.refresh_from_db()
        running = status != Status.TRAINING or training_round.process_id is not None
        return training_round if training_round.status == status and running else None

    return wait_until(reached, 90, f"the other process to take the round to {status}", process)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def _stop(process: subprocess.Popen[bytes], trainer_pid_file) -> None:  # type: ignore[no-untyped-def]
    for pid in (process.pid, int(trainer_pid_file.read_text()) if trainer_pid_file.exists() else None):
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_a_round_whose_trainer_was_killed_mid_training_is_failed_with_the_reason_within_the_bound(
    round_ready, serving_version, staff, tmp_path
):
    training_round = rounds.round_start(trigger="page", started_by=staff)
    worker = _round_in_another_process(training_round, round_ready, _sleeping_trainer(tmp_path))
    try:
        _in_status(training_round, Status.TRAINING, worker)
        pid_file = tmp_path / "trainer.pid"
        written = wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "the training process", worker)
        trainer = int(written)
        os.killpg(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        worker.wait(timeout=30)
        # Its training process goes with it (the parent-death signal), instead of running on without an owner.
        wait_until(lambda: not _alive(trainer), 10, "the training process to stop with its worker")

        assert work_abandoned_end() == 0  # it sent a sign of life a moment ago
        wait_until(lambda: work_abandoned_end() == 1, STALE * 3, "the round to be ended once it was silent too long")
        # Beat looks every 30 s; this test looks every second: the bound is ROUND_STALE_SECONDS + the look's period.
        assert time.monotonic() - killed_at <= STALE + 2
    finally:
        _stop(worker, tmp_path / "trainer.pid")

    training_round.refresh_from_db()
    assert training_round.status == Status.FAILED and training_round.active is None
    assert training_round.finished_at is not None and training_round.process_id is None
    assert "its training worker stopped reporting while it was training: no sign of life since" in training_round.error
    assert f"ROUND_STALE_SECONDS={STALE}" in training_round.error
    assert work_abandoned_end() == 0
    assert rounds.round_start(trigger="api").status == Status.QUEUED  # the slot it held is free


class _SlowToLoad(FakeModelServer):
    """A model server that takes its time loading an adapter (a large one, a busy GPU) until told to go on."""

    def __init__(self) -> None:
        super().__init__()
        self.loading, self.go_on = threading.Event(), threading.Event()

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if path == "/v1/load_lora_adapter":
            self.loading.set()
            self.go_on.wait(60)
        return super().handle(path, body)


def test_a_live_worker_keeps_its_round_through_a_slow_deploy(round_ready, serving_version, staff, tmp_path):
    server = _SlowToLoad()
    server.models = [serving_version.name]
    with fake_model_server(server) as url:
        training_round = rounds.round_start(trigger="page", started_by=staff)
        worker = _round_in_another_process(training_round, round_ready, scripted_trainer(tmp_path), url)
        try:
            wait_until(server.loading.is_set, 90, "the worker to deploy the round's adapter", worker)
            _in_status(training_round, Status.DEPLOYING, worker)
            time.sleep(STALE * 1.5)  # nothing the worker does writes the round meanwhile: only its heartbeat
            assert work_abandoned_end() == 0
            training_round.refresh_from_db()
            assert training_round.status == Status.DEPLOYING

            server.go_on.set()
            assert worker.wait(timeout=60) == 0
        finally:
            server.go_on.set()
            _stop(worker, tmp_path / "trainer.pid")
    training_round.refresh_from_db()
    assert training_round.status == Status.SERVING and training_round.error == ""


def test_a_live_deploy_task_keeps_a_promoted_round_through_a_slow_deploy(
    round_ready, serving_version, staff, tmp_path, monkeypatch
):
    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.3")  # the gate rejects the round; staff promote it over the gate
    round_ready.TRAINING_LAUNCHER = scripted_trainer(tmp_path)
    server = _SlowToLoad()
    server.models = [serving_version.name]
    with fake_model_server(server) as url:
        round_ready.VLLM_BASE_URL = url
        training_round = rounds.round_start(trigger="page", started_by=staff)
        rounds.round_run(training_round.pk)
        training_round.refresh_from_db()
        assert training_round.status == Status.REJECTED
        rounds.round_promote(training_round=training_round, by=staff, reason="the answers read better")
        worker = _round_in_another_process(training_round, round_ready, "false", url, task="round_deploy")
        try:
            wait_until(server.loading.is_set, 90, "the deploy task to load the round's adapter", worker)
            time.sleep(STALE * 1.5)
            assert work_abandoned_end() == 0
            training_round.refresh_from_db()
            assert training_round.status == Status.DEPLOYING

            server.go_on.set()
            assert worker.wait(timeout=60) == 0
        finally:
            server.go_on.set()
            _stop(worker, tmp_path / "trainer.pid")
    training_round.refresh_from_db()
    assert training_round.status == Status.SERVING


def test_a_frozen_worker_loses_its_round_and_stops_its_training_when_it_wakes(
    round_ready, serving_version, staff, tmp_path
):
    training_round = rounds.round_start(trigger="page", started_by=staff)
    worker = _round_in_another_process(training_round, round_ready, _sleeping_trainer(tmp_path))
    trainer_pid_file = tmp_path / "trainer.pid"
    try:
        _in_status(training_round, Status.TRAINING, worker)
        time.sleep(STALE * 1.5)
        assert work_abandoned_end() == 0  # alive: its heartbeat keeps the round
        os.killpg(worker.pid, signal.SIGSTOP)  # alive but silent: a frozen pod on another host looks the same
        wait_until(lambda: work_abandoned_end() == 1, STALE * 3, "the round of a frozen worker to be ended")
        training_round.refresh_from_db()
        ended = (training_round.status, training_round.error, training_round.revision)
        assert ended[0] == Status.FAILED and "stopped reporting while it was training" in ended[1]
        trainer = int(trainer_pid_file.read_text())
        assert _alive(trainer)  # its training process still runs, held by the frozen worker

        os.killpg(worker.pid, signal.SIGCONT)  # it wakes up: the round is no longer its own
        assert worker.wait(timeout=30) == 0
        wait_until(lambda: not _alive(trainer), 30, "the worker to stop its training process")
    finally:
        _stop(worker, trainer_pid_file)
    training_round.refresh_from_db()
    assert (training_round.status, training_round.error, training_round.revision) == ended


def test_a_round_no_worker_took_is_ended_once_the_bound_passes(round_ready, serving_version, staff):
    training_round = rounds.round_start(trigger="page", started_by=staff)  # its task is lost: no worker takes it
    assert work_abandoned_end() == 0
    wait_until(lambda: work_abandoned_end() == 1, STALE * 3, "the queued round to be ended")
    training_round.refresh_from_db()
    assert training_round.status == Status.FAILED and training_round.active is None
    assert training_round.error.startswith(f"no training worker took the round within ROUND_STALE_SECONDS={STALE} s")


def _queued_tasks() -> list[tuple[str, Any]]:
    """Every task waiting in this run's queue, taken off it as a worker would take it (the real broker)."""
    from django.conf import settings as django_settings

    from annotate.celery import app

    with app.connection_for_read() as connection:
        channel = connection.default_channel
        taken = []
        while (message := channel.basic_get(django_settings.CELERY_TASK_DEFAULT_QUEUE, no_ack=True)) is not None:
            taken.append((message.headers["task"], message.headers.get("argsrepr")))
        return taken


def test_queued_work_whose_message_was_lost_is_sent_again_once_a_lease(export, staff, settings):
    """A broker that restarts without keeping its queue (Redis without persistence, as in the chaos soak) loses the
    message of an export or import no worker took yet: it would stay queued for good. After a lease without a worker
    it is sent again, and no more than once a lease."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from annotate.data import import_jobs
    from annotate.models import DataImport

    upload = SimpleUploadedFile("prompts.txt", b"A question nobody imported yet?\n")
    data_import, _ = import_jobs.data_import_request(
        created_by=staff, kind=DataImport.Kind.PROMPTS, upload=upload, file_format=None, options={}
    )
    _queued_tasks()  # both recorded; whatever was sent for them is gone with the broker's queue
    settings.EXPORT_LEASE_SECONDS = settings.DATA_IMPORT_LEASE_SECONDS = 60
    work_abandoned_end()
    assert _queued_tasks() == []  # within the lease: a worker may still be on its way

    settings.EXPORT_LEASE_SECONDS = settings.DATA_IMPORT_LEASE_SECONDS = 0.5
    time.sleep(0.6)
    work_abandoned_end()
    assert sorted(_queued_tasks()) == [
        ("annotate.tasks.data_import_run", f"({data_import.pk},)"),
        ("annotate.tasks.export_run", f"({export.pk},)"),
    ]
    work_abandoned_end()
    assert _queued_tasks() == []  # sent again once a lease, not at every look

    exports.export_run(export=Export.objects.get(pk=export.pk))  # a worker takes the message sent again
    import_jobs.data_import_run(data_import=DataImport.objects.get(pk=data_import.pk))
    assert Export.objects.get(pk=export.pk).status == Export.Status.DONE
    assert DataImport.objects.get(pk=data_import.pk).status == DataImport.Status.DONE
