"""Work whose worker dies without a word is ended with a reason, within a bound, never left "running".

An export runs in its own process, as a Celery worker runs it, on this test's database; the process is SIGKILLed or
SIGSTOPped midway, and the beat's `work_abandoned_end` looks, as it does every 30 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from annotate.annotation import services as annotation
from annotate.data import exports
from annotate.data.exports import ExportFilters
from annotate.models import Export
from annotate.tasks import work_abandoned_end
from tests.integration.conftest import REPO, shared_database_url, wait_until

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
