"""Imports run by a worker: progress on the record, one transaction, and an import whose worker dies is ended with a
reason, never left "running".

An import asked for as staff ask for it (the service the page and the API call) runs in its own process, as a
Celery worker runs it, on this test's database; the process is SIGKILLed or SIGSTOPped while it writes, and the beat's
`work_abandoned_end` looks, as it does every 30 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from rest_framework.test import APIClient

from annotate import tasks
from annotate.data import import_jobs
from annotate.models import DataImport, Judgement, Pair, Prompt
from annotate.tasks import work_abandoned_end
from tests.annotate.conftest import run_in_threads
from tests.conftest import SHARED_DATA
from tests.integration.conftest import REPO, shared_database_url, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HH_RLHF = SHARED_DATA / "hh_rlhf_harmless_dev.jsonl"  # 1,000 rows, 3 of them bad: 997 to import, in two chunks


@pytest.fixture
def preference_import(staff):
    """HH-RLHF data uploaded by staff, skipping its bad rows: queued for a worker."""
    upload = SimpleUploadedFile(HH_RLHF.name, HH_RLHF.read_bytes())
    data_import, created = import_jobs.data_import_request(
        created_by=staff, kind="preferences", upload=upload, file_format="hh-rlhf",
        options={"prompt_set": "imported", "skip_bad": True},
    )  # fmt: skip
    assert created and data_import.status == "queued"
    return data_import


@pytest.fixture
def staff_api(staff):
    client = APIClient()
    client.force_authenticate(staff)
    return client


def _import_in_another_process(data_import, tmp_path, lease: float, stall: float):  # type: ignore[no-untyped-def]
    """The import run as a worker runs it, stalling `stall` seconds once it wrote its first chunk of rows (a slow
    database, a huge file), inside its transaction. A file appears when it stalls."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "annotate.settings", "DATABASE_URL": shared_database_url(),
           "DATA_IMPORT_LEASE_SECONDS": str(lease)}  # fmt: skip
    marker = tmp_path / "stalled"
    code = (
        "import pathlib, time\nfrom annotate.data.import_jobs import data_import_run\n"
        "from annotate.models import DataImport\n"
        f"def stall(done):\n    pathlib.Path({str(marker)!r}).touch()\n    time.sleep({stall})\n"
        f"data_import_run(data_import=DataImport.objects.get(pk={data_import.pk}), on_progress=stall)"
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, start_new_session=True
    )
    return process, marker


def _stalled(data_import, process, marker) -> DataImport:  # type: ignore[no-untyped-def]
    wait_until(marker.exists, 90, "the other process to write its first chunk", process)
    data_import.refresh_from_db()
    assert data_import.status == "running" and data_import.rows_total == 997
    return data_import


def _nothing_imported() -> bool:
    return (Prompt.objects.count(), Pair.objects.count(), Judgement.objects.count()) == (0, 0, 0)


def test_an_import_whose_worker_was_killed_is_ended_with_the_reason_and_left_nothing(
    preference_import, tmp_path, settings, staff_api
):
    settings.DATA_IMPORT_LEASE_SECONDS = 30
    worker, marker = _import_in_another_process(preference_import, tmp_path, lease=30, stall=600)
    try:
        running = _stalled(preference_import, worker, marker)
        assert f":{worker.pid}:" in running.holder
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)

    # Its process is gone from this host: no need to wait for the lease.
    assert work_abandoned_end() == 1
    ended = staff_api.get(f"/api/imports/{preference_import.pk}/").json()
    assert ended["status"] == "failed" and ended["finished_at"] is not None
    assert "stopped without finishing" in ended["error"] and str(worker.pid) in ended["error"]
    assert "nothing was imported" in ended["error"]
    assert _nothing_imported()  # the chunk it wrote went with its transaction
    assert DataImport.objects.filter(pk=preference_import.pk).values_list("content", flat=True).get() in (b"", None)
    assert work_abandoned_end() == 0


@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="SQLite has one writer at a time: a live import holds it, so neither its heartbeat nor the end of a frozen "
    "one can be written until it lets go (PostgreSQL is the production database)",
)
def test_progress_shows_while_it_writes_and_a_frozen_worker_loses_its_import_and_writes_nothing(
    preference_import, tmp_path, settings, staff_api
):
    lease = 4.0
    settings.DATA_IMPORT_LEASE_SECONDS = lease
    worker, marker = _import_in_another_process(preference_import, tmp_path, lease=lease, stall=lease * 3)
    try:
        _stalled(preference_import, worker, marker)
        progress = wait_until(
            lambda: (item := staff_api.get(f"/api/imports/{preference_import.pk}/").json())["rows_done"] and item,
            10,
            "the heartbeat to report the first chunk",
        )
        assert (progress["rows_done"], progress["rows_total"], progress["progress_percent"]) == (500, 997, 50)
        time.sleep(lease * 1.5)
        assert work_abandoned_end() == 0  # its heartbeat renews it past the lease

        os.killpg(worker.pid, signal.SIGSTOP)  # alive but silent: a frozen pod on another host looks the same
        stopped_at = time.monotonic()
        assert work_abandoned_end() == 0  # not yet: its lease still runs
        wait_until(lambda: work_abandoned_end() == 1, lease * 3, "the import to be ended after its lease")
        assert time.monotonic() - stopped_at <= lease + 1 + 2
        preference_import.refresh_from_db()
        assert preference_import.status == "failed" and "no sign of life since" in preference_import.error

        # It wakes up, writes the rest and finds the import no longer its own: all it wrote rolls back.
        os.killpg(worker.pid, signal.SIGCONT)
        assert worker.wait(timeout=60) == 0
        preference_import.refresh_from_db()
        assert preference_import.status == "failed" and "no sign of life since" in preference_import.error
        assert _nothing_imported()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)


def test_a_finished_import_is_not_run_again(preference_import):
    tasks.data_import_run(preference_import.pk)
    tasks.data_import_run(preference_import.pk)  # a second delivery of the task
    preference_import.refresh_from_db()
    assert (preference_import.status, preference_import.result["imported"]) == ("done", 997)
    assert Judgement.objects.filter(source="imported").count() == 997
    assert work_abandoned_end() == 0


def test_with_the_task_queue_down_the_import_waits_and_the_page_says_so(client, staff, broker_down):
    client.force_login(staff)
    response = client.post(
        "/data/prompts/import/",
        {"file": SimpleUploadedFile("p.txt", b"one\ntwo\n"), "prompt_set": "s", "new_set": "on"},
    )
    data_import = DataImport.objects.get()
    assert response.status_code == 303 and data_import.status == "queued"
    assert data_import.error == "not started yet: the task queue could not be reached"
    page = client.get(response["Location"]).content.decode()
    assert "Waiting for a worker: not started yet: the task queue could not be reached" in page
    assert "Try again</button>" in page and 'hx-trigger="every 1s"' in page
    again = client.post(response["Location"])  # still down: it stays queued and says so
    assert again.status_code == 303 and again["Location"] == response["Location"]
    data_import.refresh_from_db()
    assert (data_import.status, data_import.error) == ("queued", "not started yet: the task queue could not be reached")
    assert not Prompt.objects.exists()


def test_the_same_upload_sent_twice_at_once_is_one_import(staff):
    answers = []

    def send() -> None:
        upload = SimpleUploadedFile(HH_RLHF.name, HH_RLHF.read_bytes())
        answers.append(
            import_jobs.data_import_request(
                created_by=staff, kind="preferences", upload=upload, file_format="hh-rlhf", options={"skip_bad": True}
            )
        )

    run_in_threads([send, send])
    data_import = DataImport.objects.get()
    assert [(answer.pk, created) for answer, created in sorted(answers, key=lambda pair: pair[1])] == [
        (data_import.pk, False),
        (data_import.pk, True),
    ]
