"""Bringing data in: prompt files, and preference data sets in the formats the field publishes them in.

Every import reads and checks the whole file before it writes anything, and writes in one transaction: a file with
a bad line changes nothing (preference imports may be told to skip bad rows instead), and the error names the lines.
Preference files are read twice, a line at a time: once to check every row, once to write them in batches, so an
import holds one batch of rows however long the file is.
Imported votes are marked as imported (source, file and format), belong to no annotator, and were shown on no screen.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar, cast

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from annotate.errors import Conflict, Invalid
from annotate.models import Completion, Judgement, ModelVersion, Pair, Prompt, conversation_hash
from training.data import hh_rlhf_to_trl
from training.data import messages_from as training_messages_from

Message = dict[str, str]
Progress = Callable[[int], None]
T = TypeVar("T")

PROMPT_FILE_FORMATS = ("jsonl", "csv", "text")
PREFERENCE_FORMATS = ("trl", "hh-rlhf", "ultrafeedback")
MAX_ERRORS_SHOWN = 20
WRITE_BATCH = 500

# A JSON escape of NUL (not one whose backslash is itself escaped, as in "\\u0000", which is text). PostgreSQL
# refuses NUL in text and in jsonb, so a line that holds one is refused before anything is decoded.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
NUL_REASON = "contains a NUL character (\\u0000), which cannot be stored: remove it"

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "text"}


def _ignore_progress(done: int) -> None:
    pass


def source_name(name: str) -> str:
    """A file name as stored beside what came from it: NUL (which PostgreSQL refuses) left out, 200 characters."""
    return name.replace("\x00", "")[:200]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """itertools.batched, which Python 3.11 lacks."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class ImportRejected(Invalid):
    """A file that cannot be imported as it is: an Invalid `file`, with the message and the first bad lines. Nothing
    was written; `lines` names every bad line."""

    def __init__(self, message: str, lines: Sequence[LineError] = ()) -> None:
        self.message = message
        self.lines = list(lines)
        super().__init__({"file": self.details()})

    def details(self) -> list[str]:
        """The message and the first bad lines, ready to show."""
        shown = [str(error) for error in self.lines[:MAX_ERRORS_SHOWN]]
        more = len(self.lines) - len(shown)
        return [self.message, *shown, *([f"... and {more} more bad lines"] if more > 0 else [])]

    def __str__(self) -> str:
        return "\n".join(self.details())


def _rejected_lines(errors: list[LineError], what: str) -> ImportRejected:
    return ImportRejected(f"{len(errors)} bad {what}{'s' if len(errors) != 1 else ''}; nothing was imported", errors)


# --- Reading files ---------------------------------------------------------------------------------------------


def check_size(size: int) -> None:
    if size > settings.DATA_IMPORT_MAX_BYTES:
        raise ImportRejected(
            f"the file has {size:,} bytes; the limit is {settings.DATA_IMPORT_MAX_BYTES:,} (DATA_IMPORT_MAX_BYTES)"
        )


def decode(data: bytes) -> str:
    """The file's text (UTF-8, with or without a byte order mark), after checking its size."""
    check_size(len(data))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportRejected(f"the file is not UTF-8 text (byte {error.start} cannot be read)") from None


def read_file(path: Path) -> str:
    check_size(path.stat().st_size)
    return decode(path.read_bytes())


def lines_of(text: str) -> list[str]:
    # Not str.splitlines(): it also splits on characters JSON strings may hold as they are (U+2028, form feed).
    return [line.removesuffix("\r") for line in text.split("\n")]


# Each call reads the file again from its beginning, a line at a time: a preference import reads it twice.
LineSource = Callable[[], Iterator[str]]


def text_lines(text: str) -> Iterator[str]:
    """The lines of `text` as lines_of splits them, one at a time (no list of them all beside the text)."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end].removesuffix("\r")
        start = end + 1
    yield text[start:].removesuffix("\r")


def _decoded_lines(raw_lines: Iterable[bytes]) -> Iterator[str]:
    """Lines of UTF-8 bytes (split at newlines only, as lines_of splits text) as text; ImportRejected, naming the
    byte, at the first that is not UTF-8. A newline byte is never part of another character, so decoding line by
    line accepts exactly the files that decoding them whole does."""
    offset = 0
    for number, raw in enumerate(raw_lines):
        try:
            line = raw.decode("utf-8-sig" if number == 0 else "utf-8")
        except UnicodeDecodeError as error:
            raise ImportRejected(f"the file is not UTF-8 text (byte {offset + error.start} cannot be read)") from None
        offset += len(raw)
        yield line.removesuffix("\n").removesuffix("\r")


def file_lines(path: Path) -> LineSource:
    """The file's lines, read from disk again for each pass (its size checked now)."""
    check_size(path.stat().st_size)

    def lines() -> Iterator[str]:
        with path.open("rb") as file:  # binary lines end at b"\n" only
            yield from _decoded_lines(file)

    return lines


def content_lines(content: bytes) -> LineSource:
    """The lines of a file held as bytes (an upload), decoded a line at a time (its size checked now)."""
    check_size(len(content))
    return lambda: _decoded_lines(io.BytesIO(content))


def _check_row_count(count: int) -> None:
    if count > settings.DATA_IMPORT_MAX_ROWS:
        raise ImportRejected(
            f"the file has {count:,} rows; the limit is {settings.DATA_IMPORT_MAX_ROWS:,} (DATA_IMPORT_MAX_ROWS)"
        )


def _json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any | LineError]]:
    """(line number, decoded value or the reason it is not JSON) for every line that is not blank."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if "\x00" in line or _ESCAPED_NUL.search(line):
            yield number, LineError(number, NUL_REASON)
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            yield number, LineError(number, f"not valid JSON ({error.msg} at column {error.colno})")
        except RecursionError:
            yield number, LineError(number, "nested too deeply to read (no row needs more than a few levels)")


def _parsed_json_lines(lines: Iterable[str], parse: Callable[[Any], T]) -> Iterator[tuple[int, T | LineError]]:
    """(line number, what `parse` made of the line's JSON, or why the line is bad) for every line not blank."""
    for number, value in _json_lines(lines):
        if isinstance(value, LineError):
            yield number, value
            continue
        try:
            yield number, parse(value)
        except ValueError as error:
            yield number, LineError(number, str(error))


# --- Messages --------------------------------------------------------------------------------------------------


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string")
    if "\x00" in value:
        raise ValueError(f"{where} {NUL_REASON}")
    return value


def check_prompt_length(messages: list[Message]) -> None:
    """ValueError when a conversation is longer than PROMPT_MAX_CHARACTERS (all its messages together): the model
    server refuses prompts longer than its context, and such a prompt would be sampled again and again."""
    length = sum(len(message["content"]) for message in messages)
    if length > settings.PROMPT_MAX_CHARACTERS:
        raise ValueError(
            f"the prompt has {length:,} characters; the limit is {settings.PROMPT_MAX_CHARACTERS:,} "
            "(PROMPT_MAX_CHARACTERS)"
        )


def messages_from(value: Any, where: str) -> list[Message]:
    """OpenAI-style ({role, content}) or ShareGPT-style ({from: human|gpt|system, value}) messages, as OpenAI's:
    training.data's validator (the project's one), plus what a database row needs (no NUL characters)."""
    messages = training_messages_from(value, where)
    for index, message in enumerate(messages):
        _text(message["content"], f"{where}[{index}].content")
    return messages


def _prompt_conversation(messages: list[Message], where: str) -> list[Message]:
    """A conversation to be answered: cut after its last user turn (a ShareGPT record carries its answers)."""
    last_user = max((index for index, message in enumerate(messages) if message["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError(f"{where} has no user message")
    return messages[: last_user + 1]


# --- Prompts ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptRow:
    messages: list[Message]
    tags: list[str] = field(default_factory=list)


def _tags(value: dict[str, Any]) -> list[str]:
    tags = value.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) and tag.strip() for tag in tags):
        raise ValueError('"tags" must be a list of non-empty strings')
    if any("\x00" in tag for tag in tags):
        raise ValueError(f'"tags" {NUL_REASON}')
    category = value.get("category")
    if category is not None:
        tags = [*tags, _text(category, '"category"')]
    return [tag.strip() for tag in dict.fromkeys(tags)]


def prompt_row_from(value: Any) -> PromptRow:
    """One prompt from a decoded JSON object, in any of the shapes the import accepts (see README)."""
    if not isinstance(value, dict):
        raise ValueError(f"each line must be a JSON object, not {type(value).__name__}")
    shapes = [key for key in ("prompt", "messages", "conversations", "turns") if key in value]
    if len(shapes) != 1:
        raise ValueError('needs exactly one of "prompt", "messages", "conversations" (ShareGPT) or "turns" (MT-Bench)')
    shape = shapes[0]
    if shape == "turns":
        turns = value["turns"]
        if not isinstance(turns, list) or not turns:
            raise ValueError('"turns" must be a non-empty list of strings')
        # MT-Bench's later turns only make sense after the model's answer to the first: the first is the prompt.
        messages = [{"role": "user", "content": _text(turns[0], '"turns"[0]')}]
    elif shape == "prompt" and isinstance(value["prompt"], str):
        messages = [{"role": "user", "content": _text(value["prompt"], '"prompt"')}]
        if value.get("system") is not None:
            messages.insert(0, {"role": "system", "content": _text(value["system"], '"system"')})
    else:
        messages = _prompt_conversation(messages_from(value[shape], f'"{shape}"'), f'"{shape}"')
    check_prompt_length(messages)
    return PromptRow(messages=messages, tags=_tags(value))


def _prompts_from_jsonl(lines: list[str]) -> Iterator[tuple[int, PromptRow | LineError]]:
    return _parsed_json_lines(lines, prompt_row_from)


CSV_HEADER_REASON = 'the header row must name a "prompt" column'


def check_prompt_csv_header(start: str) -> None:
    """ImportRejected, as the whole file's check would say it, when the CSV that begins with `start` (its first few
    kilobytes are enough) has no "prompt" column: what an upload can be told at once, before a worker reads it all."""
    try:
        header = next(csv.reader(io.StringIO(start, newline="")), [])
    except csv.Error:
        return  # a header too odd to read from its beginning: the whole file's check names the line
    if "prompt" not in header:
        raise _rejected_lines([LineError(1, CSV_HEADER_REASON)], "line")


def _prompts_from_csv(text: str) -> Iterator[tuple[int, PromptRow | LineError]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            yield 1, LineError(1, CSV_HEADER_REASON)
            return
        for record in reader:
            number = reader.line_num
            try:
                row: dict[str, Any] = {"prompt": record["prompt"] or ""}
                for optional in ("system", "category"):
                    if record.get(optional):
                        row[optional] = record[optional]
                yield number, prompt_row_from(row)
            except ValueError as error:
                yield number, LineError(number, str(error))
    except csv.Error as error:  # a field over the csv module's limit, a quote left open: the rest cannot be read
        yield reader.line_num + 1, LineError(reader.line_num + 1, f"not valid CSV ({error})")


def _prompts_from_text(lines: list[str]) -> Iterator[tuple[int, PromptRow | LineError]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield number, prompt_row_from({"prompt": line.strip()})
            except ValueError as error:
                yield number, LineError(number, str(error))


def prompt_file_format(name: str, requested: str | None = None) -> str:
    """The format asked for, or the one the file name says (.jsonl/.json, .csv, .txt)."""
    if requested:
        if requested not in PROMPT_FILE_FORMATS:
            raise ImportRejected(f"unknown format {requested!r}: use one of {', '.join(PROMPT_FILE_FORMATS)}")
        return requested
    detected = _SUFFIX_FORMATS.get(Path(name).suffix.lower())
    if detected is None:
        raise ImportRejected(
            f"cannot tell the format of {name!r} from its name: name it .jsonl, .csv or .txt, or give the format"
        )
    return detected


def parse_prompts(text: str, *, file_format: str) -> list[PromptRow]:
    """Every prompt in the file, or ImportRejected naming the bad lines (the first 20) when any line is bad."""
    if file_format == "csv":
        parsed = list(_prompts_from_csv(text))
    elif file_format == "text":
        parsed = list(_prompts_from_text(lines_of(text)))
    else:
        parsed = list(_prompts_from_jsonl(lines_of(text)))
    errors = [row for _, row in parsed if isinstance(row, LineError)]
    if errors:
        raise _rejected_lines(errors, "line")
    rows = [row for _, row in parsed if isinstance(row, PromptRow)]
    if not rows:
        raise ImportRejected("the file holds no prompts")
    _check_row_count(len(rows))
    return rows


@dataclass(frozen=True)
class PromptImportResult:
    created: int
    duplicates: int  # already stored, or earlier in the same file
    prompt_set: str


def _existing_hashes(hashes: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in batched(hashes, WRITE_BATCH):
        found.update(Prompt.objects.filter(content_hash__in=chunk).values_list("content_hash", flat=True))
    return found


def prompts_import(
    *, rows: Sequence[PromptRow], prompt_set: str, source: str, on_progress: Progress = _ignore_progress
) -> PromptImportResult:
    """Store the prompts that are not stored yet (the same conversation is one prompt), in one transaction."""
    by_hash: dict[str, PromptRow] = {}
    for row in rows:
        by_hash.setdefault(conversation_hash(row.messages), row)
    try:
        with transaction.atomic():
            stored = _existing_hashes(by_hash)
            new = {digest: row for digest, row in by_hash.items() if digest not in stored}
            for chunk in batched(new.items(), WRITE_BATCH):
                Prompt.objects.bulk_create(
                    Prompt(
                        messages=row.messages,
                        content_hash=digest,
                        prompt_set=prompt_set,
                        tags=row.tags,
                        source=source_name(source),
                    )
                    for digest, row in chunk
                )
                on_progress(len(chunk))
    except IntegrityError:
        raise ImportRejected("another import stored some of these prompts at the same moment; try again") from None
    return PromptImportResult(created=len(new), duplicates=len(rows) - len(new), prompt_set=prompt_set)


class PromptExists(Conflict):
    """The same conversation is stored already; the answer carries its id as `prompt`."""

    code = "duplicate"

    def __init__(self, prompt: Prompt) -> None:
        super().__init__(f"this conversation is already stored as prompt {prompt.pk}", prompt=prompt.pk)
        self.prompt = prompt


def prompt_create(*, row: PromptRow, prompt_set: str, source: str) -> Prompt:
    """Store one prompt; PromptExists when the same conversation is stored already."""
    existing = Prompt.objects.filter(content_hash=conversation_hash(row.messages)).first()
    if existing is not None:
        raise PromptExists(existing)
    return Prompt.objects.create(
        messages=row.messages, prompt_set=prompt_set, tags=row.tags, source=source_name(source)
    )


# --- Preference data -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceRow:
    prompt: list[Message]
    chosen: str
    rejected: str


def _single_answer(messages: list[Message], where: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise ValueError(f"{where} must be exactly one assistant message after the prompt")
    return messages[0]["content"]


def _checked(prompt: list[Message], chosen: str, rejected: str) -> PreferenceRow:
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user message")
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if not answer.strip():
            raise ValueError(f"the {name} answer is empty")
        if "\x00" in answer:
            raise ValueError(f"the {name} answer {NUL_REASON}")
    if any("\x00" in message["content"] for message in prompt):
        raise ValueError(f"the prompt {NUL_REASON}")
    check_prompt_length(prompt)
    if chosen.strip() == rejected.strip():
        raise ValueError("chosen and rejected are the same answer: the row carries no preference")
    return PreferenceRow(prompt=prompt, chosen=chosen, rejected=rejected)


def _split_implicit(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], str, str]:
    """The shared turns are the prompt; what follows must be one assistant answer on each side."""
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected differ before their last message, so they share no prompt")
    return chosen[:-1], _single_answer(chosen[-1:], '"chosen"'), _single_answer(rejected[-1:], '"rejected"')


def _trl_string_prefix(chosen: str, rejected: str) -> int:
    """Where TRL's extract_prompt splits two strings with an implicit prompt: after their longest common
    beginning, less a space just before the point where they differ (the space starts the answers)."""
    pairs = zip(chosen, rejected, strict=False)
    split = next((index for index, (a, b) in enumerate(pairs) if a != b), min(len(chosen), len(rejected)))
    if split and chosen[split - 1] == " ":
        split -= 1
    return split


def trl_row(value: Any) -> PreferenceRow:
    """A TRL preference row: standard (strings) or conversational (messages), explicit or implicit prompt."""
    if not isinstance(value, dict) or "chosen" not in value or "rejected" not in value:
        raise ValueError('a TRL preference row needs "chosen" and "rejected"')
    chosen, rejected, prompt = value["chosen"], value["rejected"], value.get("prompt")
    if isinstance(chosen, list):
        chosen_messages = messages_from(chosen, '"chosen"')
        rejected_messages = messages_from(rejected, '"rejected"')
        if isinstance(prompt, list):
            return _checked(
                messages_from(prompt, '"prompt"'),
                _single_answer(chosen_messages, '"chosen"'),
                _single_answer(rejected_messages, '"rejected"'),
            )
        return _checked(*_split_implicit(chosen_messages, rejected_messages))
    chosen, rejected = _text(chosen, '"chosen"'), _text(rejected, '"rejected"')
    if prompt is None:
        split = _trl_string_prefix(chosen, rejected)
        # The split falls inside running text: the space TRL leaves at the start of each answer is not content.
        prompt, chosen, rejected = chosen[:split].strip(), chosen[split:].strip(), rejected[split:].strip()
        if not prompt.strip():
            raise ValueError("chosen and rejected share no beginning, so there is no implicit prompt")
    return _checked([{"role": "user", "content": _text(prompt, '"prompt"')}], chosen, rejected)


def hh_rlhf_row(value: Any) -> PreferenceRow:
    """An Anthropic HH-RLHF row: two whole transcripts whose shared turns are the prompt."""
    pair = hh_rlhf_to_trl(value)
    return _checked(pair["prompt"], pair["chosen"][0]["content"], pair["rejected"][0]["content"])


def _score(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number")
    return float(value)


def ultrafeedback_row(value: Any) -> PreferenceRow:
    """An UltraFeedback-binarized row: prompt, chosen and rejected conversations, score_chosen > score_rejected."""
    if not isinstance(value, dict):
        raise ValueError("each line must be a JSON object")
    missing = [key for key in ("prompt", "chosen", "rejected", "score_chosen", "score_rejected") if key not in value]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if _score(value["score_chosen"], '"score_chosen"') <= _score(value["score_rejected"], '"score_rejected"'):
        raise ValueError("score_chosen is not higher than score_rejected: the row carries no preference")
    prompt, chosen, rejected = _split_implicit(
        messages_from(value["chosen"], '"chosen"'), messages_from(value["rejected"], '"rejected"')
    )
    if prompt and prompt[-1]["content"].strip() != _text(value["prompt"], '"prompt"').strip():
        raise ValueError('"prompt" is not the last user turn of the conversations')
    return _checked(prompt, chosen, rejected)


_PREFERENCE_PARSERS: dict[str, Callable[[Any], PreferenceRow]] = {
    "trl": trl_row,
    "hh-rlhf": hh_rlhf_row,
    "ultrafeedback": ultrafeedback_row,
}


class PreferenceRows:
    """The good rows of a checked preference file, parsed again from the file each time they are iterated, so no
    list of them all is ever held. ImportRejected while iterating when the file is not what was checked."""

    def __init__(
        self, lines: LineSource, parse: Callable[[Any], PreferenceRow], count: int, skipped: Collection[int]
    ) -> None:
        self._lines, self._parse, self._count, self._skipped = lines, parse, count, skipped

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[PreferenceRow]:
        changed = "the file changed after it was checked; nothing was imported"
        count = 0
        for number, row in _parsed_json_lines(self._lines(), self._parse):
            if isinstance(row, LineError):
                if number in self._skipped:
                    continue
                raise ImportRejected(changed, [row])
            count += 1
            yield row
        if count != self._count:
            raise ImportRejected(changed)


@dataclass(frozen=True)
class PreferenceFile:
    rows: PreferenceRows
    skipped: list[LineError]


def parse_preferences(text: str | LineSource, *, dataset_format: str, skip_bad: bool = False) -> PreferenceFile:
    """Check every preference row of a JSON Lines file (its text, or a LineSource such as file_lines). Bad rows reject
    the file (naming them) unless skip_bad. The rows are not kept: iterating the result's `rows` reads them again."""
    parse = _PREFERENCE_PARSERS.get(dataset_format)
    if parse is None:
        raise ImportRejected(f"unknown format {dataset_format!r}: use one of {', '.join(PREFERENCE_FORMATS)}")
    lines: LineSource = (lambda: text_lines(text)) if isinstance(text, str) else text
    count = 0
    errors: list[LineError] = []
    for _, row in _parsed_json_lines(lines(), parse):
        if isinstance(row, LineError):
            errors.append(row)
        else:
            count += 1
    if errors and not skip_bad:
        raise _rejected_lines(errors, "row")
    if not count:
        raise ImportRejected("the file holds no usable preference rows", errors)
    _check_row_count(count + len(errors))
    skipped_lines = frozenset(error.line for error in errors)
    return PreferenceFile(rows=PreferenceRows(lines, parse, count, skipped_lines), skipped=errors)


@dataclass(frozen=True)
class PreferenceImportResult:
    imported: int
    duplicates: int  # the same preference (prompt, chosen, rejected) stored by an earlier import or earlier here
    new_prompts: int
    skipped: list[LineError]
    model_version: str


def external_version(*, dataset_format: str) -> ModelVersion:
    """The stand-in model version that imported answers of this format belong to; it never serves."""
    version, _ = ModelVersion.objects.get_or_create(
        name=f"imported:{dataset_format}",
        defaults={
            "base_model": f"unknown: answers imported from {dataset_format} data",
            "status": ModelVersion.Status.EXTERNAL,
        },
    )
    return version


def _unset_value(field: models.Field[Any, Any], now: datetime) -> Any:
    """What a model instance would store in a field nobody set: its default, or the time for auto_now(_add)."""
    return now if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False) else field.get_default()


def _source_sql(
    db: BaseDatabaseWrapper, fields: Sequence[models.Field[Any, Any]], rows: list[list[Any]]
) -> tuple[str, list[Any]]:
    """The rows to insert, as SQL and its parameters. PostgreSQL takes one array a column (UNNEST), as bulk_create
    sends them there: a statement with a placeholder for every value costs psycopg more to compose than it costs the
    database to run."""
    if db.vendor == "postgresql":
        arrays = ", ".join(f"%s::{cast(str, field.db_type(db)).split('(')[0]}[]" for field in fields)
        return f"SELECT * FROM UNNEST({arrays})", [list(column) for column in zip(*rows, strict=True)]
    one_row = f"({', '.join(['%s'] * len(fields))})"
    return f"VALUES {', '.join([one_row] * len(rows))}", [value for row in rows for value in row]


def _insert(
    model: type[models.Model], columns: Sequence[str], rows: Sequence[Sequence[Any]], *, now: datetime, **same: Any
) -> list[int]:
    """Insert rows into the model's table, storing what bulk_create would, without a model instance for each row
    (Django's per-object, per-field work was most of a large import's time). Each row gives the values of
    `columns` (attnames, such as "prompt_id"); `same` gives values shared by every row; every other field takes the
    value a new instance would (its default, called for each row when it is callable, such as a random key; `now`
    for auto_now and auto_now_add). Each value is prepared by its field (JSON, UUIDs, dates) for the database in
    use. Returns the new ids, in the rows' order."""
    db = connections[DEFAULT_DB_ALIAS]  # once: `connection` looks it up again on every use
    meta = model._meta
    fields = {field.attname: field for field in meta.concrete_fields if not field.primary_key}
    if unknown := (set(columns) | set(same)) - set(fields):
        raise TypeError(f"{model.__name__} has no field {', '.join(sorted(unknown))}")
    given = [fields[name] for name in columns]
    unset = [field for name, field in fields.items() if name not in columns and name not in same]
    per_row = [field for field in unset if field.has_default() and callable(field.default)]
    fixed = [(fields[name], value) for name, value in same.items()]
    fixed += [(field, _unset_value(field, now)) for field in unset if field not in per_row]
    fixed_values = [field.get_db_prep_save(value, db) for field, value in fixed]
    prepared = [
        [
            *(field.get_db_prep_save(value, db) for field, value in zip(given, row, strict=True)),
            *(field.get_db_prep_save(field.get_default(), db) for field in per_row),
            *fixed_values,
        ]
        for row in rows
    ]
    order = [*given, *per_row, *(field for field, _ in fixed)]

    quote = db.ops.quote_name
    names = ", ".join(quote(cast(str, field.column)) for field in order)  # a concrete field always has a column
    insert = f"INSERT INTO {quote(meta.db_table)} ({names}) "
    ids: list[int] = []
    with db.cursor() as cursor:
        if not db.features.can_return_rows_from_bulk_insert:  # SQLite before 3.35: one row at a time
            for values in prepared:
                cursor.execute(insert + _source_sql(db, order, [values])[0], values)
                ids.append(db.ops.last_insert_id(cursor, meta.db_table, meta.pk.attname))
            return ids
        # As many rows a statement as bulk_create puts in one (SQLite limits the parameters of a statement).
        for batch in batched(prepared, max(1, db.ops.bulk_batch_size(order, prepared))):
            source, params = _source_sql(db, order, batch)
            cursor.execute(f"{insert}{source} RETURNING {quote(cast(str, meta.pk.column))}", params)
            ids.extend(new_id for (new_id,) in cursor.fetchall())  # in the rows' order, as bulk_create takes them
    if len(ids) != len(rows):
        raise RuntimeError(f"{len(rows)} rows inserted into {meta.db_table}, but {len(ids)} ids came back")
    return ids


def _prompts_for(
    rows: Sequence[PreferenceRow], digests: Sequence[str], *, prompt_set: str, source: str, now: datetime
) -> tuple[dict[str, int], dict[str, int]]:
    """The ids of the rows' prompts (by conversation hash): those stored already, and those stored now."""
    wanted = dict(zip(digests, (row.prompt for row in rows), strict=True))
    stored = dict(Prompt.objects.filter(content_hash__in=list(wanted)).values_list("content_hash", "id"))
    new = [(digest, messages) for digest, messages in wanted.items() if digest not in stored]
    # Prompts that come with someone else's preference data are not sampled for new pairs unless staff say so.
    ids = _insert(
        Prompt,
        ("content_hash", "messages"),
        new,
        now=now,
        prompt_set=prompt_set,
        source=source_name(source),
        tags=[],
        is_active=False,
    )
    return stored, {digest: id_ for (digest, _), id_ in zip(new, ids, strict=True)}


def _stored_preferences(
    version: ModelVersion, prompt_ids: Collection[int], answers: Collection[str]
) -> set[tuple[int, str, str]]:
    """(prompt, chosen, rejected) of the votes already imported for these prompts whose answer A is one of `answers`
    (the chosen and rejected answers of the rows at hand: only those can be the same preference). Votes written
    earlier in the same transaction are found too, so no set of every preference imported so far is kept."""
    stored: set[tuple[int, str, str]] = set()
    if not prompt_ids:
        return stored
    # The version is checked here rather than in SQL: given both, SQLite reads every pair of the version (its index
    # looks the more selective) for each chunk, which made a large import slower with each chunk.
    votes = Judgement.objects.filter(
        source=Judgement.Source.IMPORTED, pair__prompt_id__in=list(prompt_ids), pair__completion_a__text__in=answers
    )
    for sampled_from, prompt_id, choice, text_a, text_b in votes.order_by().values_list(
        "pair__sampled_from_id", "pair__prompt_id", "choice", "pair__completion_a__text", "pair__completion_b__text"
    ):
        if sampled_from == version.pk:
            chosen, rejected = (text_a, text_b) if choice == Judgement.Choice.A else (text_b, text_a)
            stored.add((prompt_id, chosen, rejected))
    return stored


def preferences_import(
    *,
    preference_file: PreferenceFile,
    dataset_format: str,
    file_name: str,
    prompt_set: str = "imported",
    on_progress: Progress = _ignore_progress,
) -> PreferenceImportResult:
    """Store each row as a pair of external answers with one imported vote, all in one transaction.

    Which of chosen and rejected becomes answer A is random, so the position carries no signal.
    """
    detail = f"{source_name(file_name)} ({dataset_format})"[:300]
    imported = duplicates = new_prompts = 0
    with transaction.atomic():
        version = external_version(dataset_format=dataset_format)
        for chunk in batched(preference_file.rows, WRITE_BATCH):
            now = timezone.now()
            digests = [conversation_hash(row.prompt) for row in chunk]
            stored, created = _prompts_for(chunk, digests, prompt_set=prompt_set, source=file_name, now=now)
            new_prompts += len(created)
            # Preferences stored before this batch (by earlier imports, or earlier in this file); a prompt stored
            # just now has no votes yet.
            texts = {answer for row in chunk for answer in (row.chosen, row.rejected)}
            seen = _stored_preferences(version, stored.values(), texts)
            prompts = stored | created
            fresh: list[tuple[int, PreferenceRow]] = []
            for row, digest in zip(chunk, digests, strict=True):
                key = (prompts[digest], row.chosen, row.rejected)
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                fresh.append((prompts[digest], row))
            chosen_first = [secrets.randbits(1) == 1 for _ in fresh]
            answers = _insert(
                Completion,
                ("prompt_id", "text"),
                [
                    (prompt_id, text)
                    for (prompt_id, row), first in zip(fresh, chosen_first, strict=True)
                    for text in ((row.chosen, row.rejected) if first else (row.rejected, row.chosen))
                ],
                now=now,
                model_version_id=version.pk,
                sampling={},
                seed=None,
            )
            pairs = _insert(
                Pair,
                ("prompt_id", "completion_a_id", "completion_b_id"),
                [(prompt_id, answers[2 * index], answers[2 * index + 1]) for index, (prompt_id, _) in enumerate(fresh)],
                now=now,
                sampled_from_id=version.pk,
                judgements_required=1,
                judgement_count=1,
            )
            _insert(
                Judgement,
                ("pair_id", "choice"),
                [
                    (pair_id, Judgement.Choice.A if first else Judgement.Choice.B)
                    for pair_id, first in zip(pairs, chosen_first, strict=True)
                ],
                now=now,
                annotator_id=None,
                a_on_left=None,
                source=Judgement.Source.IMPORTED,
                source_detail=detail,
            )
            imported += len(fresh)
            on_progress(len(chunk))
    return PreferenceImportResult(
        imported=imported,
        duplicates=duplicates,
        new_prompts=new_prompts,
        skipped=preference_file.skipped,
        model_version=version.name,
    )
