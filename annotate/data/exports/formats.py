"""The dataset formats an export can write: for each, its columns, how verdicts become rows, and what its dataset card
says about it. A new format is one DatasetFormat in FORMATS (and its row builder here).

Rows are built from plain records (ExportVote, ExportPair), not model objects: an export reads tuples, which is
several times faster than building a Judgement, a Pair, a Prompt and two Completions for every vote.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import pyarrow as pa
from django.conf import settings

from annotate.models import Judgement, ModelVersion
from annotate.quality.preferences import DECISIVE, PairWeights, PreferenceRules, assistant, preference_row

Row = dict[str, Any]
T = TypeVar("T")
Messages = list[dict[str, str]]
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class ExportVote(NamedTuple):
    """One vote as an export reads it (the fields annotate.quality.preferences.combine reads, and the lineage)."""

    id: int
    pair_id: int
    annotator_id: int | None
    choice: str
    strength: float | None
    source: str
    source_detail: str
    created_at: Any  # as the database cursor gives it: RowContext.vote_time makes it a datetime
    ranking: Any = None  # a ranking's ranks by position, as JSON text (the stream decodes it); None for a vote


@dataclass(frozen=True, slots=True)
class ExportAnswer:
    """One answer of a ranking pair, by its position (A, B, then the extra ones)."""

    id: int
    text: str
    version: int
    sampling: str  # sampling_label


@dataclass(frozen=True, slots=True)
class ExportPair:
    """A pair with what its rows show: the prompt, both answers and the version it was sampled from."""

    id: int
    prompt_id: int
    prompt: Messages
    prompt_set: str
    completion_a_id: int
    completion_a_text: str
    completion_a_version: int
    completion_b_id: int
    completion_b_text: str
    completion_b_version: int
    sampled_from: int
    sampled_from_status: str
    completion_a_sampling: str = ""  # sampling_label of each answer
    completion_b_sampling: str = ""
    answers: tuple[ExportAnswer, ...] = ()  # a ranking pair's answers, all of them (empty for a pair of two)

    @property
    def on_policy(self) -> bool:
        """Both answers from the version that served when the pair was sampled (never for imported pairs)."""
        return (
            self.sampled_from_status != ModelVersion.Status.EXTERNAL
            and self.completion_a_version == self.sampled_from
            and self.completion_b_version == self.sampled_from
        )


@dataclass(frozen=True, slots=True)
class ExportVerdict:
    """A verdict (annotate.quality.preferences.combine) on one pair, with the pair and the votes behind it."""

    pair: ExportPair
    outcome: str
    votes: int
    agreement: float
    strength: float | None
    judgements: Sequence[ExportVote]
    share: float = 1.0  # a pair implied by rankings: its share of their weight (preferences.implied_verdicts)

    @property
    def chosen(self) -> str | None:
        if self.outcome == Judgement.Choice.A:
            return self.pair.completion_a_text
        if self.outcome == Judgement.Choice.B:
            return self.pair.completion_b_text
        return None

    @property
    def rejected(self) -> str | None:
        if self.outcome == Judgement.Choice.A:
            return self.pair.completion_b_text
        if self.outcome == Judgement.Choice.B:
            return self.pair.completion_a_text
        return None


class RowContext:
    """What rows need beyond the votes: version names (few, read once), the judge pseudonyms' key, and how to weigh a
    row when the export asks for weights."""

    def __init__(self, weights: PairWeights | None = None, vote_time: Callable[[Any], datetime] | None = None) -> None:
        self.weights = weights
        self._vote_time = vote_time
        self.version_names: dict[int, str] = dict(ModelVersion.objects.values_list("id", "name"))
        self._key = settings.SECRET_KEY.encode()
        self._judges: dict[tuple[int | None, str], str] = {}  # one entry per annotator or imported file
        self._of_pair: tuple[ExportPair, Callable[..., Any], Any] | None = None

    def vote_time(self, vote: ExportVote) -> datetime:
        """When the vote was cast (its time is read as the database gives it, and turned into a datetime here)."""
        if self._vote_time is None:
            return vote.created_at  # type: ignore[no-any-return]
        return self._vote_time(vote.created_at)

    def of_pair(self, pair: ExportPair, build: Callable[[ExportPair, RowContext], T]) -> T:
        """`build(pair, self)`, made once for consecutive verdicts on the same pair (an arena pair's votes come one
        verdict each): what their rows share is built once a pair, not once a row."""
        last = self._of_pair
        if last is None or last[0] is not pair or last[1] is not build:
            last = self._of_pair = (pair, build, build(pair, self))
        return last[2]  # type: ignore[no-any-return]

    def name(self, version_id: int) -> str:
        return self.version_names[version_id]

    def judge(self, vote: ExportVote) -> str:
        """A stable pseudonym: the same annotator (or imported file) always gets the same one, never the name."""
        key = (vote.annotator_id, "" if vote.annotator_id else vote.source_detail)
        pseudonym = self._judges.get(key)
        if pseudonym is None:
            subject = f"user:{vote.annotator_id}" if vote.annotator_id else f"import:{vote.source_detail}"
            digest = hmac.new(self._key, subject.encode(), hashlib.sha256).hexdigest()[:16]
            pseudonym = self._judges[key] = f"{'judge' if vote.annotator_id else 'imported'}_{digest}"
        return pseudonym


def sampling_label(sampling: dict[str, Any]) -> str:
    """The settings that made an answer (its completion's `sampling`) as one short label that rows repeat and the
    card counts: temperature, top_p, max_tokens and, when one was sent, the system prompt's SHA-256 (12 hex digits;
    the text itself may be long). The seed is left out: every answer has its own."""
    if not sampling:
        return "not recorded"
    # Every answer has its own sampling (its seed), but few answers' settings differ: their labels are remembered
    # (an export labels two answers a pair). The values' types are in the key, as 1 and 1.0 label differently; a
    # float zero is never looked up, as 0.0 and -0.0 are one key and two labels.
    values = [sampling.get(key, _ABSENT) for key in _SAMPLING_KEYS]
    if 0 in values:
        return _sampling_label(sampling)
    key = (*values, *map(type, values), sampling.get("system_prompt"))
    try:
        return _SAMPLING_LABELS[key]
    except KeyError:
        label = _sampling_label(sampling)
    except TypeError:  # a value that cannot be a key (not what pairloop stores)
        return _sampling_label(sampling)
    if len(_SAMPLING_LABELS) >= _SAMPLING_LABELS_KEPT:
        _SAMPLING_LABELS.clear()
    _SAMPLING_LABELS[key] = label
    return label


_SAMPLING_KEYS = ("temperature", "top_p", "max_tokens")
_ABSENT = object()
_SAMPLING_LABELS: dict[tuple[Any, ...], str] = {}
_SAMPLING_LABELS_KEPT = 1024


def _sampling_label(sampling: dict[str, Any]) -> str:
    parts = [f"{key} {sampling[key]}" for key in _SAMPLING_KEYS if key in sampling]
    if sampling.get("system_prompt"):
        parts.append(f"system prompt {hashlib.sha256(str(sampling['system_prompt']).encode()).hexdigest()[:12]}")
    return ", ".join(parts)


def margin(strength: float | None) -> float:
    """Strength of preference on TRL's reward margin scale: slightly 1/3, clearly 2/3, much better 1; unknown 0."""
    return round(strength / 3, 4) if strength is not None else 0.0


def _sources(verdict: ExportVerdict) -> str:
    votes = verdict.judgements
    if len(votes) == 1:
        return votes[0].source
    return "+".join(sorted({vote.source for vote in votes}))


def _paired_lineage(verdict: ExportVerdict, context: RowContext) -> Row:
    pair = verdict.pair
    a_won = verdict.outcome == Judgement.Choice.A
    chosen, rejected = (
        (pair.completion_a_version, pair.completion_b_version)
        if a_won
        else (pair.completion_b_version, pair.completion_a_version)
    )
    return {
        "pair_id": pair.id,
        "prompt_id": pair.prompt_id,
        "prompt_set": pair.prompt_set,
        "chosen_model": context.name(chosen),
        "rejected_model": context.name(rejected),
        "sampled_from": context.name(pair.sampled_from),
        "on_policy": pair.on_policy,
        "chosen_sampling": pair.completion_a_sampling if a_won else pair.completion_b_sampling,
        "rejected_sampling": pair.completion_b_sampling if a_won else pair.completion_a_sampling,
        "votes": verdict.votes,
        "agreement": round(verdict.agreement, 4),
        "source": _sources(verdict),
    }


def trl_preference_rows(verdict: ExportVerdict, context: RowContext) -> Iterator[Row]:
    if verdict.outcome in DECISIVE and verdict.chosen is not None and verdict.rejected is not None:
        row = {
            **preference_row(verdict.pair.prompt, verdict.chosen, verdict.rejected),
            "margin": margin(verdict.strength),
            **_paired_lineage(verdict, context),
        }
        if context.weights is not None:
            weight = context.weights.weight(verdict.outcome, verdict.judgements) * verdict.share
            row[WEIGHT_COLUMN.name] = round(weight, 4)
        yield row


_KTO_LABELS = {"a": (True, False), "b": (False, True), "both_bad": (False, False)}


def trl_unpaired_rows(verdict: ExportVerdict, context: RowContext) -> Iterator[Row]:
    labels = _KTO_LABELS.get(verdict.outcome)
    if labels is None:
        return  # a tie says neither answer is good or bad
    pair = verdict.pair
    answers = (
        (pair.completion_a_id, pair.completion_a_text, pair.completion_a_version, pair.completion_a_sampling),
        (pair.completion_b_id, pair.completion_b_text, pair.completion_b_version, pair.completion_b_sampling),
    )
    for (completion_id, text, version, sampling), label in zip(answers, labels, strict=True):
        yield {
            "prompt": pair.prompt,
            "completion": assistant(text),
            "label": label,
            "pair_id": pair.id,
            "prompt_id": pair.prompt_id,
            "prompt_set": pair.prompt_set,
            "completion_id": completion_id,
            "model": context.name(version),
            "sampling": sampling,
            "verdict": verdict.outcome,
            "votes": verdict.votes,
            "agreement": round(verdict.agreement, 4),
            "source": _sources(verdict),
        }


ARENA_WINNERS = {"a": "model_a", "b": "model_b", "tie": "tie", "both_bad": "tie (bothbad)"}


def arena_rows(verdict: ExportVerdict, context: RowContext) -> Iterator[Row]:
    question_id, model_a, model_b, conversation_a, conversation_b, turn = context.of_pair(verdict.pair, _arena_battle)
    for vote in verdict.judgements:  # one vote per verdict: arena exports combine with "all"
        yield {
            "question_id": question_id,
            "model_a": model_a,
            "model_b": model_b,
            "winner": ARENA_WINNERS[vote.choice],
            "judge": context.judge(vote),
            "conversation_a": conversation_a,
            "conversation_b": conversation_b,
            "turn": turn,
            "anony": True,
            "tstamp": context.vote_time(vote).timestamp(),
        }


def _arena_battle(pair: ExportPair, context: RowContext) -> tuple[str, str, str, Messages, Messages, int]:
    """What every vote's row on the pair shares (its votes' rows hold the same conversations, not copies)."""
    prompt = pair.prompt
    return (
        str(pair.id),
        context.name(pair.completion_a_version),
        context.name(pair.completion_b_version),
        [*prompt, *assistant(pair.completion_a_text)],
        [*prompt, *assistant(pair.completion_b_text)],
        sum(1 for message in prompt if message["role"] == "user"),
    )


def ultrafeedback_rows(verdict: ExportVerdict, context: RowContext) -> Iterator[Row]:
    """One row per ranking, every answer with its rank (whole rankings: the stream gives one verdict per vote)."""
    pair = verdict.pair
    for vote in verdict.judgements:
        if vote.ranking is None or len(vote.ranking) != len(pair.answers):
            continue
        yield {
            "prompt": pair.prompt,
            "completions": [
                {
                    "completion_id": answer.id,
                    "response": assistant(answer.text),
                    "model": context.name(answer.version),
                    "sampling": answer.sampling,
                    "rank": rank,
                }
                for answer, rank in zip(pair.answers, vote.ranking, strict=True)
            ],
            "all_bad": vote.choice == Judgement.Choice.BOTH_BAD,
            "pair_id": pair.id,
            "prompt_id": pair.prompt_id,
            "prompt_set": pair.prompt_set,
            "judge": context.judge(vote),
            "source": vote.source,
        }


_HH_SPEAKERS = {"user": "Human", "assistant": "Assistant"}


def hh_transcript(prompt: Messages, answer: str) -> str:
    turns = [message for message in prompt if message["role"] in _HH_SPEAKERS]  # HH-RLHF has no system turn
    return "".join(f"\n\n{_HH_SPEAKERS[m['role']]}: {m['content']}" for m in turns) + f"\n\nAssistant: {answer}"


def hh_rlhf_rows(verdict: ExportVerdict, context: RowContext) -> Iterator[Row]:
    if verdict.chosen is None or verdict.rejected is None:
        return
    prompt = verdict.pair.prompt
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
    rows: Callable[[ExportVerdict, RowContext], Iterator[Row]]
    mapping: str
    one_row_per_vote: bool = False
    # Rows of whole rankings (one verdict per ranking, with all its answers) instead of the pairs rankings imply.
    whole_rankings: bool = False

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(column.name, column.type) for column in self.columns])

    def with_weights(self) -> DatasetFormat:
        """This format with the weight column (a weighted trl-preference export)."""
        return replace(self, columns=(*self.columns, WEIGHT_COLUMN))

    def rules(self, rules: PreferenceRules) -> PreferenceRules:
        return replace(rules, combine="all") if self.one_row_per_vote else rules


RANKINGS_AS_PAIRS = (
    "A ranking of 3 or 4 answers gives a row for every two answers ranked apart (combined across annotators by "
    "the same rule); the rows of one ranking weigh K - 1 together (K answers), each (K - 1) / n of its n rows, in "
    "the weight column when weights are asked for."
)
# Only when an export asks for weights, and only on trl-preference rows (the rows training reads).
WEIGHTED_FORMAT = "trl-preference"
WEIGHT_COLUMN = Column(
    "weight",
    pa.float64(),
    "how much the pair should count in training (see How votes became rows); pairloop's trainer scales the weights "
    "to mean 1",
)

_SAMPLING_MEANING = "temperature, top_p, max_tokens, and the system prompt's SHA-256 when its campaign sent one"
_PAIRED_LINEAGE = (
    Column("pair_id", pa.int64(), "the pair in pairloop"),
    Column("prompt_id", pa.int64(), "the prompt in pairloop"),
    Column("prompt_set", pa.string(), "the prompt's set"),
    Column("chosen_model", pa.string(), "model version of the chosen answer"),
    Column("rejected_model", pa.string(), "model version of the rejected answer"),
    Column("sampled_from", pa.string(), "version serving when the pair was sampled (imported:FORMAT for imports)"),
    Column("on_policy", pa.bool_(), "both answers from sampled_from, a version that served"),
    Column("chosen_sampling", pa.string(), f"settings that made the chosen answer ({_SAMPLING_MEANING})"),
    Column("rejected_sampling", pa.string(), "settings that made the rejected answer"),
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
            "adds to its loss; DPO ignores it. " + RANKINGS_AS_PAIRS
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
            Column("sampling", pa.string(), f"settings that made the answer ({_SAMPLING_MEANING})"),
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

FORMATS["ultrafeedback"] = DatasetFormat(
    name="ultrafeedback",
    use="UltraFeedback-style rankings (every answer with its rank), e.g. for reward models or to binarise yourself",
    columns=(
        Column("prompt", MESSAGES, "the conversation answered, ending with the user's turn"),
        Column(
            "completions",
            pa.list_(
                pa.struct(
                    [
                        ("completion_id", pa.int64()),
                        ("response", MESSAGES),
                        ("model", pa.string()),
                        ("sampling", pa.string()),
                        ("rank", pa.int64()),
                    ]
                )
            ),
            "every answer shown (one assistant message each), its model version, settings and rank: 1 the best, "
            "equal ranks a tie",
        ),
        Column("all_bad", pa.bool_(), "the annotator found every answer bad (then every rank is 1)"),
        Column("pair_id", pa.int64(), "the ranking pair in pairloop"),
        Column("prompt_id", pa.int64(), "the prompt in pairloop"),
        Column("prompt_set", pa.string(), "the prompt's set"),
        Column("judge", pa.string(), "a stable pseudonym of the annotator (HMAC of their id)"),
        Column("source", pa.string(), "who ranked: human or simulated"),
    ),
    rows=ultrafeedback_rows,
    one_row_per_vote=True,
    whole_rankings=True,
    mapping=(
        "One row per ranking of 3 or 4 answers (votes on pairs of two are left out), whatever the combine rule. "
        "Gold, repeat and excluded annotators' rankings follow the filters like votes. The pairs these rankings "
        "imply are the trl-preference export of the same filters."
    ),
)

DATASET_FORMATS = tuple(FORMATS)
