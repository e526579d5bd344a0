"""Annotators' written answers in exports (PreferenceRules.edits, the rule training rounds follow): each one staff
did not reject gives a trl-preference row per sampled answer of its pair, the written answer `chosen`. Other formats
hold no written answers (their rows are verdicts on two sampled answers, or battles between model versions)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from django.db.models import Q

from annotate.data.exports.filters import ExportFilters, judgements_matching
from annotate.data.exports.formats import WEIGHT_COLUMN, Row, RowContext, sampling_label
from annotate.models import HumanAnswer
from annotate.quality.preferences import WrittenVote, human_answers_for_preferences, preference_row

FORMATS_WITH_EDITS = ("trl-preference",)
# What the lineage columns say of a written answer (trl-preference's chosen_model and chosen_sampling).
WRITTEN_BY_ANNOTATOR = "human-edit"
EDITS_MAPPING = (
    "Written answers (rule `edits`): an answer an annotator wrote with their vote, that staff did not reject, is "
    f"`chosen` against each sampled answer of its pair, one row each: `chosen_model` and `chosen_sampling` say "
    f"`{WRITTEN_BY_ANNOTATOR}`, `votes` and `agreement` are 1, `margin` 1 (a written answer counts as much better), "
    "`on_policy` false. Written answers go into trl-preference exports only."
)


def edit_rows(answer: HumanAnswer, context: RowContext) -> Iterator[Row]:
    pair = answer.judgement.pair
    for sampled in pair.answers():  # all K answers of a ranking pair
        if sampled.text.strip() == answer.text:
            continue  # copied unchanged: nothing to prefer
        row = {
            **preference_row(pair.prompt.messages, answer.text, sampled.text),
            "margin": 1.0,
            "pair_id": pair.pk,
            "prompt_id": pair.prompt_id,
            "prompt_set": pair.prompt.prompt_set,
            "chosen_model": WRITTEN_BY_ANNOTATOR,
            "rejected_model": context.name(sampled.model_version_id),
            "sampled_from": context.name(pair.sampled_from_id),
            "on_policy": False,
            "chosen_sampling": WRITTEN_BY_ANNOTATOR,
            "rejected_sampling": sampling_label(sampled.sampling),
            "votes": 1,
            "agreement": 1.0,
            "source": answer.judgement.source,
        }
        if context.weights is not None:
            row[WEIGHT_COLUMN.name] = round(context.weights.weight("written", [WrittenVote(answer.author_id)]), 4)
        yield row


def edit_rows_write(
    *,
    dataset_format: str,
    filters: ExportFilters,
    left_out: dict[str, Q],
    context: RowContext,
    write: Callable[[Row], None],
    on_row: Callable[[Row], None],
) -> int:
    """Write the rows of the written answers of the votes the export reads; returns how many answers gave rows."""
    if dataset_format not in FORMATS_WITH_EDITS or not filters.rules.edits_train:
        return 0
    counted = filters.rules.counted(judgements_matching(filters), left_out)
    used = 0
    for answer in human_answers_for_preferences(counted).iterator(chunk_size=500):
        written = 0
        for row in edit_rows(answer, context):
            write(row)
            on_row(row)
            written += 1
        used += bool(written)
    return used
