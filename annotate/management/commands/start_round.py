import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotate.errors import Conflict, Invalid
from annotate.models import TrainingRound
from annotate.rounds import services as rounds


def _config_value(text: str) -> tuple[str, Any]:
    key, separator, raw = text.partition("=")
    if not separator:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw  # a bare word such as loss_type=ipo


class Command(BaseCommand):
    help = "Start a DPO training round on the serving version (the training worker runs it)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config default, e.g. --set beta=0.2 --set max_steps=20")  # fmt: skip
        parser.add_argument("--wait", action="store_true", help="wait for the round to end; exit 1 unless it serves")
        parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds --wait waits at most")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            overrides = dict(_config_value(item) for item in options["set"])
            training_round = rounds.round_start(trigger=TrainingRound.Trigger.COMMAND, overrides=overrides)
        except (ValueError, Conflict, Invalid) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"round {training_round.pk} queued from {training_round.parent_version.name}")
        if options["wait"]:
            self._wait(training_round, options["timeout"])

    def _wait(self, training_round: TrainingRound, timeout: float) -> None:
        deadline, shown = time.monotonic() + timeout, ""
        while training_round.is_active and time.monotonic() < deadline:
            time.sleep(2)
            training_round.refresh_from_db()
            last = training_round.last_metrics
            line = f"{training_round.get_status_display()}" + (
                f" step {last['step']}/{last.get('max_steps')} loss {last.get('loss')}" if last.get("step") else ""
            )
            if line != shown:
                self.stdout.write(line)
                shown = line
        self.stdout.write(f"round {training_round.pk}: {training_round.get_status_display()}")
        if training_round.evaluation:
            self.stdout.write(json.dumps(training_round.evaluation, indent=2))
        if training_round.status != TrainingRound.Status.SERVING:
            raise CommandError(training_round.error or f"round {training_round.pk} is {training_round.status}")
