import hashlib
import json
import tracemalloc
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from annotate.data import imports
from annotate.models import Completion, Judgement, ModelVersion, Pair, Prompt, conversation_hash
from annotate.quality.preferences import PreferenceRules, judgements_for_preferences, verdicts
from tests.conftest import SHARED_DATA
from training.data import hh_rlhf_to_trl

pytestmark = pytest.mark.django_db

MT_BENCH = SHARED_DATA / "mt_bench_questions.jsonl"
HH_RLHF = SHARED_DATA / "hh_rlhf_harmless_dev.jsonl"
HH_BAD_LINES = (87, 517, 926)  # chosen answer empty


def jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def stored_counts():
    return (Prompt.objects.count(), Completion.objects.count(), Pair.objects.count(), Judgement.objects.count())


# --- Prompts ---------------------------------------------------------------------------------------------------


def test_mt_bench_gives_80_prompts_with_their_categories_as_tags(capsys):
    call_command("import_prompts", str(MT_BENCH), "--set", "mt-bench")

    assert "80 prompts imported into set 'mt-bench'; 0 duplicates skipped" in capsys.readouterr().out
    prompts = Prompt.objects.all()
    assert prompts.count() == 80
    assert {prompt.prompt_set for prompt in prompts} == {"mt-bench"}
    assert all(prompt.source == "mt_bench_questions.jsonl" for prompt in prompts)
    first_line = json.loads(MT_BENCH.read_text().splitlines()[0])
    first = prompts.get(messages=[{"role": "user", "content": first_line["turns"][0]}])
    assert first.tags == [first_line["category"]]
    categories = {tag for prompt in prompts for tag in prompt.tags}
    assert categories == {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}


def test_importing_again_skips_every_duplicate(capsys):
    call_command("import_prompts", str(MT_BENCH))
    call_command("import_prompts", str(MT_BENCH), "--set", "other")
    assert "0 prompts imported into set 'other'; 80 duplicates skipped" in capsys.readouterr().out
    assert Prompt.objects.count() == 80 and not Prompt.objects.filter(prompt_set="other").exists()


def test_a_file_with_one_bad_line_imports_nothing_and_names_the_line(tmp_path):
    lines = MT_BENCH.read_text().splitlines()
    lines[41] = '{"question_id": 122, "category": "coding", "turns": []}'
    path = tmp_path / "mt_bench_broken.jsonl"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(CommandError) as raised:
        call_command("import_prompts", str(path))

    assert "1 bad line; nothing was imported" in str(raised.value)
    assert 'line 42: "turns" must be a non-empty list of strings' in str(raised.value)
    assert Prompt.objects.count() == 0


@pytest.mark.parametrize(
    ("row", "messages", "tags"),
    [
        ({"prompt": "Hi?"}, [{"role": "user", "content": "Hi?"}], []),
        (
            {"prompt": "Hi?", "system": "Be brief.", "tags": ["greeting"]},
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
            ["greeting"],
        ),
        (
            {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                          {"role": "user", "content": "And 3+3?"}]},
            [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
             {"role": "user", "content": "And 3+3?"}],
            [],
        ),
        (  # ShareGPT: roles mapped, the recorded answer after the last human turn is not part of the prompt
            {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hello"},
                               {"from": "gpt", "value": "Hi there"}]},
            [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}],
            [],
        ),
        (
            {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Now shorter."]},
            [{"role": "user", "content": "Write a poem."}],
            ["writing"],
        ),
        ({"prompt": [{"role": "user", "content": "As a list"}]}, [{"role": "user", "content": "As a list"}], []),
    ],
)  # fmt: skip
def test_prompt_shapes(row, messages, tags):
    parsed = imports.prompt_row_from(row)
    assert (parsed.messages, parsed.tags) == (messages, tags)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("[1, 2]", "each line must be a JSON object, not list"),
        ('{"text": "hi"}', 'needs exactly one of "prompt", "messages"'),
        ('{"prompt": "a", "messages": []}', 'needs exactly one of "prompt", "messages"'),
        ('{"prompt": "   "}', '"prompt" must be a non-empty string'),
        ('{"messages": [{"role": "robot", "content": "x"}]}', '"messages"[0].role must be one of'),
        ('{"messages": [{"role": "user"}]}', '"messages"[0] needs "role" and "content"'),
        ('{"conversations": [{"from": "gpt", "value": "I answer"}]}', '"conversations" has no user message'),
        ('{"prompt": "ok", "tags": "not-a-list"}', '"tags" must be a list of non-empty strings'),
        ('{"prompt": "ok"', "not valid JSON"),
    ],
)
def test_bad_prompt_lines_are_named_with_their_reason(tmp_path, row, reason):
    path = jsonl(tmp_path / "prompts.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(imports.ImportRejected) as raised:
        imports.parse_prompts(imports.read_file(path), file_format="jsonl")
    (error,) = raised.value.lines
    assert error.line == 2 and reason in error.reason


def test_only_the_first_20_bad_lines_are_listed(tmp_path):
    path = jsonl(tmp_path / "prompts.jsonl", ['{"nope": 1}'] * 25)
    with pytest.raises(imports.ImportRejected) as raised:
        imports.parse_prompts(imports.read_file(path), file_format="jsonl")
    details = raised.value.details()
    assert details[0] == "25 bad lines; nothing was imported"
    assert details[1].startswith("line 1: ") and details[20].startswith("line 20: ")
    assert details[21] == "... and 5 more bad lines" and len(details) == 22


def test_csv_with_a_prompt_column(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('id,prompt,category\n1,"First, with a comma",math\n2,"Second\nover two lines",\n3,,x\n')
    with pytest.raises(imports.ImportRejected) as raised:
        imports.parse_prompts(imports.read_file(path), file_format="csv")
    assert [str(error) for error in raised.value.lines] == ['line 5: "prompt" must be a non-empty string']

    path.write_text('id,prompt,category\n1,"First, with a comma",math\n2,"Second\nover two lines",\n')
    call_command("import_prompts", str(path))
    assert [(p.messages[0]["content"], p.tags) for p in Prompt.objects.all()] == [
        ("First, with a comma", ["math"]),
        ("Second\nover two lines", []),
    ]


def test_csv_without_a_prompt_column_is_rejected(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("question\nWhat?\n")
    with pytest.raises(CommandError, match='line 1: the header row must name a "prompt" column'):
        call_command("import_prompts", str(path))


def test_plain_text_is_one_prompt_a_line_and_repeats_count_as_duplicates(tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    path.write_text("What is DPO?\n\n  Why is the sky blue?  \nWhat is DPO?\n")
    call_command("import_prompts", str(path), "--set", "plain")
    assert "2 prompts imported into set 'plain'; 1 duplicates skipped" in capsys.readouterr().out
    assert [p.last_user_message for p in Prompt.objects.all()] == ["What is DPO?", "Why is the sky blue?"]


def test_format_comes_from_the_name_unless_given(tmp_path):
    assert imports.prompt_file_format("a.JSONL") == "jsonl"
    assert imports.prompt_file_format("a.csv") == "csv"
    assert imports.prompt_file_format("a.txt") == "text"
    assert imports.prompt_file_format("a.data", "text") == "text"
    with pytest.raises(imports.ImportRejected, match="cannot tell the format"):
        imports.prompt_file_format("a.data")


def test_size_limits_are_settings(tmp_path, settings):
    path = jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"question {i}"} for i in range(5)])
    settings.DATA_IMPORT_MAX_ROWS = 4
    with pytest.raises(CommandError, match=r"the file has 5 rows; the limit is 4 \(DATA_IMPORT_MAX_ROWS\)"):
        call_command("import_prompts", str(path))
    settings.DATA_IMPORT_MAX_BYTES = 10
    with pytest.raises(CommandError, match=r"the limit is 10 \(DATA_IMPORT_MAX_BYTES\)"):
        call_command("import_prompts", str(path))
    assert Prompt.objects.count() == 0


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CommandError, match="not UTF-8 text"):
        call_command("import_prompts", str(path))


# --- Preference data -------------------------------------------------------------------------------------------


def test_hh_rlhf_with_bad_rows_is_rejected_whole_naming_them():
    with pytest.raises(CommandError) as raised:
        call_command("import_preferences", str(HH_RLHF), "--format", "hh-rlhf")
    message = str(raised.value)
    assert "3 bad rows; nothing was imported" in message
    for line in HH_BAD_LINES:
        assert f"line {line}: the chosen answer is empty" in message
    assert stored_counts() == (0, 0, 0, 0)
    assert not ModelVersion.objects.exists()


def test_hh_rlhf_with_skip_bad_imports_the_good_rows_as_imported_votes(capsys):
    call_command("import_preferences", str(HH_RLHF), "--format", "hh-rlhf", "--skip-bad")

    output = capsys.readouterr().out
    assert "997 pairs imported as votes of imported:hh-rlhf" in output
    assert "3 bad rows skipped:" in output and "line 517: the chosen answer is empty" in output
    version = ModelVersion.objects.get()
    assert (version.name, version.status) == ("imported:hh-rlhf", ModelVersion.Status.EXTERNAL)
    assert stored_counts() == (997, 1994, 997, 997)
    votes = Judgement.objects.select_related("pair__completion_a", "pair__completion_b")
    assert {(v.source, v.source_detail, v.annotator_id, v.a_on_left, v.assignment_id) for v in votes} == {
        ("imported", "hh_rlhf_harmless_dev.jsonl (hh-rlhf)", None, None, None)
    }
    assert {(p.sampled_from_id, p.judgements_required, p.judgement_count) for p in Pair.objects.all()} == {
        (version.pk, 1, 1)
    }
    assert {(c.model_version_id, c.seed, json.dumps(c.sampling)) for c in Completion.objects.all()} == {
        (version.pk, None, "{}")
    }
    assert not Pair.objects.needing_judgements().exists()  # never served to annotators
    assert not Prompt.objects.filter(is_active=True).exists()

    # The vote points at the chosen answer, and which side is A carries no signal.
    first = hh_rlhf_to_trl(json.loads(HH_RLHF.read_text().splitlines()[0]))
    vote = votes.get(pair__prompt__content_hash=conversation_hash(first["prompt"]))
    chosen = vote.pair.completion_a if vote.choice == "a" else vote.pair.completion_b
    assert chosen.text == first["chosen"][0]["content"]
    a_chosen = votes.filter(choice="a").count()
    assert 350 < a_chosen < 650  # 997 fair coin flips


def test_imported_votes_count_as_preferences():
    call_command("import_preferences", str(HH_RLHF), "--format", "hh-rlhf", "--skip-bad", verbosity=0)
    rows = {json.dumps(pair["prompt"]): pair for line in HH_RLHF.read_text().splitlines() for pair in _converted(line)}
    found = list(verdicts(judgements_for_preferences(), PreferenceRules()))
    assert len(found) == 997
    for verdict in found[:50]:
        assert verdict.chosen == rows[json.dumps(verdict.pair.prompt.messages)]["chosen"][0]["content"]


def _converted(line):
    try:
        return [hh_rlhf_to_trl(json.loads(line))]
    except ValueError:
        return []


def test_importing_the_same_preferences_again_skips_them(tmp_path, capsys):
    path = jsonl(tmp_path / "trl.jsonl", [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": "Capital of France?", "chosen": "Paris!", "rejected": "Lyon."},
    ])  # fmt: skip
    call_command("import_preferences", str(path), "--format", "trl")
    call_command("import_preferences", str(path), "--format", "trl")
    output = capsys.readouterr().out
    assert "2 pairs imported as votes of imported:trl (1 new prompts); 1 already imported, skipped" in output
    assert "0 pairs imported as votes of imported:trl (0 new prompts); 3 already imported, skipped" in output
    assert stored_counts() == (1, 4, 2, 2)


def test_an_imported_prompt_reuses_the_stored_one(make_pair):
    pair = make_pair(messages=[{"role": "user", "content": "Name a colour."}])
    parsed = imports.parse_preferences(
        json.dumps({"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}), dataset_format="trl"
    )
    result = imports.preferences_import(preference_file=parsed, dataset_format="trl", file_name="colours.jsonl")
    assert (result.imported, result.new_prompts) == (1, 0)
    assert Pair.objects.exclude(pk=pair.pk).get().prompt_id == pair.prompt_id


# What an import stores, field by field: the expected values are worked out here from the rows themselves (not by
# the code under test), so a faster write path has to store exactly what the ORM's bulk_create stored before it.

SYSTEM = {"role": "system", "content": "Answer in one word."}
COLOUR = {"role": "user", "content": "Name a colour."}


def _digest(messages):
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def _written(model, after_id, started, finished):
    """The rows the import wrote (ids above after_id), in id order, every field; its timestamps checked and set
    aside, and the idempotency keys checked to be new random UUIDs."""
    rows = list(model.objects.filter(id__gt=after_id).order_by("id").values())
    for row in rows:
        for name in ("created_at", "updated_at"):
            if name in row:
                assert started <= row[name] <= finished
                row[name] = "during the import"
        if "idempotency_key" in row:
            assert isinstance(row["idempotency_key"], uuid.UUID) and row["idempotency_key"].version == 4
            row["idempotency_key"] = "random"
    return rows


@pytest.mark.parametrize("returning", [True, False], ids=["insert-returning", "row-by-row"])
def test_an_import_stores_exactly_these_field_values(monkeypatch, returning):
    if not returning:  # a database that cannot return the ids of a multi-row insert (SQLite before 3.35)
        if connection.vendor != "sqlite":
            pytest.skip("only SQLite may lack INSERT ... RETURNING")
        monkeypatch.setattr(type(connection.features), "can_return_rows_from_bulk_insert", False)
    earlier = imports.parse_preferences(
        json.dumps({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}), dataset_format="trl"
    )
    imports.preferences_import(preference_file=earlier, dataset_format="trl", file_name="earlier.jsonl")
    stored = Prompt.objects.create(messages=[COLOUR], prompt_set="colours", tags=["x"], source="demo")
    kept = Prompt.objects.values().get(pk=stored.pk)
    last = {model: max(model.objects.values_list("id", flat=True)) for model in (Prompt, Completion, Pair, Judgement)}
    rows = [
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."},  # the prompt stored already
        {"prompt": [SYSTEM, COLOUR], "chosen": [{"role": "assistant", "content": "Red"}],
         "rejected": [{"role": "assistant", "content": "Colours?"}]},  # a new prompt of two messages
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."},  # earlier in this file
        {"prompt": "Name a colour.", "chosen": "Green.", "rejected": "Blue."},
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},  # imported earlier
        {"prompt": "Capital of France?", "chosen": "Lyon.", "rejected": "Paris."},  # the other way round: new
        {"prompt": "Tea or coffee?", "chosen": "Tea.", "rejected": "Coffee."},  # a new prompt
    ]  # fmt: skip
    parsed = imports.parse_preferences("\n".join(json.dumps(row) for row in rows), dataset_format="trl")
    monkeypatch.setattr(imports, "WRITE_BATCH", 3)  # several chunks: duplicates are found across them too
    flips = iter([1, 0, 0, 1, 1])
    monkeypatch.setattr(imports.secrets, "randbits", lambda bits: next(flips))
    started = timezone.now()
    result = imports.preferences_import(preference_file=parsed, dataset_format="trl", file_name="prefs.jsonl")
    finished = timezone.now()
    assert (result.imported, result.duplicates, result.new_prompts) == (5, 2, 2)

    version = ModelVersion.objects.get()
    france = Prompt.objects.get(source="earlier.jsonl").pk
    tea_messages = [{"role": "user", "content": "Tea or coffee?"}]
    new_prompts = _written(Prompt, last[Prompt], started, finished)
    assert [{**prompt, "id": None} for prompt in new_prompts] == [
        {"id": None, "messages": messages, "content_hash": _digest(messages), "prompt_set": "imported", "tags": [],
         "source": "prefs.jsonl", "is_active": False, "created_at": "during the import", "refusal_count": 0,
         "last_refusal": "", "last_refused_at": None}
        for messages in ([SYSTEM, COLOUR], tea_messages)
    ]  # fmt: skip
    assert Prompt.objects.values().get(pk=stored.pk) == kept  # reused as it was
    assert Prompt.objects.get(pk=france).content_hash == _digest([{"role": "user", "content": "Capital of France?"}])
    two_messages, tea = (prompt["id"] for prompt in new_prompts)
    # (prompt, chosen, rejected, chosen is A) for each new preference, in the file's order
    fresh = [
        (stored.pk, "Blue.", "No.", True),
        (two_messages, "Red", "Colours?", False),
        (stored.pk, "Green.", "Blue.", False),
        (france, "Lyon.", "Paris.", True),
        (tea, "Tea.", "Coffee.", True),
    ]
    answers = _written(Completion, last[Completion], started, finished)
    assert [{**answer, "id": None} for answer in answers] == [
        {"id": None, "prompt_id": prompt, "model_version_id": version.pk, "text": text, "sampling": {}, "seed": None,
         "finish_reason": "", "prompt_tokens": None, "completion_tokens": None, "latency_ms": None,
         "response_id": "", "server": "", "created_at": "during the import"}
        for prompt, chosen, rejected, a_chosen in fresh
        for text in ((chosen, rejected) if a_chosen else (rejected, chosen))
    ]  # fmt: skip
    pairs = _written(Pair, last[Pair], started, finished)
    assert [{**pair, "id": None} for pair in pairs] == [
        {"id": None, "prompt_id": prompt, "completion_a_id": answers[2 * index]["id"],
         "completion_b_id": answers[2 * index + 1]["id"], "sampled_from_id": version.pk, "campaign_id": None,
         "judgements_required": 1, "judgement_count": 1, "lease_count": 0, "gold_choice": "",
         "created_at": "during the import", "answer_count": 2}
        for index, (prompt, *_) in enumerate(fresh)
    ]  # fmt: skip
    votes = _written(Judgement, last[Judgement], started, finished)
    assert [{**vote, "id": None} for vote in votes] == [
        {"id": None, "pair_id": pair["id"], "annotator_id": None, "assignment_id": None,
         "choice": "a" if a_chosen else "b", "strength": None, "rationale": "", "a_on_left": None,
         "time_spent_ms": None, "idempotency_key": "random", "source": "imported",
         "source_detail": "prefs.jsonl (trl)", "is_repeat": False, "created_at": "during the import",
         "updated_at": "during the import", "ranking": None}
        for pair, (*_, a_chosen) in zip(pairs, fresh, strict=True)
    ]  # fmt: skip
    assert len(set(Judgement.objects.values_list("idempotency_key", flat=True))) == Judgement.objects.count()


USER, ANSWER = {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}
WRONG = {"role": "assistant", "content": "Lyon."}


@pytest.mark.parametrize(
    ("dataset_format", "row"),
    [
        ("trl", {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}),
        ("trl", {"chosen": "Capital of France? Paris.", "rejected": "Capital of France? Lyon."}),
        ("trl", {"prompt": [USER], "chosen": [ANSWER], "rejected": [WRONG]}),
        ("trl", {"chosen": [USER, ANSWER], "rejected": [USER, WRONG]}),
        ("hh-rlhf", {"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris.",
                     "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Lyon."}),
        ("ultrafeedback", {"prompt": "Capital of France?", "prompt_id": "x1", "chosen": [USER, ANSWER],
                           "rejected": [USER, WRONG], "score_chosen": 9.0, "score_rejected": 2.5}),
    ],
)  # fmt: skip
def test_preference_formats(dataset_format, row):
    parsed = imports.parse_preferences(json.dumps(row), dataset_format=dataset_format)
    assert list(parsed.rows) == [imports.PreferenceRow(prompt=[USER], chosen="Paris.", rejected="Lyon.")]


@pytest.mark.parametrize(
    ("dataset_format", "row", "reason"),
    [
        ("trl", {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}, "chosen and rejected are the same answer"),
        ("trl", {"prompt": "Q?", "chosen": "Yes."}, 'needs "chosen" and "rejected"'),
        ("trl", {"chosen": "Paris.", "rejected": "Lyon."}, "share no beginning"),
        ("trl", {"chosen": [USER, ANSWER], "rejected": [{"role": "user", "content": "Other?"}, WRONG]},
         "differ before their last message"),
        ("trl", {"prompt": [USER], "chosen": [ANSWER, ANSWER], "rejected": [WRONG]}, "exactly one assistant message"),
        ("trl", {"prompt": [USER, ANSWER], "chosen": [ANSWER], "rejected": [WRONG]}, "must end with a user message"),
        ("hh-rlhf", {"chosen": "\n\nHuman: A?\n\nAssistant: x", "rejected": "\n\nHuman: B?\n\nAssistant: y"},
         "differ before their last assistant turn"),
        ("hh-rlhf", {"chosen": "no turns at all", "rejected": "\n\nHuman: B?\n\nAssistant: y"}, "not"),
        ("ultrafeedback", {"prompt": "Capital of France?", "chosen": [USER, ANSWER], "rejected": [USER, WRONG],
                           "score_chosen": 3, "score_rejected": 3}, "score_chosen is not higher"),
        ("ultrafeedback", {"prompt": "Another question", "chosen": [USER, ANSWER], "rejected": [USER, WRONG],
                           "score_chosen": 8, "score_rejected": 3}, "is not the last user turn"),
        ("ultrafeedback", {"prompt": "Capital of France?", "chosen": [USER, ANSWER]}, "missing rejected"),
    ],
)  # fmt: skip
def test_malformed_preference_rows_are_named(dataset_format, row, reason):
    good = {"trl": {"prompt": "Fine?", "chosen": "Yes.", "rejected": "No."}}.get(dataset_format)
    text = "\n".join(json.dumps(value) for value in ([good] if good else []) + [row])
    with pytest.raises(imports.ImportRejected) as raised:
        imports.parse_preferences(text, dataset_format=dataset_format)
    (error,) = raised.value.lines
    assert error.line == (2 if good else 1) and reason in error.reason


def test_skip_bad_with_nothing_good_left_is_rejected(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}])
    with pytest.raises(CommandError, match="holds no usable preference rows"):
        call_command("import_preferences", str(path), "--format", "trl", "--skip-bad")
    assert stored_counts() == (0, 0, 0, 0)


def _long_rows(count, prefix="Question"):
    return [{"prompt": f"{prefix} {n}?", "chosen": f"Yes {n}. " + "so " * 300, "rejected": f"No {n}."}
            for n in range(count)]  # fmt: skip


def test_a_bad_row_near_the_end_of_a_long_file_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "WRITE_BATCH", 100)  # many batches: the bad row comes long after the first
    rows = _long_rows(1200)
    rows[1198] = {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}
    path = jsonl(tmp_path / "long.jsonl", rows)

    with pytest.raises(CommandError, match="line 1199: chosen and rejected are the same answer"):
        call_command("import_preferences", str(path), "--format", "trl")
    assert stored_counts() == (0, 0, 0, 0)


def test_a_file_that_changes_between_its_check_and_its_write_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "WRITE_BATCH", 100)
    rows = _long_rows(1200)
    path = jsonl(tmp_path / "long.jsonl", rows)
    parsed = imports.parse_preferences(imports.file_lines(path), dataset_format="trl")
    rows[1198] = {"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}
    jsonl(path, rows)  # after the check: the rows are read again to be written, and row 1,199 is now bad

    with pytest.raises(imports.ImportRejected, match="changed after it was checked") as raised:
        imports.preferences_import(preference_file=parsed, dataset_format="trl", file_name="long.jsonl")
    assert [error.line for error in raised.value.lines] == [1199]
    assert stored_counts() == (0, 0, 0, 0)  # the 1,100 rows written before it are gone with the transaction


def test_a_preference_import_holds_one_batch_of_rows_however_long_its_file(tmp_path, monkeypatch):
    monkeypatch.setattr(imports, "WRITE_BATCH", 50)

    def peak_bytes(count):
        path = jsonl(tmp_path / f"{count}.jsonl", _long_rows(count, prefix=f"File {count}, question"))
        tracemalloc.start()
        try:
            parsed = imports.parse_preferences(imports.file_lines(path), dataset_format="trl")
            result = imports.preferences_import(preference_file=parsed, dataset_format="trl", file_name=path.name)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.imported == count
        return peak

    # The long file first: what the first import allocates once (query compilation, caches) counts against it.
    many, few = peak_bytes(2000), peak_bytes(200)  # about 1.8 MB and 0.2 MB of answers
    assert many < 1.5 * few, f"peak {many:,} bytes for 2,000 rows against {few:,} for 200"


# --- Input the database cannot store, or the model server cannot take ------------------------------------------
# Each is refused by line and stores nothing; the NUL cases matter on PostgreSQL, which refuses NUL in text and jsonb
# (run this file with DATABASE_URL=postgres://... to see them there).

NUL_ESCAPE = "\\u0000"  # the six characters of a JSON escape


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("escaped.jsonl", f'{{"prompt": "fine"}}\n{{"prompt": "before{NUL_ESCAPE}after"}}\n', 2),
        (
            "in_messages.jsonl",
            f'{{"prompt": "ok"}}\n{{"messages": [{{"role": "user", "content": "a{NUL_ESCAPE}"}}]}}\n',
            2,
        ),
        ("in_tags.jsonl", f'{{"prompt": "fine"}}\n{{"prompt": "ok", "tags": ["x{NUL_ESCAPE}"]}}\n', 2),
        ("raw.txt", "fine\nbefore\x00after\n", 2),
        ("raw.csv", "prompt\nfine\nbefore\x00after\n", 3),  # line 1 is the header
    ],
)
def test_a_prompt_with_a_nul_character_is_refused_by_line(tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CommandError, match=rf"1 bad line; nothing was imported\nline {line}: .*NUL character"):
        call_command("import_prompts", str(path), verbosity=0)
    assert stored_counts() == (0, 0, 0, 0)


def test_an_escaped_backslash_before_u0000_is_text_not_nul(tmp_path):
    path = jsonl(tmp_path / "text.jsonl", ['{"prompt": "write \\\\u0000 in C"}'])
    call_command("import_prompts", str(path), verbosity=0)
    assert Prompt.objects.get().messages == [{"role": "user", "content": "write \\u0000 in C"}]


@pytest.mark.parametrize(
    ("dataset_format", "row"),
    [
        ("trl", f'{{"prompt": "Q", "chosen": "good{NUL_ESCAPE}", "rejected": "bad"}}'),
        ("trl", '{"prompt": "Q", "chosen": "good\u0000", "rejected": "bad"}'),  # raw NUL
        ("hh-rlhf", f'{{"chosen": "\\n\\nHuman: Q{NUL_ESCAPE}\\n\\nAssistant: A", '
                    f'"rejected": "\\n\\nHuman: Q{NUL_ESCAPE}\\n\\nAssistant: B"}}'),
    ],
)  # fmt: skip
def test_a_preference_row_with_a_nul_character_is_refused_by_line(tmp_path, dataset_format, row):
    good = '{"prompt": "Q2", "chosen": "yes", "rejected": "no"}' if dataset_format == "trl" else None
    path = jsonl(tmp_path / "prefs.jsonl", [good or json.dumps(HH_ROW), row])
    with pytest.raises(CommandError, match=r"line 2: .*NUL character"):
        call_command("import_preferences", str(path), "--format", dataset_format, verbosity=0)
    assert stored_counts() == (0, 0, 0, 0)
    call_command("import_preferences", str(path), "--format", dataset_format, "--skip-bad", verbosity=0)
    assert stored_counts() == (1, 2, 1, 1)


HH_ROW = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}


@pytest.mark.parametrize("command", ["import_prompts", "import_preferences"])
def test_json_nested_100000_levels_deep_is_refused_by_line(tmp_path, command):
    deep = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = jsonl(tmp_path / "deep.jsonl", ['{"prompt": "Q", "chosen": "a", "rejected": "b"}', deep])
    options = ("--format", "trl") if command == "import_preferences" else ()
    with pytest.raises(CommandError, match="line 2: nested too deeply to read"):
        call_command(command, str(path), *options, verbosity=0)
    assert stored_counts() == (0, 0, 0, 0)


def test_a_prompt_longer_than_the_limit_is_refused_by_line(tmp_path, settings):
    megabyte = "x" * 1_000_000
    path = jsonl(tmp_path / "long.jsonl", [{"prompt": "short"}, {"prompt": megabyte}])
    with pytest.raises(CommandError, match=r"line 2: the prompt has 1,000,000 characters; the limit is 20,000"):
        call_command("import_prompts", str(path), verbosity=0)
    (tmp_path / "long.txt").write_text(f"short\n{megabyte}\n")
    with pytest.raises(CommandError, match=r"line 2: the prompt has 1,000,000 characters"):
        call_command("import_prompts", str(tmp_path / "long.txt"), verbosity=0)
    (tmp_path / "long.csv").write_text(f"prompt\nshort\n{megabyte}\n")  # over the csv module's own field limit too
    with pytest.raises(CommandError, match=r"line 3: not valid CSV \(field larger than field limit"):
        call_command("import_prompts", str(tmp_path / "long.csv"), verbosity=0)
    preferences = jsonl(tmp_path / "prefs.jsonl", [{"prompt": megabyte, "chosen": "a", "rejected": "b"}])
    with pytest.raises(CommandError, match=r"line 1: the prompt has 1,000,000 characters"):
        call_command("import_preferences", str(preferences), "--format", "trl", verbosity=0)
    assert stored_counts() == (0, 0, 0, 0)

    settings.PROMPT_MAX_CHARACTERS = 12  # all the messages together
    at_limit = jsonl(tmp_path / "limit.jsonl", [{"prompt": "x" * 6, "system": "y" * 6}])
    call_command("import_prompts", str(at_limit), verbosity=0)
    over = jsonl(tmp_path / "over.jsonl", [{"prompt": "x" * 7, "system": "y" * 6}])
    with pytest.raises(CommandError, match="the prompt has 13 characters; the limit is 12"):
        call_command("import_prompts", str(over), verbosity=0)
    assert Prompt.objects.count() == 1
