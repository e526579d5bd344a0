"""Simulated annotators with a known taste: they show the loop moving the model where the votes point."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from django.contrib.auth.models import User

from annotate import services
from annotate.models import Judgement

# Given the left and the right answer: (choice as on screen, strength or None).
Preference = Callable[[str, str], tuple[str, int | None]]


def _strength(ratio: float) -> int:
    return 3 if ratio >= 2 else 2 if ratio >= 1.3 else 1


def prefer_shorter(left: str, right: str) -> tuple[str, int | None]:
    if len(left) == len(right):
        return "tie", None
    short, long = sorted((len(left), len(right)))
    return ("left" if len(left) < len(right) else "right"), _strength(long / max(short, 1))


def prefer_longer(left: str, right: str) -> tuple[str, int | None]:
    choice, strength = prefer_shorter(left, right)
    return {"left": "right", "right": "left"}.get(choice, choice), strength


def prefer_keyword(word: str) -> Preference:
    word = word.lower()

    def prefer(left: str, right: str) -> tuple[str, int | None]:
        has_left, has_right = word in left.lower(), word in right.lower()
        if has_left == has_right:
            return ("tie" if has_left else "both_bad"), None
        return ("left" if has_left else "right"), 3

    return prefer


def preference_from_spec(spec: str) -> Preference:
    if spec == "shorter":
        return prefer_shorter
    if spec == "longer":
        return prefer_longer
    if spec.startswith("keyword:") and spec.removeprefix("keyword:").strip():
        return prefer_keyword(spec.removeprefix("keyword:").strip())
    raise ValueError(f"--prefer must be shorter, longer or keyword:WORD, not {spec!r}")


def simulated_annotator_judge(*, annotators: Sequence[User], preference: Preference, limit: int) -> int:
    """Each annotator in turn leases a pair and votes on it as a person would; returns the votes given."""
    given, turn = 0, 0
    done: set[int] = set()
    while given < limit and len(done) < len(annotators):
        annotator = annotators[turn % len(annotators)]
        turn += 1
        if annotator.pk in done:
            continue
        assignment = services.assignment_lease_next(annotator=annotator)
        if assignment is None:
            done.add(annotator.pk)  # nothing left that this annotator has not seen
            continue
        choice, strength = preference(assignment.left.text, assignment.right.text)
        services.judgement_record(
            annotator=annotator,
            pair_id=assignment.pair_id,
            choice=choice,
            strength=strength,
            rationale=f"simulated: {preference.__name__}",
            idempotency_key=uuid.uuid4(),
            source=Judgement.Source.SIMULATED,
        )
        given += 1
    return given
