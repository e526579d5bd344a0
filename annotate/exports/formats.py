"""The dataset formats an export can write: for each, its columns, how verdicts become rows, and what its dataset card
says about it. A new format is one DatasetFormat in FORMATS (and its row builder here)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from django.conf import settings

from annotate.models import Judgement, ModelVersion, Pair
from annotate.preferences import DECISIVE, PreferenceRules, Verdict, assistant, trl_preference_row

Row = dict[str, Any]
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class RowContext:
    """What rows need beyond the votes: version names (few, read once) and the judge pseudonyms' key."""

    def __init__(self) -> None:
        self.version_names: dict[int, str] = dict(ModelVersion.objects.values_list("id", "name"))
        self._key = settings.SECRET_KEY.encode()
        self._judges: dict[str, str] = {}  # one entry per annotator or imported file

    def name(self, version_id: int) -> str:
        return self.version_names[version_id]

    def judge(self, vote: Judgement) -> str:
        """A stable pseudonym: the same annotator (or imported file) always gets the same one, never the name."""
        subject = f"user:{vote.annotator_id}" if vote.annotator_id else f"import:{vote.source_detail}"
        if subject not in self._judges:
            digest = hmac.new(self._key, subject.encode(), hashlib.sha256).hexdigest()[:16]
            self._judges[subject] = f"{'judge' if vote.annotator_id else 'imported'}_{digest}"
        return self._judges[subject]


def is_on_policy(pair: Pair) -> bool:
    version = pair.sampled_from
    return (
        version.status != ModelVersion.Status.EXTERNAL
        and pair.completion_a.model_version_id == version.pk
        and pair.completion_b.model_version_id == version.pk
    )


def margin(strength: float | None) -> float:
    """Strength of preference on TRL's reward margin scale: slightly 1/3, clearly 2/3, much better 1; unknown 0."""
    return round(strength / 3, 4) if strength is not None else 0.0


def _sources(verdict: Verdict) -> str:
    return "+".join(sorted({vote.source for vote in verdict.judgements}))


def _paired_lineage(verdict: Verdict, context: RowContext) -> Row:
    pair = verdict.pair
    chosen, rejected = (
        (pair.completion_a, pair.completion_b)
        if verdict.outcome == Judgement.Choice.A
        else (pair.completion_b, pair.completion_a)
    )
    return {
        "pair_id": pair.pk,
        "prompt_id": pair.prompt_id,
        "prompt_set": pair.prompt.prompt_set,
        "chosen_model": context.name(chosen.model_version_id),
        "rejected_model": context.name(rejected.model_version_id),
        "sampled_from": pair.sampled_from.name,
        "on_policy": is_on_policy(pair),
        "votes": verdict.votes,
        "agreement": round(verdict.agreement, 4),
        "source": _sources(verdict),
    }


def trl_preference_rows(verdict: Verdict, context: RowContext) -> Iterator[Row]:
    if verdict.outcome in DECISIVE:
        yield {**trl_preference_row(verdict), "margin": margin(verdict.strength), **_paired_lineage(verdict, context)}


_KTO_LABELS = {"a": (True, False), "b": (False, True), "both_bad": (False, False)}


def trl_unpaired_rows(verdict: Verdict, context: RowContext) -> Iterator[Row]:
    labels = _KTO_LABELS.get(verdict.outcome)
    if labels is None:
        return  # a tie says neither answer is good or bad
    pair = verdict.pair
    for completion, label in zip((pair.completion_a, pair.completion_b), labels, strict=True):
        yield {
            "prompt": pair.prompt.messages,
            "completion": assistant(completion.text),
            "label": label,
            "pair_id": pair.pk,
            "prompt_id": pair.prompt_id,
            "prompt_set": pair.prompt.prompt_set,
            "completion_id": completion.pk,
            "model": context.name(completion.model_version_id),
            "verdict": verdict.outcome,
            "votes": verdict.votes,
            "agreement": round(verdict.agreement, 4),
            "source": _sources(verdict),
        }


ARENA_WINNERS = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}


def arena_rows(verdict: Verdict, context: RowContext) -> Iterator[Row]:
    pair, prompt = verdict.pair, verdict.pair.prompt.messages
    for vote in verdict.judgements:  # one vote per verdict: arena exports combine with "all"
        yield {
            "question_id": str(pair.pk),
            "model_a": context.name(pair.completion_a.model_version_id),
            "model_b": context.name(pair.completion_b.model_version_id),
            "winner": ARENA_WINNERS[vote.choice],
            "judge": context.judge(vote),
            "conversation_a": [*prompt, *assistant(pair.completion_a.text)],
            "conversation_b": [*prompt, *assistant(pair.completion_b.text)],
            "turn": sum(1 for message in prompt if message["role"] == "user"),
            "anony": True,
            "tstamp": vote.created_at.timestamp(),
        }


_HH_SPEAKERS = {"user": "Human", "assistant": "Assistant"}


def hh_transcript(prompt: list[dict[str, str]], answer: str) -> str:
    turns = [message for message in prompt if message["role"] in _HH_SPEAKERS]  # HH-RLHF has no system turn
    return "".join(f"\n\n{_HH_SPEAKERS[m['role']]}: {m['content']}" for m in turns) + f"\n\nAssistant: {answer}"


def hh_rlhf_rows(verdict: Verdict, context: RowContext) -> Iterator[Row]:
    if verdict.chosen is None or verdict.rejected is None:
        return
    prompt = verdict.pair.prompt.messages
    yield {
        "chosen": hh_transcript(prompt, verdict.chosen),
        "rejected": hh_transcript(prompt, verdict.rejected),
        **_paired_lineage(verdict, context),
    }


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    meaning: str


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    use: str
    columns: tuple[Column, ...]
    rows: Callable[[Verdict, RowContext], Iterator[Row]]
    mapping: str
    one_row_per_vote: bool = False

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(column.name, column.type) for column in self.columns])

    def rules(self, rules: PreferenceRules) -> PreferenceRules:
        return replace(rules, combine="all") if self.one_row_per_vote else rules


_PAIRED_LINEAGE = (
    Column("pair_id", pa.int64(), "the pair in pairloop"),
    Column("prompt_id", pa.int64(), "the prompt in pairloop"),
    Column("prompt_set", pa.string(), "the prompt's set"),
    Column("chosen_model", pa.string(), "model version of the chosen answer"),
    Column("rejected_model", pa.string(), "model version of the rejected answer"),
    Column("sampled_from", pa.string(), "version serving when the pair was sampled (imported:FORMAT for imports)"),
    Column("on_policy", pa.bool_(), "both answers from sampled_from, a version that served"),
    Column("votes", pa.int64(), "votes on the pair that passed the filters"),
    Column("agreement", pa.float64(), "share of those votes that agree with this row"),
    Column("source", pa.string(), "who voted: human, simulated or imported (joined with + when mixed)"),
)

FORMATS = {
    "trl-preference": DatasetFormat(
        name="trl-preference",
        use="TRL `DPOTrainer` and `RewardTrainer` (conversational preference format)",
        columns=(
            Column("prompt", MESSAGES, "the conversation answered, ending with the user's turn"),
            Column("chosen", MESSAGES, "the preferred answer: one assistant message"),
            Column("rejected", MESSAGES, "the other answer: one assistant message"),
            Column("margin", pa.float64(), "how strongly: 1/3 slightly, 2/3 clearly, 1 much better; 0 unknown"),
            *_PAIRED_LINEAGE,
        ),
        rows=trl_preference_rows,
        mapping=(
            "One row per verdict where one answer won (A or B): the winner is `chosen`. Tie and both-bad verdicts "
            "have no chosen answer and are left out whatever the filters say. `margin` is the mean strength of the "
            "votes for the winner divided by 3 (imported votes carry no strength: 0), the scale `RewardTrainer` "
            "adds to its loss; DPO ignores it."
        ),
    ),
    "trl-unpaired": DatasetFormat(
        name="trl-unpaired",
        use="TRL `KTOTrainer` (conversational unpaired preference format)",
        columns=(
            Column("prompt", MESSAGES, "the conversation answered, ending with the user's turn"),
            Column("completion", MESSAGES, "one answer: one assistant message"),
            Column("label", pa.bool_(), "true: a desirable answer; false: an undesirable one"),
            Column("pair_id", pa.int64(), "the pair in pairloop"),
            Column("prompt_id", pa.int64(), "the prompt in pairloop"),
            Column("prompt_set", pa.string(), "the prompt's set"),
            Column("completion_id", pa.int64(), "the answer in pairloop"),
            Column("model", pa.string(), "model version of the answer"),
            Column("verdict", pa.string(), "the pair's verdict: a, b or both_bad"),
            Column("votes", pa.int64(), "votes on the pair that passed the filters"),
            Column("agreement", pa.float64(), "share of those votes that agree with the verdict"),
            Column("source", pa.string(), "who voted: human, simulated or imported (joined with + when mixed)"),
        ),
        rows=trl_unpaired_rows,
        mapping=(
            "Two rows per verdict: A-or-B verdicts give the winner `label: true` and the loser `label: false`; "
            "both-bad verdicts (when included) give two `false` rows. Ties say nothing about either answer and are "
            "left out."
        ),
    ),
    "arena": DatasetFormat(
        name="arena",
        use="Chatbot Arena battle format (`lmsys/chatbot_arena_conversations`), e.g. for Elo or Bradley-Terry ratings",
        columns=(
            Column("question_id", pa.string(), "the pair in pairloop (votes on the same pair share it)"),
            Column("model_a", pa.string(), "model version of answer A"),
            Column("model_b", pa.string(), "model version of answer B"),
            Column("winner", pa.string(), "model_a, model_b, tie or tie (bothbad)"),
            Column("judge", pa.string(), "a stable pseudonym of the annotator (HMAC of their id), or of the import"),
            Column("conversation_a", MESSAGES, "the prompt followed by answer A"),
            Column("conversation_b", MESSAGES, "the prompt followed by answer B"),
            Column("turn", pa.int64(), "user turns in the conversation"),
            Column("anony", pa.bool_(), "annotators never see which model wrote an answer: always true"),
            Column("tstamp", pa.float64(), "when the vote was cast (Unix time)"),
        ),
        rows=arena_rows,
        one_row_per_vote=True,
        mapping=(
            "One row per vote, whatever the combine rule (battles are votes); ties and both-bad votes are kept "
            "only when the filters include them, and minimum agreement applies to each vote's share of its pair. "
            "A and B are the pair's own labels, not the sides of the screen (those were random per annotator)."
        ),
    ),
    "hh-rlhf": DatasetFormat(
        name="hh-rlhf",
        use='Anthropic HH-RLHF transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...")',
        columns=(
            Column("chosen", pa.string(), "the whole transcript ending with the preferred answer"),
            Column("rejected", pa.string(), "the whole transcript ending with the other answer"),
            *_PAIRED_LINEAGE,
        ),
        rows=hh_rlhf_rows,
        mapping=(
            "One row per verdict where one answer won, as two transcripts that share every turn but the last. "
            "HH-RLHF has no system turn: system messages are left out of the transcripts. Tie and both-bad "
            "verdicts are left out."
        ),
    ),
}

DATASET_FORMATS = tuple(FORMATS)
