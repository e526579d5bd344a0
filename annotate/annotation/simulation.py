"""Simulated annotators with a known taste: they show the loop moving the model where the votes point."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Protocol

from django.contrib.auth.models import User

from annotate.annotation import rankings, services
from annotate.models import Assignment, Judgement


class Preference(Protocol):
    """A taste: given the left and the right answer (and the prompt they answer), the choice as on screen (left,
    right, tie or both_bad) and a strength or None."""

    def __call__(self, left: str, right: str, prompt: str = "") -> tuple[str, int | None]: ...


def _strength(ratio: float) -> int:
    return 3 if ratio >= 2 else 2 if ratio >= 1.3 else 1


def prefer_shorter(left: str, right: str, prompt: str = "") -> tuple[str, int | None]:
    if len(left) == len(right):
        return "tie", None
    short, long = sorted((len(left), len(right)))
    return ("left" if len(left) < len(right) else "right"), _strength(long / max(short, 1))


def prefer_longer(left: str, right: str, prompt: str = "") -> tuple[str, int | None]:
    choice, strength = prefer_shorter(left, right)
    return {"left": "right", "right": "left"}.get(choice, choice), strength


def prefer_keyword(word: str) -> Preference:
    word = word.lower()

    def prefer(left: str, right: str, prompt: str = "") -> tuple[str, int | None]:
        has_left, has_right = word in left.lower(), word in right.lower()
        if has_left == has_right:
            return ("tie" if has_left else "both_bad"), None
        return ("left" if has_left else "right"), 3

    return prefer


# A non-answer, as the simulated people (and bench/loop.py's "collapsed" check) see it: fewer than this many words,
# or not one of the prompt's key words (its words of four letters or more, less a few that carry no topic).
NON_ANSWER_MIN_WORDS = 8
_WORD = re.compile(r"[a-z]+")
# fmt: off
_NOT_KEY = frozenset((
    "about", "above", "after", "also", "been", "before", "could", "does", "each", "every", "from", "have", "here",
    "into", "just", "like", "make", "many", "more", "most", "much", "only", "other", "over", "please", "should",
    "some", "such", "than", "that", "them", "then", "there", "these", "they", "this", "those", "through", "very",
    "what", "when", "where", "which", "while", "will", "with", "would", "write", "your",
))
# fmt: on


def prompt_key_words(prompt: str) -> set[str]:
    return {word for word in _WORD.findall(prompt.lower()) if len(word) >= 4 and word not in _NOT_KEY}


def is_non_answer(answer: str, prompt: str) -> bool:
    """Too short to be an answer, or about something else: shares none of the prompt's key words (a prompt without
    key words only has the length check)."""
    words = _WORD.findall(answer.lower())
    if len(answer.split()) < NON_ANSWER_MIN_WORDS:
        return True
    key_words = prompt_key_words(prompt)
    return bool(key_words) and not key_words.intersection(words)


def prefer_shorter_answers(left: str, right: str, prompt: str = "") -> tuple[str, int | None]:
    """Shorter is better, as long as it still answers: a non-answer loses to an answer, and two are both bad."""
    bad_left, bad_right = is_non_answer(left, prompt), is_non_answer(right, prompt)
    if bad_left and bad_right:
        return "both_bad", None
    if bad_left != bad_right:
        return ("right" if bad_left else "left"), 3
    return prefer_shorter(left, right)


def preference_from_spec(spec: str) -> Preference:
    if spec == "shorter":
        return prefer_shorter
    if spec == "shorter-answers":
        return prefer_shorter_answers
    if spec == "longer":
        return prefer_longer
    if spec.startswith("keyword:") and spec.removeprefix("keyword:").strip():
        return prefer_keyword(spec.removeprefix("keyword:").strip())
    raise ValueError(f"--prefer must be shorter, shorter-answers, longer or keyword:WORD, not {spec!r}")


PROFILE_KINDS = ("careful", "noisy", "left-biased", "random", "fast")
_KINDS_WITH_RATE = ("noisy", "left-biased")


@dataclass(frozen=True)
class Decision:
    choice: str  # on screen: left, right, tie or both_bad
    strength: int | None
    seconds: float  # how long the annotator took


@dataclass(frozen=True)
class Profile:
    """How a simulated annotator deviates from the taste (the Preference) everyone is given.

    careful follows the taste; noisy:P follows it with probability P and otherwise answers at random; left-biased:P
    picks the left answer with probability P whatever it says; random picks a side uniformly; fast follows the taste
    but answers in under a second. All but fast take a reading time that grows with the answers' length.
    """

    kind: str
    rate: float | None = None

    @property
    def name(self) -> str:
        return self.kind if self.rate is None else f"{self.kind}:{self.rate:g}"

    def decide(
        self, *, left: str, right: str, preference: Preference, rng: random.Random, prompt: str = ""
    ) -> Decision:
        if self.kind == "fast":
            choice, strength = preference(left, right, prompt)
            return Decision(choice, strength, rng.uniform(0.3, 0.9))
        seconds = _reading_seconds(left, right, rng)
        if self.kind == "careful" or (self.kind == "noisy" and rng.random() < (self.rate or 0.0)):
            choice, strength = preference(left, right, prompt)
            return Decision(choice, strength, seconds)
        if self.kind == "left-biased":
            side = "left" if rng.random() < (self.rate or 0.0) else "right"
            return Decision(side, rng.randint(1, 3), seconds)
        # random, and a noisy annotator's off moments: a side by a coin flip, a strength at random
        return Decision(rng.choice(("left", "right")), rng.randint(1, 3), seconds)


def _reading_seconds(left: str, right: str, rng: random.Random) -> float:
    """About 4 s to take the pair in plus skimming both answers at 30 characters a second, give or take a quarter."""
    return (4.0 + (len(left) + len(right)) / 30.0) * rng.lognormvariate(0.0, 0.25)


def profile_from_spec(spec: str) -> tuple[Profile, int]:
    """Parse one --profile value: KIND[:P][*COUNT], e.g. careful, noisy:0.8, left-biased:0.9*2, random*3."""
    text, _, count_text = spec.strip().partition("*")
    count = 1
    if count_text:
        if not count_text.strip().isdigit() or int(count_text) < 1:
            raise ValueError(f"--profile {spec!r}: the count after * must be a whole number of at least 1")
        count = int(count_text)
    kind, has_rate, rate_text = text.strip().partition(":")
    if kind not in PROFILE_KINDS:
        raise ValueError(f"--profile {spec!r}: the kind must be one of {', '.join(PROFILE_KINDS)}")
    if kind not in _KINDS_WITH_RATE:
        if has_rate:
            raise ValueError(f"--profile {spec!r}: {kind} takes no probability")
        return Profile(kind), count
    try:
        rate = float(rate_text)
    except ValueError:
        raise ValueError(f"--profile {spec!r}: {kind} needs a probability, e.g. {kind}:0.8") from None
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"--profile {spec!r}: the probability must be between 0 and 1")
    return Profile(kind, rate), count


def profiles_from_specs(specs: Sequence[str]) -> list[Profile]:
    """Every --profile value expanded by its count, in order: ["careful*2", "random"] gives three annotators."""
    profiles = []
    for spec in specs:
        profile, count = profile_from_spec(spec)
        profiles.extend([profile] * count)
    return profiles


@dataclass(frozen=True)
class SimulatedAnnotator:
    user: User
    profile: Profile


def _ranks_by_wins(profile: Profile, assignment: Assignment, preference: Preference, rng: random.Random) -> list[int]:
    """A ranking pair ranked as the profile would: each shown answer against each other one, ranked by how many
    of those comparisons it wins (a tie is half a win; equal wins, equal ranks)."""
    answers = assignment.pair.answers()
    shown = [answers[position].text for position in assignment.answer_order]
    prompt = assignment.pair.prompt.last_user_message
    wins = [0.0] * len(shown)
    for first, second in combinations(range(len(shown)), 2):
        choice = profile.decide(left=shown[first], right=shown[second], preference=preference, rng=rng, prompt=prompt)
        if choice.choice == "left":
            wins[first] += 1
        elif choice.choice == "right":
            wins[second] += 1
        else:
            wins[first] += 0.5
            wins[second] += 0.5
    return rankings.ranks_dense([-win for win in wins])


def simulated_annotator_judge(
    *, annotators: Sequence[SimulatedAnnotator], preference: Preference, limit: int, rng: random.Random
) -> int:
    """Each annotator in turn leases a pair and votes on it as a person would; returns the votes given."""
    given, turn = 0, 0
    done: set[int] = set()
    while given < limit and len(done) < len(annotators):
        annotator = annotators[turn % len(annotators)]
        turn += 1
        if annotator.user.pk in done:
            continue
        assignment = services.assignment_lease_next(annotator=annotator.user)
        if assignment is None:
            done.add(annotator.user.pk)  # nothing left that this annotator has not seen
            continue
        decision = annotator.profile.decide(
            left=assignment.left.text,
            right=assignment.right.text,
            preference=preference,
            rng=rng,
            prompt=assignment.pair.prompt.last_user_message,
        )
        ranks = _ranks_by_wins(annotator.profile, assignment, preference, rng) if assignment.pair.is_ranking else None
        # A simulated annotator answers at once: it says how long a person of its profile would have taken.
        services.judgement_record(
            annotator=annotator.user,
            pair_id=assignment.pair_id,
            choice=decision.choice if ranks is None else rankings.RANK,
            strength=decision.strength if ranks is None else None,
            ranks=ranks,
            rationale=f"simulated: {annotator.profile.name}",
            idempotency_key=uuid.uuid4(),
            source=Judgement.Source.SIMULATED,
            time_spent_ms=round(decision.seconds * 1000),
        )
        given += 1
    return given
