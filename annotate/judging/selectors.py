"""Reads for the judge: its verdicts against the people's votes and gold, per campaign and per prompt version."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.db.models import F, Sum

from annotate.judging.trust import Trust, people_majority, trust_measure
from annotate.models import Campaign, Judge, Judgement, JudgeVerdict


def judge_of(campaign: Campaign) -> Judge | None:
    return Judge.objects.filter(campaign=campaign).first()


def judge_trust(*, judge: Judge, prompt_version: str | None = None) -> Trust:
    """The judge's trust from its verdicts (one prompt version, or all when None).

    `settled_unchecked` counts the pairs it settled alone that no person has voted on. When routing stops by itself
    they are kept, not reopened to people, and the quality page says how many remain (judging/_unchecked.html). Why
    keep them: its votes there are marked (source judge) and train only by the judge rule, out by default, so a stop
    poisons no round; the stop says its recent checks slipped, not that each earlier verdict is wrong; and reopening
    every one at once would spend annotators' time on a judge's whole history without anyone deciding it, and put
    people's votes beside a judge vote that already filled the pair. Staff see the number and decide (the checks and
    the exports' `sources` filter find them)."""
    verdicts = JudgeVerdict.objects.filter(judge=judge).exclude(status=JudgeVerdict.Status.ASKING)
    if prompt_version is not None:
        verdicts = verdicts.filter(prompt_version=prompt_version)
    rows = list(
        verdicts.values("pair_id", "status", "choice", "consistent", "is_check", "settled", "pair__gold_choice")
    )
    pair_ids = [row["pair_id"] for row in rows]
    people: dict[int, list[str]] = defaultdict(list)
    votes = (
        Judgement.objects.filter(pair_id__in=pair_ids, is_repeat=False)
        .exclude(source=Judgement.Source.JUDGE)
        .values_list("pair_id", "choice")
    )
    for pair_id, choice in votes.iterator():
        people[pair_id].append(choice)
    answered, compared, gold, checks = [], [], [], []
    failures = 0
    for row in rows:
        if row["status"] == JudgeVerdict.Status.FAILED:
            failures += 1
            continue
        answered.append((row["choice"], bool(row["consistent"])))
        if row["pair__gold_choice"]:
            gold.append((row["choice"], row["pair__gold_choice"]))
            continue
        majority = people_majority(people.get(row["pair_id"], []))
        if majority is None:
            continue
        compared.append((row["choice"], majority))
        if row["is_check"]:
            checks.append((row["choice"], majority))
    unchecked = len({row["pair_id"] for row in rows if row["settled"] and row["pair_id"] not in people})
    settled = verdicts.filter(settled=True)
    saved = settled.aggregate(saved=Sum(F("pair__judgements_required")))["saved"] or 0
    return trust_measure(
        answered=answered,
        failures=failures,
        compared=compared,
        gold=gold,
        checks=checks,
        settled=settled.count(),
        votes_saved=saved,
        settled_unchecked=unchecked,
    )


@dataclass(frozen=True)
class VersionTrust:
    prompt_version: str
    trust: Trust


def judge_trust_by_version(*, judge: Judge) -> list[VersionTrust]:
    """Each prompt version it answered under, newest first (the current one first when it has answered)."""
    versions = list(
        JudgeVerdict.objects.filter(judge=judge).order_by("-id").values_list("prompt_version", flat=True).distinct()
    )
    seen: list[str] = []
    for version in versions:
        if version not in seen:
            seen.append(version)
    return [VersionTrust(version, judge_trust(judge=judge, prompt_version=version)) for version in seen]


def verdict_for_pair(*, pair_id: int) -> JudgeVerdict | None:
    """The judge's answered verdict on a pair under its current prompt version, when its campaign shows it to
    annotators; None otherwise (never shown unless the campaign asks for it)."""
    return (
        JudgeVerdict.objects.filter(
            pair_id=pair_id,
            status=JudgeVerdict.Status.DONE,
            judge__show_to_annotators=True,
            judge__enabled=True,
            prompt_version=F("judge__prompt_version"),
        )
        .order_by("-id")
        .first()
    )


@dataclass(frozen=True)
class HintEffect:
    """How often people chose what the judge chose, with its verdict on screen and without (pairs it answered,
    gold aside): a gap says the hint sways them."""

    shown: int
    shown_agreeing: int
    hidden: int
    hidden_agreeing: int

    @property
    def shown_share(self) -> float | None:
        return self.shown_agreeing / self.shown if self.shown else None

    @property
    def hidden_share(self) -> float | None:
        return self.hidden_agreeing / self.hidden if self.hidden else None


def judge_hint_effect(*, judge: Judge) -> HintEffect:
    verdicts = dict(
        JudgeVerdict.objects.filter(
            judge=judge, status=JudgeVerdict.Status.DONE, pair__gold_choice="", prompt_version=judge.prompt_version
        ).values_list("pair_id", "choice")
    )
    votes = (
        Judgement.objects.filter(pair_id__in=list(verdicts), is_repeat=False)
        .exclude(source=Judgement.Source.JUDGE)
        .values_list("pair_id", "choice", "judge_hint__verdict__judge_id")
    )
    counts = {True: [0, 0], False: [0, 0]}
    for pair_id, choice, shown_by in votes.iterator():
        tally = counts[shown_by == judge.pk]
        tally[0] += 1
        tally[1] += choice == verdicts[pair_id]
    return HintEffect(counts[True][0], counts[True][1], counts[False][0], counts[False][1])
