"""The Export record's services: check and record an export, run it (data file and card), find its files."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from annotate.exports.card import card_path, dataset_card
from annotate.exports.filters import ExportFilters, filter_errors, judgements_matching
from annotate.exports.formats import DATASET_FORMATS
from annotate.exports.stream import Progress, export_write
from annotate.exports.writers import FILE_FORMATS
from annotate.models import Export

logger = logging.getLogger(__name__)


class InvalidExport(Exception):
    """An export request that cannot run; `errors` names the fields. Nothing was recorded."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = errors


def export_errors(*, dataset_format: str, file_format: str, filters: ExportFilters) -> dict[str, str]:
    """What is wrong with an export request, by field; empty when it can run."""
    errors = {}
    if dataset_format not in DATASET_FORMATS:
        errors["dataset_format"] = f"must be one of {', '.join(DATASET_FORMATS)}"
    if file_format not in FILE_FORMATS:
        errors["file_format"] = f"must be one of {', '.join(FILE_FORMATS)}"
    return {**errors, **filter_errors(filters)}


def export_create(
    *,
    created_by: User | None,
    dataset_format: str,
    file_format: str,
    filters: ExportFilters,
    max_votes: int | None = None,
) -> Export:
    """Record an export to run; InvalidExport when the request is wrong or matches more than max_votes votes."""
    errors = export_errors(dataset_format=dataset_format, file_format=file_format, filters=filters)
    if not errors and max_votes is not None:
        count = judgements_matching(filters).count()
        if count > max_votes:
            errors["filters"] = (
                f"{count:,} votes match; exports over {max_votes:,} votes (EXPORT_WEB_MAX_VOTES) "
                "run with `manage.py export_preferences`"
            )
    if errors:
        raise InvalidExport(errors)
    return Export.objects.create(
        created_by=created_by, dataset_format=dataset_format, file_format=file_format, filters=filters.as_dict()
    )


def export_default_path(export: Export) -> Path:
    return Path(settings.EXPORT_DIR) / f"export-{export.pk}-{export.dataset_format}.{export.file_format}"


def export_run(*, export: Export, path: Path | None = None, on_progress: Progress | None = None) -> Export:
    """Write the export's data file and its card, recording the outcome on the Export. Runs once per export:
    an export already started elsewhere is returned as it is."""
    path = (path or export_default_path(export)).resolve()
    started = Export.objects.filter(pk=export.pk, status=Export.Status.QUEUED).update(
        status=Export.Status.RUNNING, path=str(path)
    )
    if started != 1:
        export.refresh_from_db()
        return export
    filters = ExportFilters.from_dict(export.filters)
    try:
        stats = export_write(
            dataset_format=export.dataset_format,
            file_format=export.file_format,
            filters=filters,
            path=path,
            on_progress=on_progress,
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
    except BaseException as error:
        logger.exception("export %s (%s to %s) failed", export.pk, export.dataset_format, path)
        Export.objects.filter(pk=export.pk).update(
            status=Export.Status.FAILED, error=f"{type(error).__name__}: {error}", finished_at=timezone.now()
        )
        if not isinstance(error, Exception):
            raise
    else:
        Export.objects.filter(pk=export.pk).update(
            status=Export.Status.DONE, row_count=stats.rows, finished_at=timezone.now()
        )
    export.refresh_from_db()
    return export


def export_files(export: Export) -> dict[str, Path]:
    """The data file and the card of a finished export, where they still exist."""
    if export.status != Export.Status.DONE or not export.path:
        return {}
    data = Path(export.path)
    found = {"data": data, "card": card_path(data)}
    return {name: path for name, path in found.items() if path.is_file()}
