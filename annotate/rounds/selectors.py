"""Reads the round pages share: what a round started now would train on."""

from __future__ import annotations

from dataclasses import dataclass

from annotate.models import Judgement
from annotate.rounds.services import round_rules


@dataclass(frozen=True)
class VotesPreview:
    """The votes a round started now would read, as its rules see them (annotate.quality.preferences)."""

    votes: int  # every vote so far: a round reads them all, up to its cut-off
    kept: int  # those the rules let in (gold, repeats, excluded annotators... left out)
    decisive: int  # of those, the ones that prefer an answer: only they can make a DPO pair
    left_out: dict[str, int]  # by reason


def round_votes_preview() -> VotesPreview:
    """Counted with the same rules round_prepare applies, before votes on one pair are combined; so `decisive` is
    an upper bound of the training and held-out pairs (several votes on a pair make one pair, or none when they
    disagree)."""
    rules = round_rules()
    read = Judgement.objects.all()
    conditions = rules.left_out_conditions(read)
    kept = rules.counted(read, conditions)
    return VotesPreview(
        votes=read.count(),
        kept=kept.count(),
        decisive=kept.filter(choice__in=(Judgement.Choice.A, Judgement.Choice.B)).count(),
        left_out={reason: count for reason, count in rules.left_out(read, conditions).items() if count},
    )
