"""Taking data out: preference data sets in the shapes TRL, Chatbot Arena and HH-RLHF use, each with a dataset card.

    filters     ExportFilters (which votes, how they are combined) and the query that finds the votes
    formats     the format registry: columns, row builders and what the card says about each format
    writers     JSON Lines and Parquet files, written as rows come
    stream      export_write: votes read in chunks, combined, written; the statistics the card reports
    card        the dataset card (templates/exports/card.md) and reading it back
    services    the Export record: create, run, files

Callers use the names re-exported here (`from annotate import exports; exports.export_create(...)`).
"""

from annotate.data.exports.card import card_path, card_read, dataset_card
from annotate.data.exports.filters import SOURCES, ExportFilters, date_errors, filter_errors, judgements_matching
from annotate.data.exports.formats import DATASET_FORMATS, FORMATS, DatasetFormat, RowContext
from annotate.data.exports.services import (
    export_create,
    export_default_path,
    export_enqueue,
    export_errors,
    export_files,
    export_request,
    export_run,
    exports_abandoned_end,
)
from annotate.data.exports.stream import ExportStats, export_write
from annotate.data.exports.writers import FILE_FORMATS

__all__ = [
    "DATASET_FORMATS",
    "FILE_FORMATS",
    "FORMATS",
    "SOURCES",
    "DatasetFormat",
    "ExportFilters",
    "ExportStats",
    "RowContext",
    "card_path",
    "card_read",
    "dataset_card",
    "date_errors",
    "export_create",
    "export_default_path",
    "export_enqueue",
    "export_errors",
    "export_files",
    "export_request",
    "export_run",
    "export_write",
    "exports_abandoned_end",
    "filter_errors",
    "judgements_matching",
]
