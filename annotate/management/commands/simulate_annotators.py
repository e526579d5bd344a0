import time
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from annotate import sampling
from annotate.simulation import preference_from_spec, simulated_annotator_judge


class Command(BaseCommand):
    help = "Judge pending pairs with a known preference, through the same services as a person."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--prefer", required=True, help="shorter, longer or keyword:WORD")
        parser.add_argument("--count", type=int, required=True, help="how many votes to give")
        parser.add_argument("--annotators", type=int, default=1, help="simulated annotators to share the votes")
        parser.add_argument("--sample", action="store_true",
                            help="when no pair is pending, sample more from the model server and go on")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            preference = preference_from_spec(options["prefer"])
        except ValueError as error:
            raise CommandError(str(error)) from error
        if options["count"] < 1 or options["annotators"] < 1:
            raise CommandError("--count and --annotators must be at least 1")
        annotators = [
            User.objects.get_or_create(username=f"simulated-{options['prefer']}-{number}")[0]
            for number in range(1, options["annotators"] + 1)
        ]
        given, idle_since = 0, time.monotonic()
        while given < options["count"]:
            votes = simulated_annotator_judge(
                annotators=annotators, preference=preference, limit=options["count"] - given
            )
            given += votes
            if votes:
                idle_since = time.monotonic()
                continue
            if not options["sample"]:
                break
            if time.monotonic() - idle_since > 120:
                raise CommandError(f"no new pairs to judge for two minutes; {given} votes given")
            if sampling.pairs_refill() == 0:
                time.sleep(2)  # a worker's refill holds the lock, or the server is busy: look again shortly
        self.stdout.write(f"{given} votes given preferring {options['prefer']}")
