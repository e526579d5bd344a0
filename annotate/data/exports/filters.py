"""What an export asks for: which votes go in (ExportFilters) and the query that finds them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import F, QuerySet
from django.utils import timezone

from annotate.models import Judgement, ModelVersion, Prompt
from annotate.quality.judge_rule import JUDGE_WEIGHT_DEFAULT
from annotate.quality.preferences import PreferenceRules, Weighting

SOURCES = tuple(Judgement.Source.values)


@dataclass(frozen=True)
class ExportFilters:
    """Which votes go in and how they are combined. Names, not ids, so a stored export reads on its own."""

    date_from: date | None = None  # votes cast on or after this day (UTC)
    date_to: date | None = None  # votes cast on or before this day (UTC)
    prompt_sets: tuple[str, ...] = ()
    model_versions: tuple[str, ...] = ()  # pairs sampled from these versions
    annotators: tuple[str, ...] = ()  # usernames
    sources: tuple[str, ...] = ()  # human, simulated, imported
    on_policy: bool = False  # both answers from the version that served when the pair was sampled
    rules: PreferenceRules = field(default_factory=PreferenceRules)
    # Not a filter: a weight column on trl-preference rows (annotate.quality.preferences.PairWeights), when not "none".
    weighting: Weighting = "none"
    license: str = ""  # not a filter: the licence the dataset card states

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> ExportFilters:
        """From validated form, serializer or command-line values named like the fields (rules flattened)."""
        return cls(
            date_from=values["date_from"],
            date_to=values["date_to"],
            prompt_sets=tuple(values["prompt_sets"]),
            model_versions=tuple(values["model_versions"]),
            annotators=tuple(values["annotators"]),
            sources=tuple(values["sources"]),
            on_policy=values["on_policy"],
            rules=PreferenceRules(
                combine=values["combine"],
                include_ties=values["include_ties"],
                include_both_bad=values["include_both_bad"],
                min_agreement=values["min_agreement"],
                include_gold=bool(values.get("include_gold", False)),
                include_repeats=bool(values.get("include_repeats", False)),
                include_excluded_annotators=bool(values.get("include_excluded_annotators", False)),
                exclude_head_to_head=bool(values.get("exclude_head_to_head", False)),
                min_competence=float(values.get("min_competence") or 0.0),
                edits=values.get("edits") or "edits_and_choices",
                judge=values.get("judge") or "out",
                judge_weight=float(values.get("judge_weight") or JUDGE_WEIGHT_DEFAULT),
            ),
            weighting=values.get("weighting") or "none",
            license=values["license"],
        )

    @property
    def weighted(self) -> bool:
        """Whether rows carry a weight: a weighting asked for, or the judge rule weighs the judge's votes."""
        return self.weighting != "none" or self.rules.judge_weighted

    def as_dict(self) -> dict[str, Any]:
        return {
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "prompt_sets": list(self.prompt_sets),
            "model_versions": list(self.model_versions),
            "annotators": list(self.annotators),
            "sources": list(self.sources),
            "on_policy": self.on_policy,
            **self.rules.as_dict(),
            "weighting": self.weighting,
            "license": self.license,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportFilters:
        def day(value: str | None) -> date | None:
            return date.fromisoformat(value) if value else None

        return cls(
            date_from=day(data.get("date_from")),
            date_to=day(data.get("date_to")),
            prompt_sets=tuple(data.get("prompt_sets", ())),
            model_versions=tuple(data.get("model_versions", ())),
            annotators=tuple(data.get("annotators", ())),
            sources=tuple(data.get("sources", ())),
            on_policy=bool(data.get("on_policy", False)),
            rules=PreferenceRules.from_dict(data),
            weighting=data.get("weighting", "none"),
            license=data.get("license", ""),
        )


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def day_bounds(date_from: date | None, date_to: date | None) -> tuple[datetime | None, datetime | None]:
    """The instants votes must be cast at or after, and before, for votes cast from `date_from` to `date_to` (days
    in the current time zone). OverflowError when a day is so near the ends of the calendar that the instant (or
    the database's UTC form of it) has no date: date_errors turns that into an error naming the field."""
    start = _day_start(date_from) if date_from else None
    end = _day_start(date_to + timedelta(days=1)) if date_to else None
    for instant in (start, end):
        if instant is not None:
            instant.astimezone(UTC)  # the database stores UTC: a day whose UTC form overflows must fail here
    return start, end


def date_errors(date_from: date | None, date_to: date | None) -> dict[str, str]:
    """What is wrong with a date range, by field (date_from, date_to); empty when it can be queried."""
    errors = {}
    for name, day in (("date_from", date_from), ("date_to", date_to)):
        try:
            day_bounds(day if name == "date_from" else None, day if name == "date_to" else None)
        except OverflowError:
            errors[name] = f"{day.isoformat() if day else day} is too near the end of the calendar: use a real date"
    if not errors and date_from and date_to and date_from > date_to:
        errors["date_to"] = "is before date_from"
    return errors


def judgements_matching(filters: ExportFilters) -> QuerySet[Judgement]:
    """The votes an export reads, before they are combined. OverflowError for dates date_errors refuses."""
    judgements = Judgement.objects.all()
    start, end = day_bounds(filters.date_from, filters.date_to)
    if start is not None:
        judgements = judgements.filter(created_at__gte=start)
    if end is not None:
        judgements = judgements.filter(created_at__lt=end)
    if filters.prompt_sets:
        judgements = judgements.filter(pair__prompt__prompt_set__in=filters.prompt_sets)
    if filters.model_versions:
        judgements = judgements.filter(pair__sampled_from__name__in=filters.model_versions)
    if filters.annotators:
        judgements = judgements.filter(annotator__username__in=filters.annotators)
    if filters.sources:
        judgements = judgements.filter(source__in=filters.sources)
    if filters.on_policy:
        judgements = judgements.filter(
            pair__completion_a__model_version=F("pair__sampled_from"),
            pair__completion_b__model_version=F("pair__sampled_from"),
        ).exclude(pair__sampled_from__status=ModelVersion.Status.EXTERNAL)
    return judgements


def _unknown(wanted: Iterable[str], known: Iterable[str]) -> list[str]:
    return sorted(set(wanted) - set(known))


def filter_errors(filters: ExportFilters) -> dict[str, str]:
    """What is wrong with the filters, by field: impossible dates and names that match nothing stored."""
    errors = date_errors(filters.date_from, filters.date_to)
    known = {
        "prompt_sets": Prompt.objects.filter(prompt_set__in=filters.prompt_sets).values_list("prompt_set", flat=True),
        "model_versions": ModelVersion.objects.filter(name__in=filters.model_versions).values_list("name", flat=True),
        "annotators": User.objects.filter(username__in=filters.annotators).values_list("username", flat=True),
    }
    for name, found in known.items():
        wanted: tuple[str, ...] = getattr(filters, name)
        unknown = _unknown(wanted, found.distinct()) if wanted else []
        if unknown:
            errors[name] = f"unknown: {', '.join(unknown)}"
    unknown_sources = _unknown(filters.sources, SOURCES)
    if unknown_sources:
        errors["sources"] = f"unknown: {', '.join(unknown_sources)} (use {', '.join(SOURCES)})"
    return errors
