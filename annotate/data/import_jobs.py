"""Imports asked for on a page or through the API, run by a worker: the DataImport record's services.

The request checks what it can at once (size, format, UTF-8, a CSV's header), stores the file in the DataImport row
and hands it to a worker; the worker reads, checks and writes it with the functions of `imports` (what the management
commands run in the foreground), reporting progress on the row. The write and the "done" are one transaction: a
worker killed midway leaves nothing imported, and `data_imports_abandoned_end` ends its record saying so.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from annotate.broker import enqueue
from annotate.data import imports
from annotate.models import DataImport, ModelVersion
from annotate.owners import heartbeat, holder_is_dead, holder_name

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 1.0  # seconds between heartbeats, each with the rows written so far (the page polls every second)
LINE_ERRORS_KEPT = 1000  # bad lines stored on the record (all are counted)
_HEADER_BYTES = 64 * 1024  # how much of a CSV upload is read in the request to check its header
_UTF8_CHUNK = 1024 * 1024


class NoLongerHeld(Exception):
    """The import was ended (its worker taken for dead) while this worker was still writing: its writes roll back."""


# --- In the request: check cheaply, record, hand to a worker -------------------------------------------------------


def _check_utf8(content: bytes) -> None:
    """ImportRejected naming the first byte that is not UTF-8; a chunk at a time, so no copy of the text is made."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(content)
    for start in range(0, max(len(content), 1), _UTF8_CHUNK):
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(view[start : start + _UTF8_CHUNK], final=start + _UTF8_CHUNK >= len(content))
        except UnicodeDecodeError as error:
            byte = start - pending + error.start
            raise imports.ImportRejected(f"the file is not UTF-8 text (byte {byte} cannot be read)") from None


def _check_csv_header(content: bytes) -> None:
    start = content[:_HEADER_BYTES].decode("utf-8-sig", errors="ignore")
    if "\n" in start:  # the whole first line is there (a longer one is left to the worker's full check)
        imports.check_prompt_csv_header(start)


def _fingerprint(*, kind: str, file_format: str, options: dict[str, Any], content: bytes) -> str:
    digest = hashlib.sha256(json.dumps([kind, file_format, options], sort_keys=True).encode())
    digest.update(b"\n")
    digest.update(content)
    return digest.hexdigest()


def data_import_request(
    *, created_by: User, kind: str, upload: UploadedFile, file_format: str | None, options: dict[str, Any]
) -> tuple[DataImport, bool]:
    """Check an uploaded file as far as can be done at once, record it and hand it to a worker once committed.

    ImportRejected (and nothing recorded) for a file that is too big, in an unknown format, not UTF-8, or a CSV
    without a prompt column. The same upload (kind, format, options and file) sent again while the first is still
    queued or running answers with the first, and False: a retried POST never imports a file twice at once (once it
    is done, importing it again stores nothing new: prompts and preferences stored already are skipped, as ever).
    """
    imports.check_size(upload.size or 0)
    name = upload.name or "upload"
    if kind == DataImport.Kind.PROMPTS:
        file_format = imports.prompt_file_format(name, file_format)
    elif file_format not in imports.PREFERENCE_FORMATS:
        raise imports.ImportRejected(
            f"unknown format {file_format!r}: use one of {', '.join(imports.PREFERENCE_FORMATS)}"
        )
    content = upload.read()
    imports.check_size(len(content))
    _check_utf8(content)
    if file_format == "csv":
        _check_csv_header(content)
    fingerprint = _fingerprint(kind=kind, file_format=file_format, options=options, content=content)
    with transaction.atomic():
        active = DataImport.objects.filter(fingerprint=fingerprint, status__in=DataImport.ACTIVE_STATUSES).first()
        if active is not None:
            return active, False
        try:
            with transaction.atomic():
                data_import = DataImport.objects.create(
                    kind=kind,
                    file_name=imports.source_name(name),
                    file_format=file_format,
                    options=options,
                    content=content,
                    size_bytes=len(content),
                    fingerprint=fingerprint,
                    created_by=created_by,
                )
        except IntegrityError:  # the same upload, recorded by another request a moment ago
            return DataImport.objects.get(fingerprint=fingerprint, status__in=DataImport.ACTIVE_STATUSES), False
        del data_import.content  # deferred from now on, as when loaded: refresh_from_db would read the file back
        transaction.on_commit(lambda: data_import_enqueue(data_import=data_import))
    data_import.refresh_from_db()
    return data_import, True


def data_import_enqueue(*, data_import: DataImport) -> bool:
    """Hand a queued import to a worker; False (noted on the import, logged) when the task queue is unreachable.
    Sending twice is harmless: an import runs once (DataImport.start)."""
    if not enqueue("annotate.tasks.data_import_run", data_import.pk):
        data_import.note_waiting(reason="not started yet: the task queue could not be reached")
        return False
    if data_import.error:
        data_import.note_waiting(reason="")
    return True


# --- In the worker: read, check, write -----------------------------------------------------------------------------


class _RowCounter:
    """Rows written so far: added to by the import, read by the heartbeat thread that reports it."""

    def __init__(self, also: imports.Progress | None) -> None:
        self._lock = threading.Lock()
        self._also = also
        self.rows = 0

    def __call__(self, done: int) -> None:
        with self._lock:
            self.rows += done
        if self._also is not None:
            self._also(done)


def _line_errors(errors: list[imports.LineError]) -> list[dict[str, Any]]:
    return [asdict(error) for error in errors[:LINE_ERRORS_KEPT]]


def _renewer(data_import: DataImport, counter: _RowCounter) -> Callable[[], bool]:
    def renew() -> bool:
        try:
            return data_import.renew(rows_done=counter.rows)
        except DatabaseError as error:
            # SQLite has one writer at a time, and the import's own transaction is it: the beat waits for the next
            # turn. (PostgreSQL lets it through; the lease is there for a worker that stopped, not a busy one.)
            logger.info("%s: heartbeat not written this time: %s", data_import, error)
            return True

    return renew


def _write_prompts(data_import: DataImport, text: str, counter: _RowCounter) -> None:
    rows = imports.parse_prompts(text, file_format=data_import.file_format)
    data_import.record_total(rows_total=len(rows))
    with transaction.atomic():
        result = imports.prompts_import(
            rows=rows,
            prompt_set=data_import.options.get("prompt_set") or "default",
            source=data_import.file_name,
            on_progress=counter,
        )
        if not data_import.finish(result=asdict(result), line_errors=[], line_error_count=0):
            raise NoLongerHeld


def _write_preferences(data_import: DataImport, lines: imports.LineSource, counter: _RowCounter) -> None:
    parsed = imports.parse_preferences(
        lines, dataset_format=data_import.file_format, skip_bad=bool(data_import.options.get("skip_bad"))
    )
    data_import.record_total(rows_total=len(parsed.rows))
    with transaction.atomic():
        # Two imports of the same format take turns: each skips the preferences the other stored, which it could
        # not see while both were writing.
        version = imports.external_version(dataset_format=data_import.file_format)
        ModelVersion.objects.select_for_update().filter(pk=version.pk).first()
        result = imports.preferences_import(
            preference_file=parsed,
            dataset_format=data_import.file_format,
            file_name=data_import.file_name,
            prompt_set=data_import.options.get("prompt_set") or "imported",
            on_progress=counter,
        )
        summary = {**asdict(result), "skipped": len(result.skipped)}
        if not data_import.finish(
            result=summary, line_errors=_line_errors(result.skipped), line_error_count=len(result.skipped)
        ):
            raise NoLongerHeld


def data_import_run(*, data_import: DataImport, on_progress: imports.Progress | None = None) -> DataImport:
    """Read, check and write an import's file, recording progress and the outcome on the DataImport. Runs once per
    import: one started elsewhere (or over) is returned as it is."""
    if not data_import.start(holder=holder_name()):
        return data_import
    counter = _RowCounter(on_progress)
    lease = settings.DATA_IMPORT_LEASE_SECONDS
    try:
        with heartbeat(_renewer(data_import, counter), every=min(PROGRESS_INTERVAL, lease / 3), name=str(data_import)):
            content = bytes(DataImport.objects.filter(pk=data_import.pk).values_list("content", flat=True).get())
            if data_import.kind == DataImport.Kind.PROMPTS:
                text = imports.decode(content)
                del content
                _write_prompts(data_import, text, counter)
            else:
                # Read a line at a time from the stored bytes, twice (check, then write): no decoded copy of the
                # whole file and no list of its rows.
                _write_preferences(data_import, imports.content_lines(content), counter)
    except imports.ImportRejected as rejected:
        data_import.fail(
            error=rejected.message, line_errors=_line_errors(rejected.lines), line_error_count=len(rejected.lines)
        )
    except NoLongerHeld:
        logger.warning("%s was ended while its worker wrote it; nothing was imported", data_import)
    except BaseException as error:
        logger.exception("%s failed", data_import)
        data_import.fail(error=f"{type(error).__name__}: {error}; nothing was imported")
        if not isinstance(error, Exception):
            raise
    data_import.refresh_from_db()
    return data_import


def data_imports_abandoned_end() -> int:
    """End the running imports whose worker is gone (no heartbeat for DATA_IMPORT_LEASE_SECONDS, or a process of
    this host that no longer exists), saying so; returns how many. They wrote nothing: their transaction died with
    them."""
    silent_since = timezone.now() - timedelta(seconds=settings.DATA_IMPORT_LEASE_SECONDS)
    ended = 0
    for data_import in DataImport.objects.filter(status=DataImport.Status.RUNNING):
        alive = data_import.heartbeat_at is not None and data_import.heartbeat_at > silent_since
        if alive and not holder_is_dead(data_import.holder):
            continue
        last = f"{data_import.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC" if data_import.heartbeat_at else "its start"
        reason = (
            f"its worker ({data_import.holder or 'unknown'}) stopped without finishing: no sign of life since {last}; "
            "nothing was imported (an import is written in one transaction): upload the file again"
        )
        try:
            ended_now = data_import.end_abandoned(reason=reason)
        except DatabaseError as error:  # SQLite: a live import's transaction holds the one write lock
            logger.info("%s not ended this time: %s", data_import, error)
            continue
        if ended_now:
            logger.warning("%s ended: %s", data_import, reason)
            ended += 1
    # Queued, and no worker took it within a lease: its message may be gone with a broker that restarted without
    # keeping it. Sent again (an import runs once, so a second message is harmless), at most once a lease.
    for data_import in DataImport.unclaimed(silent_since=silent_since):
        if data_import_enqueue(data_import=data_import) and data_import.note_sent_again():
            logger.warning("%s was still queued after %s s: sent to the workers again", data_import,
                           settings.DATA_IMPORT_LEASE_SECONDS)  # fmt: skip
    return ended
