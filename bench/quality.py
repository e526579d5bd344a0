"""Benchmark: do the annotator flags find the bad annotators? And how long does the quality report take on 100k votes?

    .venv/bin/python -m bench.quality                      # 300 pairs, overlap 3, 10 annotators, then 100k votes
    .venv/bin/python -m bench.quality --runs 3 --scale 0   # three runs of the flags part only

Part 1 (flags). A scratch SQLite database (removed afterwards) holds pairs made directly in the database, with
answers of different lengths, each needing 3 votes. Ten simulated annotators with known profiles vote through the
same services as a person (annotation.simulation, the code behind `simulate_annotators`), all preferring the shorter
answer: 4 careful, 1 noisy:0.8, 1 noisy:0.3, 1 left-biased:0.85, 2 random, 1 fast. Gold pairs and repeats do not
exist in the database yet, so they are simulated through the report's optional inputs: a share of the pairs is gold
with the taste's answer as the expected one, and each annotator judges a share of their pairs again with the sides
swapped (the repeat votes are added to the votes read from the database). Prints each annotator's signals and flags,
then the precision and recall of "flagged" against the profiles meant to be caught (noisy:0.3, left-biased, random,
fast; careful and noisy:0.8 are good enough to keep).

Part 2 (speed). `--scale N` votes (default 100,000; 0 skips it) bulk-written with random labels, then the report's
parts timed against a baseline measured in the same run: reading the same rows' ids and labels in one query.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROFILE_SPECS = ["careful*4", "noisy:0.8", "noisy:0.3", "left-biased:0.85", "random*2", "fast"]
# A profile is "bad" when its votes should not be trusted; the flags should find exactly these.
BAD_KINDS = {"left-biased", "random", "fast"}
WORDS = ["the", "answer", "because", "first", "then", "so", "which", "model", "data", "clear", "short", "long"]


def _django(database: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="annotate.settings",
        DATABASE_URL=f"sqlite:///{database}",
        PAIRLOOP_VAR_DIR=str(database.parent),
        SECRET_KEY="bench-only-secret-key",
        LOG_LEVEL="WARNING",
        # No model server and no worker here: a vote must not ask for more pairs to be sampled.
        PAIR_BUFFER_LOW_WATERMARK="0",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("createcachetable", verbosity=0)


def _is_bad(profile_name: str) -> bool:
    kind, _, rate = profile_name.partition(":")
    return kind in BAD_KINDS or (kind == "noisy" and float(rate) < 0.5)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _pairs(count: int, rng: random.Random, run: int) -> list[Any]:
    from annotate.models import Completion, ModelVersion, Pair, Prompt

    version = ModelVersion.objects.create(name=f"bench-{run}", base_model="/models/base", status="retired")
    pairs = []
    for number in range(count):
        prompt = Prompt.objects.create(
            messages=[{"role": "user", "content": f"Run {run}, question {number}?"}], source="bench"
        )
        # Lengths from 5 to 80 words, never equal, so "prefer shorter" always has an answer.
        lengths = rng.sample(range(5, 81), 2)
        answers = [
            Completion.objects.create(prompt=prompt, model_version=version, text=_text(rng, words)) for words in lengths
        ]
        pairs.append(
            Pair.objects.create(
                prompt=prompt,
                completion_a=answers[0],
                completion_b=answers[1],
                sampled_from=version,
                judgements_required=3,
            )
        )
    return pairs


def _repeats(annotators: list[Any], rate: float, rng: random.Random) -> list[Any]:
    """Each annotator judges a share of their pairs again, sides swapped, as the profile would."""
    from annotate.annotation.simulation import prefer_shorter
    from annotate.models import Judgement
    from annotate.quality.agreement import Vote

    repeats = []
    for annotator in annotators:
        judged = list(
            Judgement.objects.filter(annotator=annotator.user).select_related(
                "pair__completion_a", "pair__completion_b"
            )
        )
        for judgement in rng.sample(judged, max(1, round(len(judged) * rate))):
            a_on_left = not judgement.a_on_left
            text_a, text_b = judgement.pair.completion_a.text, judgement.pair.completion_b.text
            left, right = (text_a, text_b) if a_on_left else (text_b, text_a)
            decision = annotator.profile.decide(left=left, right=right, preference=prefer_shorter, rng=rng)
            label = decision.choice
            if label in ("left", "right"):
                label = "a" if (label == "left") == a_on_left else "b"
            repeats.append(
                Vote(
                    annotator=annotator.user.pk,
                    item=judgement.pair_id,
                    label=label,
                    strength=decision.strength,
                    a_on_left=a_on_left,
                    seconds=decision.seconds,
                    a_is_longer=len(text_a) > len(text_b),
                    is_repeat=True,
                )
            )
    return repeats


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def flags_run(pairs: int, gold_rate: float, repeat_rate: float, seed: int) -> list[tuple[str, set[str]]]:
    """One run of part 1; returns (profile name, flag codes) per annotator."""
    from django.contrib.auth.models import User

    from annotate.annotation.simulation import (
        SimulatedAnnotator,
        prefer_shorter,
        profiles_from_specs,
        simulated_annotator_judge,
    )
    from annotate.models import Judgement
    from annotate.quality.selectors import quality_thresholds, report_from_votes, votes_from_judgements

    rng = random.Random(seed)
    made = _pairs(pairs, rng, seed)
    annotators = [
        SimulatedAnnotator(User.objects.create(username=f"run{seed}-{number}-{profile.name}"), profile)
        for number, profile in enumerate(profiles_from_specs(PROFILE_SPECS), start=1)
    ]
    started = time.perf_counter()
    given = simulated_annotator_judge(annotators=annotators, preference=prefer_shorter, limit=pairs * 3, rng=rng)
    voting_seconds = time.perf_counter() - started
    gold_pairs = rng.sample(made, round(pairs * gold_rate))
    gold = {pair.pk: "a" if len(pair.completion_a.text) < len(pair.completion_b.text) else "b" for pair in gold_pairs}
    this_run = Judgement.objects.filter(annotator__in=[annotator.user for annotator in annotators])
    votes = votes_from_judgements(this_run) + _repeats(annotators, repeat_rate, rng)
    started = time.perf_counter()
    report = report_from_votes(votes, gold=gold, thresholds=quality_thresholds())
    report_seconds = time.perf_counter() - started

    summary = report.agreement
    print(
        f"\nrun {seed}: {given} votes on {pairs} pairs ({voting_seconds:.0f} s through the services), "
        f"{len(gold)} gold pairs, {sum(vote.is_repeat for vote in votes)} repeats; "
        f"alpha nominal {_share(summary.alpha_nominal)}, ordinal {_share(summary.alpha_ordinal)}; "
        f"report {report_seconds:.1f} s"
    )
    header = (
        "annotator", "votes", "left", "p", "median s", "<floor", "longer (all)", "tie", "both bad", "majority",
        "gold", "repeat", "MACE", "flags",
    )  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" for _ in header) + " |")
    results = []
    for row in report.annotators:
        signals = row.signals
        number, profile = row.username.split("-", 2)[1:]
        p_value = signals.position.p_value
        cells = [
            f"{number} {profile}",
            str(signals.votes),
            _share(signals.position.left_share),
            "-" if p_value is None else f"{p_value:.0e}",
            _share(signals.speed.median_seconds),
            _share(signals.speed.share_under_floor),
            f"{_share(signals.longer_share)} ({_share(signals.campaign_longer_share)})",
            _share(signals.tie_rate),
            _share(signals.both_bad_rate),
            _share(signals.majority.share),
            f"{_share(signals.gold.accuracy)} ({signals.gold.answered})",
            f"{_share(signals.consistency.share)} ({signals.consistency.repeats})",
            _share(signals.competence),
            ", ".join(flag.code for flag in signals.flags) or "-",
        ]
        print("| " + " | ".join(cells) + " |")
        results.append((profile, {flag.code for flag in signals.flags}))
    for row in report.annotators:
        for flag in row.signals.flags:
            print(f"  {' '.join(row.username.split('-', 2)[1:])}: {flag.reason}")
    return results


def precision_recall(results: list[tuple[str, set[str]]]) -> None:
    true_positive = sum(1 for profile, flags in results if flags and _is_bad(profile))
    flagged = sum(1 for _, flags in results if flags)
    bad = sum(1 for profile, _ in results if _is_bad(profile))
    precision = true_positive / flagged if flagged else float("nan")
    recall = true_positive / bad if bad else float("nan")
    print(
        f"\nflagged {flagged} of {len(results)} annotators; {bad} have a bad profile; "
        f"precision {precision:.2f} ({true_positive}/{flagged}), recall {recall:.2f} ({true_positive}/{bad})"
    )
    codes = sorted({code for _, flags in results for code in flags})
    for code in codes:
        fired = [profile for profile, flags in results if code in flags]
        on_bad = sum(1 for profile in fired if _is_bad(profile))
        print(f"  flag {code:>15}: on {len(fired)} annotators, {on_bad} of them with a bad profile")
    by_profile: dict[str, list[set[str]]] = {}
    for profile, flags in results:
        by_profile.setdefault(profile, []).append(flags)
    for profile, runs in by_profile.items():
        caught = sum(1 for flags in runs if flags)
        codes = sorted({code for flags in runs for code in flags})
        print(f"  {profile:>18}: flagged {caught}/{len(runs)} ({', '.join(codes) or 'no flag'})")


def _timed(function: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def speed_run(scale: int, seed: int) -> None:
    from django.contrib.auth.models import User
    from django.db import transaction

    from annotate.models import Completion, Judgement, ModelVersion, Pair, Prompt
    from annotate.quality.agreement import (
        QualityThresholds,
        agreement_summary,
        annotator_signals,
        competence,
        pairwise_kappas,
    )
    from annotate.quality.selectors import votes_from_judgements

    rng = random.Random(seed)
    pairs, annotators = scale // 3, 100
    started = time.perf_counter()
    with transaction.atomic():
        version = ModelVersion.objects.create(name="bench-scale", base_model="/models/base", status="retired")
        prompt = Prompt.objects.create(messages=[{"role": "user", "content": "Scale?"}], source="bench")
        users = User.objects.bulk_create(User(username=f"scale-{number}", password="!") for number in range(annotators))
        completions = Completion.objects.bulk_create(
            Completion(prompt=prompt, model_version=version, text="x" * rng.randint(10, 400)) for _ in range(2 * pairs)
        )
        made = Pair.objects.bulk_create(
            Pair(prompt=prompt, completion_a=completions[2 * n], completion_b=completions[2 * n + 1],
                 sampled_from=version, judgements_required=3, judgement_count=3)
            for n in range(pairs)
        )  # fmt: skip
        Judgement.objects.bulk_create(
            (
                Judgement(
                    pair=pair, annotator=user, choice=choice, a_on_left=rng.random() < 0.5,
                    strength=rng.randint(1, 3) if choice in ("a", "b") else None,
                    time_spent_ms=rng.randint(500, 30000), idempotency_key=uuid.uuid4(),
                )
                for pair in made
                for user in rng.sample(users, 3)
                for choice in [rng.choices(("a", "b", "tie", "both_bad"), weights=(45, 45, 6, 4))[0]]
            ),
            batch_size=5000,
        )  # fmt: skip
    queryset = Judgement.objects.filter(pair__sampled_from=version)
    print(f"\n{queryset.count():,} votes written in {time.perf_counter() - started:.0f} s")

    baseline, _ = _timed(lambda: list(queryset.values_list("id", "annotator_id", "pair_id", "choice")))
    read, votes = _timed(lambda: votes_from_judgements(queryset))
    summary, _ = _timed(lambda: agreement_summary(votes))
    signals, _ = _timed(lambda: annotator_signals(votes, thresholds=QualityThresholds(), competences={}))
    kappas, found = _timed(lambda: pairwise_kappas(votes, min_shared_items=10), repeat=1)
    mace, _ = _timed(lambda: competence(votes), repeat=1)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average {load} (2 cores); medians of 3 runs, MACE once")
    print("| step | seconds | ratio to baseline |")
    print("| --- | ---: | ---: |")
    for name, seconds in [
        ("baseline: ids and labels in one query", baseline),
        ("votes_from_judgements (one query, lengths in SQL)", read),
        ("agreement_summary (both alphas)", summary),
        ("annotator_signals, every signal and flag but MACE", signals),
        (f"pairwise_kappas ({len(found):,} pairs of annotators with 10+ shared pairs)", kappas),
        ("competence (MACE, crowd-kit, 50 iterations)", mace),
    ]:
        print(f"| {name} | {seconds:.2f} | {seconds / baseline:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300, help="pairs in part 1, each judged 3 times")
    parser.add_argument("--runs", type=int, default=1, help="runs of part 1 (seeds 1, 2, ...); 0 skips it")
    parser.add_argument("--gold-rate", type=float, default=0.1)
    parser.add_argument("--repeat-rate", type=float, default=0.1)
    parser.add_argument("--scale", type=int, default=100_000, help="votes for part 2; 0 skips it")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pairloop-bench-quality-") as scratch:
        _django(Path(scratch) / "bench.sqlite3")
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
        print(f"profiles: {' '.join(PROFILE_SPECS)}; load average {load} (2 cores)")
        results = []
        for seed in range(1, arguments.runs + 1):
            results += flags_run(arguments.pairs, arguments.gold_rate, arguments.repeat_rate, seed)
        if results:
            precision_recall(results)
        if arguments.scale:
            speed_run(arguments.scale, seed=0)


if __name__ == "__main__":
    main()
