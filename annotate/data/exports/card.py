"""The dataset card written beside every export: a Markdown file rendered from templates/exports/card.md, with YAML
front matter as the Hugging Face Hub reads it (licence, pretty name, tags)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml
from django.conf import settings
from django.template.loader import render_to_string

from annotate.data.exports.edits import EDITS_MAPPING, FORMATS_WITH_EDITS
from annotate.data.exports.filters import ExportFilters
from annotate.data.exports.formats import FORMATS, MESSAGES, DatasetFormat
from annotate.data.exports.stream import ExportStats
from annotate.models import ModelVersion
from annotate.quality.judge_rule import judge_rule_described
from annotate.quality.preferences import WEIGHTS_RULE, weights_described

_COMBINE_RULES = {
    "majority": "one verdict per pair: its most common vote; a draw between outcomes gives no verdict",
    "all": "one verdict per vote",
    "unanimous": "one verdict per pair whose votes all agree; other pairs give none",
}


def card_path(data_path: Path) -> Path:
    return data_path.with_suffix(".md")


def _cell(value: Any) -> str:
    """A Markdown table cell: a pipe or a line break in a name would otherwise break the table."""
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> list[list[str]]:
    return [[_cell(value) for value in row] for row in (header, *rows)]


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}: {count:,}" for key, count in sorted(counter.items()))


def _arrow_type(data_type: pa.DataType) -> str:
    return "list of {role, content} messages" if data_type == MESSAGES else str(data_type)


def _filter_lines(filters: ExportFilters, spec: DatasetFormat) -> list[tuple[str, str]]:
    def listed(values: tuple[str, ...]) -> str:
        return ", ".join(values) if values else "any"

    rules = spec.rules(filters.rules)
    return [
        ("votes cast from", filters.date_from.isoformat() if filters.date_from else "the beginning"),
        ("votes cast until", filters.date_to.isoformat() if filters.date_to else "now"),
        ("prompt sets", listed(filters.prompt_sets)),
        ("pairs sampled from", listed(filters.model_versions)),
        ("annotators", f"{len(filters.annotators)} named" if filters.annotators else "any"),
        ("sources", listed(filters.sources)),
        ("on-policy pairs only", "yes" if filters.on_policy else "no"),
        ("several votes on a pair", rules.combine + (" (one row per vote)" if spec.one_row_per_vote else "")),
        ("ties", "included" if rules.include_ties else "left out"),
        ("both bad", "included" if rules.include_both_bad else "left out"),
        ("minimum agreement", f"{rules.min_agreement:g}"),
        ("votes on gold pairs", "included" if rules.include_gold else "left out (they test annotators)"),
        ("repeat votes", "included" if rules.include_repeats else "left out (they test self-consistency)"),
        ("votes of excluded annotators", "included" if rules.include_excluded_annotators else "left out"),
        ("votes of the AI judge", judge_rule_described(rules.judge, rules.judge_weight)),
        ("votes on head-to-head pairs", "left out" if rules.exclude_head_to_head else "included (off-policy)"),
        ("minimum annotator competence (MACE)", f"{rules.min_competence:g}"),
        ("weights", filters.weighting if filters.weighting != "none" else "none"),
        ("written answers (rule edits)", _edits_line(rules.edits, spec.name)),
    ]


def _judge_weight(filters: ExportFilters) -> float | None:
    return filters.rules.judge_weight if filters.rules.judge_weighted else None


def _edits_line(edits: str, dataset_format: str) -> str:
    if dataset_format not in FORMATS_WITH_EDITS:
        return "none: this format holds none"
    return {
        "off": "left out",
        "edits_only": "only: the votes' own choices left out",
        "edits_and_choices": "included beside the votes' choices",
    }[edits]


def dataset_card(
    *,
    title: str,
    dataset_format: str,
    file_format: str,
    filters: ExportFilters,
    stats: ExportStats,
    data_file: str,
    created: datetime,
    created_by: str,
) -> str:
    """The Markdown card written beside an export (YAML front matter as the Hugging Face Hub reads it)."""
    spec = FORMATS[dataset_format]
    weighted = filters.weighted
    if weighted:
        spec = spec.with_weights()
    extremes = [weight for weight in (stats.lightest, stats.heaviest) if weight is not None]
    licence = filters.license or settings.EXPORT_LICENSE or "unknown"
    versions = ModelVersion.objects.filter(pk__in=list(stats.answers_by_version)).select_related("parent")
    span = (
        f"{stats.first_vote:%Y-%m-%d %H:%M} to {stats.last_vote:%Y-%m-%d %H:%M} UTC"
        if stats.first_vote and stats.last_vote
        else "no votes"
    )
    tags = ["pairloop", "preference", "human-feedback", "arena" if dataset_format == "arena" else "dpo"]
    front_matter = {"license": licence, "pretty_name": title, "tags": tags}
    combine = spec.rules(filters.rules).combine
    context = {
        # Dumped, not written by hand: a licence or title with a colon, a quote or a line break stays one value.
        "front_matter": yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True, width=1000),
        "title": title,
        "dataset_format": dataset_format,
        "use": spec.use,
        "data_file": data_file,
        "file_kind": "JSON Lines" if file_format == "jsonl" else "Parquet",
        "loader": "json" if file_format == "jsonl" else "parquet",
        "contents": _table(
            ("", ""),
            [
                ("rows", f"{stats.rows:,}"),
                ("verdicts (pairs, or votes when one row per vote)", f"{stats.verdicts:,}"),
                ("votes read (after the filters)", f"{stats.votes_read:,}"),
                ("rankings among them (3 or 4 answers ranked)", f"{stats.rankings_read:,}"),
                ("verdicts by outcome", _counts(stats.outcomes) or "none"),
                ("rows from written answers", f"{stats.edit_rows:,} (from {stats.edits:,} answers annotators wrote)"),
                (
                    "verdicts on multi-turn conversations (the whole conversation is the prompt)",
                    f"{stats.multi_turn:,}",
                ),
                ("left out: no row in this format", _counts(stats.left_out) or "none"),
                ("votes behind the rows, by source", _counts(stats.sources) or "none"),
                ("date range of those votes", span),
                ("exported", f"{created:%Y-%m-%d %H:%M} UTC by {created_by}"),
            ],
        ),
        "filters": _table(("filter", "value"), _filter_lines(filters, spec)),
        "combine": combine,
        "combine_meaning": _COMBINE_RULES[combine],
        "mapping": spec.mapping + (f" {EDITS_MAPPING}" if dataset_format in FORMATS_WITH_EDITS else ""),
        "weights": weights_described(filters.weighting, extremes, normalised=False, judge_weight=_judge_weight(filters))
        if weighted
        else "",
        "weights_rule": WEIGHTS_RULE,
        "schema": _table(
            ("column", "type", "meaning"), [(c.name, _arrow_type(c.type), c.meaning) for c in spec.columns]
        ),
        "versions": _table(
            ("version", "status", "base model", "adapter", "parent", "answers in the data"),
            [
                (
                    v.name,
                    v.status,
                    v.base_model,
                    v.adapter_path or "-",
                    v.parent.name if v.parent else "-",
                    f"{stats.answers_by_version[v.pk]:,}",
                )
                for v in versions
            ],
        ),
        "sampling": _table(
            ("sampling settings", "answers in the data"),
            [(label, f"{count:,}") for label, count in stats.answers_by_sampling.most_common()],
        ),
        "licence": _cell(licence),
        "imported_from": [(_cell(detail), f"{count:,}") for detail, count in sorted(stats.imported_from.items())],
    }
    return render_to_string("exports/card.md", context).rstrip("\n") + "\n"


def card_read(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, Markdown body) of a dataset card; the front matter is read with a YAML parser, and a card
    without front matter (or with front matter that is not a mapping) reads as an empty one."""
    lines = text.split("\n")
    if lines and lines[0] == "---" and "---" in lines[1:]:
        end = lines.index("---", 1)
        try:
            front = yaml.safe_load("\n".join(lines[1:end]))
        except yaml.YAMLError:
            front = None
        body = "\n".join(lines[end + 1 :])
        return (front if isinstance(front, dict) else {}), body
    return {}, text
