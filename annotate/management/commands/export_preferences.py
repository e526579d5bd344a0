"""manage.py export_preferences --format trl-preference|trl-unpaired|arena|hh-rlhf [--output FILE] [filters]"""

from datetime import date
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from annotate.data import exports
from annotate.errors import Invalid
from annotate.models import Export
from training.config import WEIGHTINGS

_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class Command(BaseCommand):
    help = (
        "Export votes as a dataset (JSON Lines or Parquet) with a dataset card beside it (same name, .md). "
        "Streams: any number of votes in flat memory. The export is recorded and listed on the exports page."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", required=True, choices=exports.DATASET_FORMATS, dest="dataset_format")
        parser.add_argument("--output", type=Path, help="data file (.jsonl or .parquet); default: in EXPORT_DIR")
        parser.add_argument("--file-format", choices=exports.FILE_FORMATS, help="default: from --output, or jsonl")
        parser.add_argument("--since", type=date.fromisoformat, help="votes cast on or after this day (YYYY-MM-DD)")
        parser.add_argument("--until", type=date.fromisoformat, help="votes cast on or before this day")
        parser.add_argument("--prompt-set", action="append", default=[], dest="prompt_sets", metavar="NAME")
        parser.add_argument(
            "--model-version", action="append", default=[], dest="model_versions", metavar="NAME",
            help="pairs sampled from this version (repeat for several)",
        )  # fmt: skip
        parser.add_argument("--annotator", action="append", default=[], dest="annotators", metavar="USERNAME")
        parser.add_argument("--source", action="append", default=[], dest="sources", choices=exports.SOURCES)
        parser.add_argument("--on-policy", action="store_true", help="only pairs whose answers both come from "
                            "the version that served when the pair was sampled")  # fmt: skip
        parser.add_argument("--combine", choices=("majority", "all", "unanimous"), default="majority")
        parser.add_argument("--min-agreement", type=float, default=0.0)
        parser.add_argument("--include-ties", action="store_true")
        parser.add_argument("--include-both-bad", action="store_true")
        parser.add_argument("--include-gold", action="store_true", help="votes on gold pairs (left out by default)")
        parser.add_argument("--include-repeats", action="store_true", help="repeat votes (left out by default)")
        parser.add_argument("--include-excluded-annotators", action="store_true",
                            help="votes of annotators staff excluded (left out by default)")  # fmt: skip
        parser.add_argument("--min-competence", type=float, default=0.0,
                            help="leave out annotators whose MACE competence is lower (0: keep all)")  # fmt: skip
        parser.add_argument("--weighting", choices=WEIGHTINGS, default="none",
                            help="trl-preference only: a weight column from the votes' strength and/or their "
                                 "voters' competence")  # fmt: skip
        parser.add_argument("--license", default="", help="the licence the dataset card states")

    def handle(self, *args: Any, **options: Any) -> None:
        output: Path | None = options["output"]
        file_format = options["file_format"] or (_SUFFIXES.get(output.suffix.lower()) if output else "jsonl")
        if file_format is None:
            raise CommandError("--output must end with .jsonl or .parquet (or give --file-format)")
        try:
            filters = exports.ExportFilters.from_values(
                {**options, "date_from": options["since"], "date_to": options["until"]}
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        try:
            export = exports.export_create(
                created_by=None, dataset_format=options["dataset_format"], file_format=file_format, filters=filters
            )
        except Invalid as invalid:
            raise CommandError(str(invalid)) from None
        total = exports.judgements_matching(filters).count()
        with tqdm(total=total, desc="reading votes", unit="vote", disable=options["verbosity"] < 1) as bar:
            export = exports.export_run(export=export, path=output, on_progress=bar.update)
        if export.status != Export.Status.DONE:
            raise CommandError(f"export {export.pk} failed: {export.error}")
        self.stdout.write(f"export {export.pk}: {export.row_count} rows in {export.path}")
        self.stdout.write(f"dataset card: {exports.card_path(Path(export.path))}")
