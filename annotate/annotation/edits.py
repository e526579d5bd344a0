"""Answers annotators write: with a vote, the annotator may edit the answer they chose, or write one when both are
bad; on a ranking pair, the answer they rank first, or one when all are bad. The edit is stored with the vote, in
the same transaction and under the same idempotency key, as a HumanAnswer (author, the sampled answer it started
from, the diff's size); it trains and is exported as the chosen answer against each of the pair's sampled answers
(all K of a ranking pair; PreferenceRules.edits) unless staff reject it.
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction

from annotate.annotation import rankings
from annotate.annotation.services import RecordedJudgement, judgement_record
from annotate.errors import Invalid
from annotate.models import Completion, HumanAnswer, Judgement, Pair

# Where the edit started, as the page says it: the answer shown on that side, or (empty) the side voted for.
EDIT_FROM_CHOICES = ("", "left", "right")
# Words and single other characters (white space between them is not counted): the units the diff is counted in.
_DIFF_TOKENS = re.compile(r"\w+|[^\w\s]")
# Up to this many token pairs (about 500 words against 500) the matcher looks at every token; above, it leaves out
# tokens that make up over 1 % of a long text (difflib's autojunk), without which its time grows with the product
# of the lengths: 16-46 s on 10,000 repeated words, under 50 ms with it.
DIFF_EXACT_MAX_PAIRS = 250_000


@dataclass(frozen=True)
class DiffSize:
    added: int
    removed: int


def diff_size(source: str, edited: str) -> DiffSize:
    """Characters added and removed between two texts, counted over the words (and punctuation marks) difflib's
    matcher finds inserted, deleted or replaced. Exact up to DIFF_EXACT_MAX_PAIRS token pairs; longer texts are
    matched with difflib's junk heuristic, which bounds the time and may count a little more as changed."""
    before, after = _DIFF_TOKENS.findall(source), _DIFF_TOKENS.findall(edited)
    added = removed = 0
    exact = len(before) * len(after) <= DIFF_EXACT_MAX_PAIRS
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=not exact)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            removed += sum(map(len, before[i1:i2]))
        if tag in ("replace", "insert"):
            added += sum(map(len, after[j1:j2]))
    return DiffSize(added, removed)


def edit_normalised(text: str) -> str:
    """What is stored of a written answer: line ends as newlines, no white space around it."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def edit_problems(text: str, edit_from: str = "") -> dict[str, str]:
    """What is wrong with a written answer as sent, by field; empty when it may be stored."""
    errors = {}
    if len(text) > settings.EDIT_MAX_LENGTH:
        errors["edit"] = f"must be at most {settings.EDIT_MAX_LENGTH} characters (it has {len(text)})"
    elif "\x00" in text:
        errors["edit"] = "must not contain NUL characters"
    if edit_from not in EDIT_FROM_CHOICES:
        errors["edit_from"] = "must be left, right or empty (the side voted for)"
    return errors


def judgement_record_with_edit(
    *,
    annotator: User,
    pair_id: int,
    choice: str,
    strength: int | None,
    rationale: str,
    idempotency_key: uuid.UUID,
    edit: str = "",
    edit_from: str = "",
    source: str = Judgement.Source.HUMAN,
    time_spent_ms: int | None = None,
    ranks: Sequence[int] | None = None,
) -> RecordedJudgement:
    """Record a vote (judgement_record) and the answer written with it, as one: both are stored or neither.

    A resend under the same idempotency key answers with what was stored the first time and stores nothing (the edit
    it carries is not looked at). Invalid when the edit is too long, holds NUL characters, or the pair's campaign
    takes no written answers; Conflict as judgement_record (the pair is not the annotator's to judge). An edit that
    leaves the answer it started from as it was is no edit: the vote alone is stored."""
    text = edit_normalised(edit)
    errors = edit_problems(text, edit_from)
    if errors:
        raise Invalid(errors)

    def vote() -> RecordedJudgement:
        return judgement_record(
            annotator=annotator,
            pair_id=pair_id,
            choice=choice,
            strength=strength,
            rationale=rationale,
            idempotency_key=idempotency_key,
            source=source,
            time_spent_ms=time_spent_ms,
            ranks=ranks,
        )

    if not text:
        # The vote alone, with no transaction of its own around it (the annotator's cycle stays at its pinned
        # statements): a new vote has no written answer, which its answer then reads without asking.
        recorded = vote()
        if recorded.created:
            Judgement.human_answer.related.set_cached_value(recorded.judgement, None)
        return recorded
    with transaction.atomic():
        recorded = vote()
        if not recorded.created:
            return recorded
        # Asked after the vote, so that a pair not shown to them is refused as such (the vote's Conflict) and a
        # resend is answered even if staff turned edits off since; an Invalid here takes the vote back with it.
        pair = Pair.objects.select_related("campaign", "completion_a", "completion_b").get(pk=pair_id)
        if pair.campaign is None or not pair.campaign.edits_allowed:
            raise Invalid({"edit": "this pair's campaign does not take written answers"})
        started_from = _started_from(recorded.judgement, pair, edit_from)
        if started_from is not None and started_from.text.strip() == text:
            return recorded
        size = diff_size(started_from.text if started_from else "", text)
        HumanAnswer.objects.create(
            judgement=recorded.judgement,
            author=annotator,
            started_from=started_from,
            text=text,
            chars_added=size.added,
            chars_removed=size.removed,
        )
    return recorded


def _started_from(judgement: Judgement, pair: Pair, edit_from: str) -> Completion | None:
    """The sampled answer the edit began as: the side the page says, else the one voted for; none after a tie or
    "both bad" (written afresh). On a ranking pair, the answer ranked best (no side to name: its page has no
    left and right); none when the first place is shared or all are bad."""
    if judgement.ranking is not None:
        if edit_from:
            raise Invalid(
                {"edit_from": "a ranking's written answer starts from the answer ranked first: leave it empty"}
            )
        top = rankings.ranking_top(judgement.ranking)
        return None if top is None else pair.answers()[top]
    if edit_from:
        a_side = "left" if judgement.a_on_left is not False else "right"
        return pair.completion_a if edit_from == a_side else pair.completion_b
    if judgement.choice == Judgement.Choice.A:
        return pair.completion_a
    if judgement.choice == Judgement.Choice.B:
        return pair.completion_b
    return None


def human_answer_review(*, human_answer: HumanAnswer, by: User, reject: bool, reason: str) -> HumanAnswer:
    """Staff reject a written answer (no later round or export uses it), or take a rejection back. Rejecting needs
    a reason, kept with who and when; Conflict when someone reviewed it meanwhile."""
    reason = reason.strip()
    if reject and not reason:
        raise Invalid({"reason": "say why (it is kept with the decision)"})
    if len(reason) > settings.RATIONALE_MAX_LENGTH or "\x00" in reason:
        raise Invalid({"reason": f"at most {settings.RATIONALE_MAX_LENGTH} characters, no NUL characters"})
    if reject:
        human_answer.reject(by=by, reason=reason)
    else:
        human_answer.accept(by=by, reason=reason)
    return human_answer


def human_answers_of_pair(pair: Pair) -> list[HumanAnswer]:
    """The answers written with the votes on a pair, for its staff page."""
    return list(
        HumanAnswer.objects.filter(judgement__pair=pair)
        .select_related("author", "started_from", "reviewed_by", "judgement")
        .order_by("id")
    )
