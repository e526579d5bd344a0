"""The Export record's services: check and record an export, run it (data file and card), find its files."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from annotate.broker import enqueue
from annotate.data.exports.card import card_path, dataset_card
from annotate.data.exports.filters import ExportFilters, filter_errors, judgements_matching
from annotate.data.exports.formats import DATASET_FORMATS, WEIGHTED_FORMAT
from annotate.data.exports.stream import ExportStats, Progress, export_write
from annotate.data.exports.writers import FILE_FORMATS
from annotate.errors import Invalid
from annotate.models import Export
from annotate.owners import heartbeat, holder_is_dead, holder_name
from training.config import WEIGHTINGS

logger = logging.getLogger(__name__)
PROGRESS_INTERVAL = 1.0  # seconds between progress writes while an export runs


def export_errors(*, dataset_format: str, file_format: str, filters: ExportFilters) -> dict[str, str]:
    """What is wrong with an export request, by field; empty when it can run."""
    errors = {}
    if dataset_format not in DATASET_FORMATS:
        errors["dataset_format"] = f"must be one of {', '.join(DATASET_FORMATS)}"
    if file_format not in FILE_FORMATS:
        errors["file_format"] = f"must be one of {', '.join(FILE_FORMATS)}"
    if filters.weighting not in WEIGHTINGS:
        errors["weighting"] = f"must be one of {', '.join(WEIGHTINGS)}"
    elif filters.weighting != "none" and dataset_format != WEIGHTED_FORMAT:
        errors["weighting"] = f"only {WEIGHTED_FORMAT} rows carry a weight"
    if filters.rules.judge_weighted and dataset_format != WEIGHTED_FORMAT:
        errors["judge"] = f"weight: only {WEIGHTED_FORMAT} rows carry a weight (use out or in)"
    return {**errors, **filter_errors(filters)}


def export_create(*, created_by: User | None, dataset_format: str, file_format: str, filters: ExportFilters) -> Export:
    """Record an export to run; Invalid, naming the fields (and nothing recorded), when the request is wrong."""
    errors = export_errors(dataset_format=dataset_format, file_format=file_format, filters=filters)
    if errors:
        raise Invalid(errors)
    return Export.objects.create(
        created_by=created_by, dataset_format=dataset_format, file_format=file_format, filters=filters.as_dict()
    )


def export_request(*, created_by: User, dataset_format: str, file_format: str, filters: ExportFilters) -> Export:
    """Record an export asked for on the page or through the API and hand it to a worker once it is committed.
    When the task queue cannot be reached the export stays queued and says so (export_enqueue may try again)."""
    with transaction.atomic():
        export = export_create(
            created_by=created_by, dataset_format=dataset_format, file_format=file_format, filters=filters
        )
        transaction.on_commit(lambda: export_enqueue(export=export))
    export.refresh_from_db()
    return export


def export_enqueue(*, export: Export) -> bool:
    """Hand a queued export to a worker; False (noted on the export, logged) when the task queue is unreachable.
    Sending twice is harmless: an export runs once (Export.start)."""
    if not enqueue("annotate.tasks.export_run", export.pk):
        export.note_waiting(reason="not started yet: the task queue could not be reached")
        return False
    if export.error:
        export.note_waiting(reason="")
    return True


def export_default_path(export: Export) -> Path:
    return Path(settings.EXPORT_DIR) / f"export-{export.pk}-{export.dataset_format}.{export.file_format}"


class _ProgressRecorder:
    """Votes read, written to the Export at most once per PROGRESS_INTERVAL seconds (the page polls it)."""

    def __init__(self, export: Export, also: Progress | None) -> None:
        self._export, self._also = export, also
        self.votes_read = 0
        self._last = time.monotonic()

    def __call__(self, done: int) -> None:
        self.votes_read += done
        if time.monotonic() - self._last >= PROGRESS_INTERVAL:
            self._export.record_progress(votes_read=self.votes_read)
            self._last = time.monotonic()
        if self._also is not None:
            self._also(done)


def export_run(*, export: Export, path: Path | None = None, on_progress: Progress | None = None) -> Export:
    """Write the export's data file and its card, recording progress and the outcome on the Export. Runs once per
    export: an export already started elsewhere (or over) is returned as it is."""
    path = (path or export_default_path(export)).resolve()
    filters = ExportFilters.from_dict(export.filters)
    if not export.start(path=str(path), votes_total=judgements_matching(filters).count(), holder=holder_name()):
        return export
    progress = _ProgressRecorder(export, on_progress)
    lease = settings.EXPORT_LEASE_SECONDS
    try:
        with heartbeat(export.renew, every=lease / 3, name=str(export)):
            stats = _export_write_with_card(export, filters, path, progress)
    except BaseException as error:
        logger.exception("export %s (%s to %s) failed", export.pk, export.dataset_format, path)
        export.fail(error=f"{type(error).__name__}: {error}")
        if not isinstance(error, Exception):
            raise
    else:
        export.finish(row_count=stats.rows, votes_read=stats.votes_read)
    return export


def _export_write_with_card(export: Export, filters: ExportFilters, path: Path, progress: Progress) -> ExportStats:
    stats = export_write(
        dataset_format=export.dataset_format,
        file_format=export.file_format,
        filters=filters,
        path=path,
        on_progress=progress,
    )
    card = dataset_card(
        title=f"pairloop export {export.pk}: {export.dataset_format}",
        dataset_format=export.dataset_format,
        file_format=export.file_format,
        filters=filters,
        stats=stats,
        data_file=path.name,
        created=timezone.now(),
        created_by=export.created_by.get_username() if export.created_by else "manage.py export_preferences",
    )
    card_path(path).write_text(card, encoding="utf-8")
    return stats


def exports_abandoned_end() -> int:
    """End the running exports whose worker is gone (no heartbeat for EXPORT_LEASE_SECONDS, or a process of this
    host that no longer exists), saying so; returns how many. Their partial files stay until asked for again."""
    now = timezone.now()
    silent_since = now - timedelta(seconds=settings.EXPORT_LEASE_SECONDS)
    ended = 0
    for export in Export.objects.filter(status=Export.Status.RUNNING):
        if export.heartbeat_at is not None and export.heartbeat_at > silent_since and not holder_is_dead(export.holder):
            continue
        last = f"{export.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if export.heartbeat_at else "its start"
        reason = (
            f"its worker ({export.holder or 'unknown'}) stopped without finishing: no sign of life since {last}; "
            "ask for the export again"
        )
        if export.end_abandoned(reason=reason):
            logger.warning("export %s ended: %s", export.pk, reason)
            ended += 1
    # Queued, and no worker took it within a lease: its message may be gone with a broker that restarted without
    # keeping it. Sent again (an export runs once, so a second message is harmless), at most once a lease.
    for export in Export.unclaimed(silent_since=silent_since):
        if export_enqueue(export=export) and export.note_sent_again():
            logger.warning("export %s was still queued after %s s: sent to the workers again", export.pk,
                           settings.EXPORT_LEASE_SECONDS)  # fmt: skip
    return ended


def export_files(export: Export) -> dict[str, Path]:
    """The data file and the card of a finished export, where they still exist."""
    if export.status != Export.Status.DONE or not export.path:
        return {}
    data = Path(export.path)
    found = {"data": data, "card": card_path(data)}
    return {name: path for name, path in found.items() if path.is_file()}
