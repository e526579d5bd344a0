"""The annotator table of vote quality, written once: each column's sort key, heading, the values it shows (how to
read each from an annotator's signals, and what it means) and how the page writes them.

It drives the quality page's headings, cells and sorting, the `sort` filter's choices and the fields of
GET /api/quality/'s annotators, the way training.config's FieldSpec drives a round's config. A new signal is one
entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from django.template.defaultfilters import floatformat
from django.utils.formats import localize
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from annotate.quality.agreement import AnnotatorSignals, p_value_text
from annotate.quality.edits import EditSignals

# How a value is typed in the API and written on the page.
Kind = Literal["annotator", "count", "share", "seconds", "p_value", "flags", "status"]
UNKNOWN = "\N{EN DASH}"  # a value that cannot be computed (None): never written as 0


@dataclass(frozen=True)
class QualityRow:
    """One annotator's line in the table: their signals and what staff decided about them."""

    annotator_id: int
    username: str
    signals: AnnotatorSignals
    paused: bool
    votes_excluded: bool
    edits: EditSignals = field(default_factory=EditSignals)  # their written answers (annotate/quality/edits.py)

    @cached_property
    def values(self) -> dict[str, Any]:
        """Every value of the table by name, in the table's order: the API's item for this annotator."""
        return {value.name: value.read(self) for value in QUALITY_VALUES}


@dataclass(frozen=True)
class QualityValue:
    """One value per annotator: a field of GET /api/quality/'s annotators, shown in its column on the page."""

    name: str
    kind: Kind
    read: Callable[[QualityRow], Any]
    help: str = ""
    # How the page writes this value in a hint after its column's first value ("of {}"); "" shows it only in the API.
    beside: str = ""
    # Whether that hint is also written when the column's first value is unknown.
    beside_unknown: bool = True

    @property
    def label(self) -> str:
        """How a status (a yes/no value) reads on the page: "votes excluded"."""
        return self.name.replace("_", " ")


@dataclass(frozen=True)
class QualityColumn:
    """One column of the page's annotator table. `name` is its sort key; its first value is the one shown and sorted
    on, unless `sort_value` says otherwise; missing values (None) always sort last."""

    name: str
    label: str
    values: tuple[QualityValue, ...]
    sort_value: Callable[[QualityRow], Any] | None = None
    css_class: str = ""
    # A column only some campaigns fill: on the page only when a row has something in it (the API always has it).
    shown_if: Callable[[QualityRow], bool] | None = None

    def sort_key(self, row: QualityRow) -> Any:
        return (self.sort_value or self.values[0].read)(row)

    @property
    def starts_descending(self) -> bool:
        """A first click on the heading sorts high first, except on names (A first)."""
        return self.values[0].kind != "annotator"


def _share(name: str, read: Callable[[QualityRow], float | None], help: str = "", **extra: Any) -> QualityValue:
    return QualityValue(name, "share", read, help, **extra)


def _count(name: str, read: Callable[[QualityRow], int], help: str = "", **extra: Any) -> QualityValue:
    return QualityValue(name, "count", read, help, **extra)


def _column(name: str, label: str, *values: QualityValue, **extra: Any) -> QualityColumn:
    return QualityColumn(name, label, values, **extra)


QUALITY_COLUMNS: tuple[QualityColumn, ...] = (
    _column(
        "annotator",
        "Annotator",
        QualityValue("username", "annotator", lambda row: row.username, "Their username."),
        sort_value=lambda row: row.username.lower(),
    ),
    _column("votes", "Votes", _count("votes", lambda row: row.signals.votes, "Their first votes (repeats left out).")),
    _column(
        "left_share",
        "Left picks",
        _share(
            "left_share", lambda row: row.signals.position.left_share, "Share of decisive votes for the left answer."
        ),
        _count(
            "left_decisive",
            lambda row: row.signals.position.decisive,
            "Decisive votes whose screen side is known.",
            beside="of {}",
            beside_unknown=False,
        ),
    ),
    _column(
        "position_p_value",
        "p (position)",
        QualityValue(
            "position_p_value",
            "p_value",
            lambda row: row.signals.position.p_value,
            "Two-sided binomial test against 50 %.",
        ),
    ),
    _column(
        "median_seconds",
        "Median s",
        QualityValue(
            "median_seconds", "seconds", lambda row: row.signals.speed.median_seconds, "Median seconds per timed vote."
        ),
    ),
    _column(
        "share_under_floor",
        "Under floor",
        _share(
            "share_under_floor",
            lambda row: row.signals.speed.share_under_floor,
            "Share of votes under the speed floor.",
        ),
    ),
    _column(
        "longer_share",
        "Longer picked",
        _share("longer_share", lambda row: row.signals.longer_share, "Share of decisive votes for the longer answer."),
        _count(
            "longer_decisive",
            lambda row: row.signals.longer_decisive,
            "Decisive votes between answers of different lengths.",
        ),
        _share(
            "campaign_longer_share",
            lambda row: row.signals.campaign_longer_share,
            "The same share over every annotator.",
            beside="vs {}",
        ),
    ),
    _column("tie_rate", "Ties", _share("tie_rate", lambda row: row.signals.tie_rate, "Share of votes for a tie.")),
    _column(
        "both_bad_rate",
        "Both bad",
        _share("both_bad_rate", lambda row: row.signals.both_bad_rate, "Share of votes for both bad."),
    ),
    _column(
        "gold_accuracy",
        "Gold accuracy",
        _share(
            "gold_accuracy", lambda row: row.signals.gold.accuracy, "Share of gold votes giving the expected answer."
        ),
        _count("gold_answered", lambda row: row.signals.gold.answered, "Votes on gold pairs.", beside="({})"),
    ),
    _column(
        "self_consistency",
        "Self-consistency",
        _share(
            "self_consistency",
            lambda row: row.signals.consistency.share,
            "Share of repeat votes (sides swapped) agreeing with the first vote on the pair.",
        ),
        _count("repeats", lambda row: row.signals.consistency.repeats, "Repeat votes.", beside="({})"),
    ),
    _column(
        "majority_agreement",
        "With majority",
        _share("majority_agreement", lambda row: row.signals.majority.share, "With the leave-one-out majority."),
        _count(
            "majority_compared",
            lambda row: row.signals.majority.compared,
            "Votes on pairs where the other voters have a majority.",
            beside="({})",
        ),
    ),
    _column(
        "competence",
        "Competence",
        _share("competence", lambda row: row.signals.competence, "MACE: 1 - the probability of guessing."),
    ),
    _column(
        "edits",
        "Written",
        _count("edits", lambda row: row.edits.written, "Better answers they wrote with these votes."),
        _share(
            "edit_changed_share",
            lambda row: row.edits.changed_share,
            "How much their written answers change the ones they started from: characters added and removed over "
            "both texts' (written afresh: all added).",
            beside="{} changed",
            beside_unknown=False,
        ),
        shown_if=lambda row: bool(row.edits.written),
    ),
    _column(
        "flags",
        "Flags",
        QualityValue("flags", "flags", lambda row: row.signals.flags, "Why they may need a look (QUALITY_* settings)."),
        sort_value=lambda row: len(row.signals.flags),
        css_class="flags",
    ),
    _column(
        "standing",
        "Standing",
        QualityValue("paused", "status", lambda row: row.paused, "Staff paused them: they are served no pairs."),
        QualityValue(
            "votes_excluded",
            "status",
            lambda row: row.votes_excluded,
            "Staff excluded their votes from training and exports.",
        ),
        sort_value=lambda row: (row.paused, row.votes_excluded),
    ),
)
QUALITY_VALUES: tuple[QualityValue, ...] = tuple(value for column in QUALITY_COLUMNS for value in column.values)
COLUMNS_BY_NAME = {column.name: column for column in QUALITY_COLUMNS}

DEFAULT_SORT = "-flags"
SORT_CHOICES = [(f"{prefix}{column.name}", f"{column.label}{suffix}") for column in QUALITY_COLUMNS
                for prefix, suffix in (("", ", ascending"), ("-", ", descending"))]  # fmt: skip


def rows_sorted(rows: list[QualityRow], sort: str) -> list[QualityRow]:
    """Rows by `sort` (a column's name, "-" in front for descending), then by name; missing values last."""
    descending, name = sort.startswith("-"), sort.removeprefix("-")
    value_of = COLUMNS_BY_NAME[name].sort_key
    by_name = sorted(rows, key=lambda row: row.username.lower())
    known = [row for row in by_name if value_of(row) is not None]
    unknown = [row for row in by_name if value_of(row) is None]
    return sorted(known, key=value_of, reverse=descending) + unknown


# --- The page's cells -----------------------------------------------------------------------------------------

# How a flag's code (annotate.quality.agreement.Flag, also the API's) reads on the pages; its reason is the tooltip.
FLAG_WORDS = {
    "position_bias": "Position bias",
    "fast": "Too fast",
    "low_competence": "Low competence",
    "gold": "Misses gold",
    "inconsistent": "Inconsistent",
}


def flag_word(code: str) -> str:
    return FLAG_WORDS.get(code, code.replace("_", " ").capitalize())


@dataclass(frozen=True)
class Cell:
    css_class: str
    html: SafeString


def _written(kind: Kind, value: Any) -> str:
    """A number as the page writes it; UNKNOWN for None."""
    if value is None:
        return UNKNOWN
    if kind in ("share", "seconds"):
        return str(floatformat(value, 2 if kind == "share" else 1))
    if kind == "p_value":
        return p_value_text(value)
    return str(localize(value))


def _cell_html(column: QualityColumn, row: QualityRow, annotator_url: str) -> SafeString:
    first, *others = column.values
    value = first.read(row)
    if first.kind == "annotator":
        return format_html('<a href="{}">{}</a>', annotator_url, value)
    if first.kind == "flags":
        flags = format_html_join(
            " ", '<span class="flag" title="{}">{}</span>', ((flag.reason, flag_word(flag.code)) for flag in value)
        )
        return flags or mark_safe(UNKNOWN)
    if first.kind == "status":
        statuses = [format_html('<span class="status">{}</span>', status.label) for status in column.values
                    if status.read(row)]  # fmt: skip
        return format_html_join(" ", "{}", ((status,) for status in statuses)) or mark_safe("active")
    hints = [
        format_html('<span class="hint">{}</span>', other.beside.format(_written(other.kind, other.read(row))))
        for other in others
        if other.beside and (value is not None or other.beside_unknown)
    ]
    return format_html_join(" ", "{}", ((part,) for part in [_written(first.kind, value), *hints]))


def columns_shown(rows: Sequence[QualityRow]) -> list[QualityColumn]:
    """The page's columns for these rows: every column, less those only some campaigns fill when no row fills them
    (a column of zeros for written answers where no campaign takes them only widens the table)."""
    return [
        column for column in QUALITY_COLUMNS if column.shown_if is None or any(column.shown_if(row) for row in rows)
    ]


def table_cells(row: QualityRow, *, annotator_url: str, columns: Sequence[QualityColumn]) -> list[Cell]:
    """The row's cells on the page, one per column shown; the annotator's name links to `annotator_url`."""
    return [Cell(column.css_class, _cell_html(column, row, annotator_url)) for column in columns]
