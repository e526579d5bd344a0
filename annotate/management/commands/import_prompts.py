"""manage.py import_prompts FILE [--set NAME] [--format jsonl|csv|text]"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from annotate.data import imports


class Command(BaseCommand):
    help = (
        "Import prompts from JSON Lines (prompt, messages, ShareGPT conversations or MT-Bench turns), CSV (a prompt "
        "column) or plain text (one prompt a line). A file with any bad line imports nothing; duplicates are skipped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--set", dest="prompt_set", default="default", help="prompt set to put them in")
        parser.add_argument("--format", choices=imports.PROMPT_FILE_FORMATS, help="default: from the file name")

    def handle(self, *args: Any, file: Path, prompt_set: str, format: str | None, **options: Any) -> None:
        if not file.is_file():
            raise CommandError(f"{file} is not a file")
        try:
            rows = imports.parse_prompts(
                imports.read_file(file), file_format=imports.prompt_file_format(file.name, format)
            )
            with tqdm(total=len(rows), desc="storing prompts", unit="prompt", disable=options["verbosity"] < 1) as bar:
                result = imports.prompts_import(
                    rows=rows, prompt_set=prompt_set[:100], source=file.name, on_progress=bar.update
                )
        except imports.ImportRejected as rejected:
            raise CommandError(f"{file}: {rejected}") from None
        self.stdout.write(
            f"{result.created} prompts imported into set {result.prompt_set!r}; {result.duplicates} duplicates skipped"
        )
