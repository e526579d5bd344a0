import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError

from annotate.annotation.simulation import (
    Profile,
    SimulatedAnnotator,
    preference_from_spec,
    profiles_from_specs,
    simulated_annotator_judge,
)
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerUnavailable, client_from_settings, model_server_urls

# `make run` writes the model server's URL here, so that a command in another shell samples from the server it
# started (VLLM_PORT=8110 make run, say) without exporting anything; a VLLM_BASE_URL or VLLM_PORT set in this
# shell still wins.
MODEL_SERVER_URL_FILE = "model-server-url"


def model_server_of_make_run() -> str | None:
    """The URL `make run` recorded, when this shell names no model server itself."""
    if os.environ.get("VLLM_BASE_URL") or os.environ.get("VLLM_PORT"):
        return None
    recorded = Path(settings.VAR_DIR) / MODEL_SERVER_URL_FILE
    url = recorded.read_text().strip() if recorded.is_file() else ""
    return url or None


def model_server_check() -> None:
    """CommandError, in one sentence, when the model server does not answer (a traceback read as a crash)."""
    with client_from_settings(timeout=5) as client:
        if client.is_healthy():
            return
    raise CommandError(
        f"the model server at {', '.join(model_server_urls())} does not answer: start it with `make run` (a local "
        "vLLM takes about a minute to load) or set VLLM_BASE_URL, then run this again"
    )


class Command(BaseCommand):
    help = (
        "Judge pending pairs with a known taste, through the same services as a person. Each simulated annotator "
        "has a profile saying how it deviates from the taste: careful, noisy:P, left-biased:P, random or fast."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--prefer", required=True,
                            help="the taste: shorter, shorter-answers (shorter unless one is a non-answer), longer "
                                 "or keyword:WORD")  # fmt: skip
        parser.add_argument("--count", type=int, required=True, help="how many votes to give in all")
        parser.add_argument("--annotators", type=int, default=None,
                            help="careful annotators sharing the votes (without --profile; default 1)")  # fmt: skip
        parser.add_argument("--profile", action="append", default=[], metavar="KIND[:P][*COUNT]",
                            help="one annotator per profile, COUNT of them with *COUNT; repeat the option to mix, "
                                 "e.g. --profile careful*6 --profile noisy:0.8*2 --profile left-biased:0.9 "
                                 "--profile random")  # fmt: skip
        parser.add_argument("--seed", type=int, default=None, help="seed the annotators' choices (repeatable runs)")
        parser.add_argument("--sample", action="store_true",
                            help="when no pair is pending, sample more from the model server and go on")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            preference = preference_from_spec(options["prefer"])
            profiles = profiles_from_specs(options["profile"])
        except ValueError as error:
            raise CommandError(str(error)) from error
        if profiles and options["annotators"] is not None:
            raise CommandError("give either --annotators (careful ones) or --profile, not both")
        if not profiles:
            profiles = [Profile("careful")] * (1 if options["annotators"] is None else options["annotators"])
        if options["count"] < 1 or not profiles:
            raise CommandError("--count and --annotators must be at least 1")
        if options["sample"]:
            recorded = model_server_of_make_run()
            if recorded:
                settings.VLLM_BASE_URL = recorded
            model_server_check()
        # The profile is in the name, so the same command line votes as the same users again.
        annotators = [
            SimulatedAnnotator(
                user=User.objects.get_or_create(
                    username=f"simulated-{options['prefer']}-{profile.name.replace(':', '-')}-{number}"
                )[0],
                profile=profile,
            )
            for number, profile in enumerate(profiles, start=1)
        ]
        rng = random.Random(options["seed"])
        given, idle_since = 0, time.monotonic()
        while given < options["count"]:
            votes = simulated_annotator_judge(
                annotators=annotators, preference=preference, limit=options["count"] - given, rng=rng
            )
            given += votes
            if votes:
                idle_since = time.monotonic()
                continue
            if not options["sample"]:
                break
            if time.monotonic() - idle_since > 120:
                raise CommandError(f"no new pairs to judge for two minutes; {given} votes given")
            try:
                made = sampling.pairs_refill()
            except ModelServerUnavailable as error:
                raise CommandError(f"the model server stopped answering after {given} votes: {error}") from None
            if made == 0:
                time.sleep(2)  # a worker's refill holds the lock, or the server is busy: look again shortly
        mix = ", ".join(f"{name} x{count}" for name, count in Counter(profile.name for profile in profiles).items())
        self.stdout.write(f"{given} votes given preferring {options['prefer']} ({mix})")
