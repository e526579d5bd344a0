import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotate.sampling.local_server import base_model_prepare, vllm_command


class Command(BaseCommand):
    help = "Start a local vLLM OpenAI-compatible server for the base model, with run-time LoRA loading."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--print", action="store_true", help="Print the command instead of running it.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            model = base_model_prepare()
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from error
        command, environment = vllm_command(model)
        if options["print"]:
            self.stdout.write(" ".join(command))
            return
        self.stdout.flush()
        os.execve(command[0], command, environment)  # the server replaces this process, so signals reach it
