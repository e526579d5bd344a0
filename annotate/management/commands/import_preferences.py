"""manage.py import_preferences FILE --format trl|hh-rlhf|ultrafeedback [--skip-bad] [--set NAME]"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from annotate.data import imports


class Command(BaseCommand):
    help = (
        "Import preference data (JSON Lines) as imported votes: TRL preference rows, Anthropic HH-RLHF transcripts "
        "or UltraFeedback-binarized rows. Any bad row rejects the whole file unless --skip-bad."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", required=True, choices=imports.PREFERENCE_FORMATS)
        parser.add_argument("--skip-bad", action="store_true", help="import the good rows and list the bad ones")
        parser.add_argument("--set", dest="prompt_set", default="imported", help="prompt set for new prompts")

    def handle(self, *args: Any, file: Path, format: str, skip_bad: bool, prompt_set: str, **options: Any) -> None:
        if not file.is_file():
            raise CommandError(f"{file} is not a file")
        try:
            parsed = imports.parse_preferences(imports.file_lines(file), dataset_format=format, skip_bad=skip_bad)
            bar = tqdm(total=len(parsed.rows), desc="storing pairs", unit="pair", disable=options["verbosity"] < 1)
            with bar:
                result = imports.preferences_import(
                    preference_file=parsed,
                    dataset_format=format,
                    file_name=file.name,
                    prompt_set=prompt_set[:100],
                    on_progress=bar.update,
                )
        except imports.ImportRejected as rejected:
            raise CommandError(f"{file}: {rejected}") from None
        self.stdout.write(
            f"{result.imported} pairs imported as votes of {result.model_version} "
            f"({result.new_prompts} new prompts); {result.duplicates} already imported, skipped"
        )
        if result.skipped:
            self.stdout.write(f"{len(result.skipped)} bad rows skipped:")
            for error in result.skipped:
                self.stdout.write(f"  {error}")
