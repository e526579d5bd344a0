"""The staff data API, annotate/data/api.py: prompts, imports, pairs and votes, exports (the model versions list, in
annotate/rounds/api.py, is read here beside the pairs). First, checks that span the whole API: every operation is in
the schema, and every one checks who is asking (staff only, but for the annotation endpoints)."""

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from kombu.exceptions import OperationalError
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotate import tasks
from annotate.celery import app as celery_app
from annotate.data import imports
from annotate.models import DataImport, Export, Judgement, ModelVersion, Pair, Prompt
from tests.annotate.voting import vote_as_annotator
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.django_db

MT_BENCH = SHARED_DATA / "mt_bench_questions.jsonl"
HH_RLHF = SHARED_DATA / "hh_rlhf_harmless_dev.jsonl"

# The data endpoints: staff only. Annotator tokens may use only the annotation endpoints.
DATA_OPERATIONS = [
    ("get", "/api/prompts/"),
    ("post", "/api/prompts/"),
    ("post", "/api/prompts/import/"),
    ("post", "/api/preferences/import/"),
    ("get", "/api/imports/1/"),
    ("post", "/api/imports/1/enqueue/"),
    ("get", "/api/pairs/"),
    ("get", "/api/judgements/list/"),
    ("get", "/api/model-versions/"),
    ("get", "/api/exports/"),
    ("post", "/api/exports/"),
    ("get", "/api/exports/1/"),
    ("get", "/api/exports/1/download/"),
    ("post", "/api/exports/1/enqueue/"),
]
ANNOTATION_OPERATIONS = {
    ("get", "/api/pairs/next/"),
    ("post", "/api/judgements/"),
    ("post", "/api/judgements/undo/"),
    ("post", "/api/pairs/skip/"),
    ("post", "/api/conversations/"),
    ("get", "/api/conversations/{continuation_id}/"),
}


def _schema_operations():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (method, path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


SCHEMA_OPERATIONS = _schema_operations()


def client_for(user=None, token=False):
    client = APIClient()
    if user is not None and token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    elif user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def staff_api(staff):
    return client_for(staff)


def upload(path, name=None):
    return SimpleUploadedFile(name or path.name, path.read_bytes())


# --- Every endpoint in the schema: authentication and roles ------------------------------------------------------


def test_every_data_endpoint_is_in_the_schema():
    documented = {(method, re.sub(r"\{\w+\}", "1", path)) for method, path, _ in SCHEMA_OPERATIONS}
    assert set(DATA_OPERATIONS) <= documented


def test_the_schema_validates_with_no_warnings(tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))
    assert "/api/exports/{export_id}/download/" in (tmp_path / "schema.yml").read_text()


@pytest.mark.parametrize(
    ("method", "path", "operation"), SCHEMA_OPERATIONS, ids=[f"{m.upper()} {p}" for m, p, _ in SCHEMA_OPERATIONS]
)
def test_every_schema_path_checks_who_is_asking(method, path, operation, annotator, staff):
    """Anonymous: 401. Annotators (by token): only the annotation endpoints. Staff: never a server error."""
    url = re.sub(r"\{\w+\}", "999999", path)

    def call(client):
        return getattr(client, method)(url, {}, format="json") if method != "get" else client.get(url)

    if {} not in operation.get("security", []):
        anonymous = call(APIClient())
        assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Token"
    as_annotator = call(client_for(annotator, token=True))
    if (method, path) in ANNOTATION_OPERATIONS:
        assert as_annotator.status_code in (200, 204, 400, 404)  # 404: an id (999999) that names nothing of theirs
    else:
        assert as_annotator.status_code == 403 and "detail" in as_annotator.json()
    if method == "get" or (method, re.sub(r"\{\w+\}", "1", path)) in DATA_OPERATIONS:
        # Other teams' write endpoints are left to their own tests: an empty POST could start real work.
        assert call(client_for(staff, token=True)).status_code < 500


def test_staff_tokens_reach_the_data_endpoints(staff):
    response = client_for(staff, token=True).get("/api/model-versions/")
    assert response.status_code == 200 and response.json()["results"] == []


# --- Prompts ---------------------------------------------------------------------------------------------------


def test_prompts_are_listed_a_page_at_a_time_with_filters(staff_api, settings):
    settings.API_PAGE_SIZE = 2
    for number in range(3):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Q{number}?"}], prompt_set="a" if number else "b")
    Prompt.objects.filter(messages__0__content="Q2?").update(is_active=False)

    first = staff_api.get("/api/prompts/").json()
    assert first["count"] == 3 and len(first["results"]) == 2 and first["next"].endswith("?page=2")
    assert first["results"][0] == {
        "id": first["results"][0]["id"],
        "messages": [{"role": "user", "content": "Q0?"}],
        "prompt_set": "b",
        "tags": [],
        "source": "",
        "is_active": True,
        "created_at": first["results"][0]["created_at"],
    }
    assert staff_api.get("/api/prompts/?page=2").json()["results"][0]["messages"][0]["content"] == "Q2?"
    assert [p["messages"][0]["content"] for p in staff_api.get("/api/prompts/?prompt_set=a").json()["results"]] == [
        "Q1?",
        "Q2?",
    ]
    assert staff_api.get("/api/prompts/?active=false&page_size=10").json()["count"] == 1
    bad = staff_api.get("/api/prompts/?active=maybe")
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"active"}


def test_a_prompt_is_created_once(staff_api):
    body = {"prompt": "What is DPO?", "system": "Be brief.", "prompt_set": "api", "tags": ["ml"]}
    created = staff_api.post("/api/prompts/", body, format="json")
    again = staff_api.post("/api/prompts/", body, format="json")

    assert created.status_code == 201
    data = created.json()
    assert data["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is DPO?"}]
    assert (data["prompt_set"], data["tags"], data["source"]) == ("api", ["ml"], "api")
    assert again.status_code == 409 and again.json()["prompt"] == data["id"]
    assert Prompt.objects.count() == 1


def test_a_prompt_from_messages(staff_api):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Tell me a joke"}]  # fmt: skip
    response = staff_api.post("/api/prompts/", {"messages": messages}, format="json")
    assert response.status_code == 201 and Prompt.objects.get().messages == messages


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "assistant", "content": "I only answer"}]}, "messages"),
        ({"prompt": "ok", "tags": "x"}, "tags"),
        ({"prompt": "ok", "prompt_set": "x" * 101}, "prompt_set"),
    ],
)
def test_bad_prompts_are_a_400_naming_the_field(staff_api, body, field):
    response = staff_api.post("/api/prompts/", body, format="json")
    assert response.status_code == 400 and field in response.json()["errors"]
    assert not Prompt.objects.exists()


def _imported(staff_api, response):
    """The import a 202 answered with, after the worker ran it, as its URL tells."""
    assert response.status_code == 202 and response["Location"] == response.json()["url"]
    tasks.data_import_run(response.json()["id"])
    return staff_api.get(response.json()["url"]).json()


@pytest.mark.django_db(transaction=True)
def test_prompt_file_import(staff_api, staff):
    response = staff_api.post(
        "/api/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "mt-bench"}, format="multipart"
    )
    accepted = response.json()
    assert response.status_code == 202 and accepted["url"] == f"http://testserver/api/imports/{accepted['id']}/"
    assert (accepted["status"], accepted["kind"], accepted["file_format"]) == ("queued", "prompts", "jsonl")
    assert (accepted["created_by"], accepted["options"], accepted["result"]) == (
        staff.username,
        {"prompt_set": "mt-bench"},
        {},
    )
    done = _imported(staff_api, response)
    assert (done["status"], done["rows_total"], done["rows_done"], done["progress_percent"]) == ("done", 80, 80, 100)
    assert done["result"] == {"created": 80, "duplicates": 0, "prompt_set": "mt-bench"}
    again = _imported(staff_api, staff_api.post("/api/prompts/import/", {"file": upload(MT_BENCH)}, format="multipart"))
    assert again["result"] == {"created": 0, "duplicates": 80, "prompt_set": "default"}
    assert Prompt.objects.count() == 80


@pytest.mark.django_db(transaction=True)
def test_a_rejected_prompt_file_names_the_bad_lines_and_stores_nothing(staff_api, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": ""}\nnot json\n')
    failed = _imported(staff_api, staff_api.post("/api/prompts/import/", {"file": upload(path)}, format="multipart"))
    assert (failed["status"], failed["error"], failed["line_error_count"]) == (
        "failed",
        "2 bad lines; nothing was imported",
        2,
    )
    assert failed["line_errors"] == [
        {"line": 2, "reason": '"prompt" must be a non-empty string'},
        {"line": 3, "reason": "not valid JSON (Expecting value at column 1)"},
    ]
    assert failed["finished_at"] is not None and not Prompt.objects.exists()


def test_what_can_be_checked_at_once_is_a_400_and_records_nothing(staff_api, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n')
    missing = staff_api.post("/api/prompts/import/", {}, format="multipart")
    assert missing.status_code == 400 and "file" in missing.json()["errors"]
    unknown = staff_api.post("/api/prompts/import/", {"file": upload(path, "prompts.xlsx")}, format="multipart")
    assert unknown.status_code == 400 and "cannot tell the format" in unknown.json()["errors"]["file"][0]
    headless = SimpleUploadedFile("prompts.csv", b"question,category\nWhy?,science\n")
    no_header = staff_api.post("/api/prompts/import/", {"file": headless}, format="multipart")
    assert no_header.status_code == 400
    assert no_header.json()["errors"]["file"] == [
        "1 bad line; nothing was imported",
        'line 1: the header row must name a "prompt" column',
    ]
    latin1 = SimpleUploadedFile("rows.jsonl", '{"prompt": "Q", "chosen": "café", "rejected": "no"}'.encode("latin-1"))
    not_utf8 = staff_api.post("/api/preferences/import/", {"file": latin1, "format": "trl"}, format="multipart")
    assert not_utf8.status_code == 400
    assert not_utf8.json()["errors"]["file"] == ["the file is not UTF-8 text (byte 30 cannot be read)"]
    # Read a megabyte at a time: a character cut by the chunk's end is read whole, a bad byte is named by its place.
    long = b'{"prompt":  "' + "é".encode() * 600_000 + b'\xff"}\n'
    far = staff_api.post("/api/prompts/import/", {"file": SimpleUploadedFile("p.jsonl", long)}, format="multipart")
    assert far.json()["errors"]["file"] == ["the file is not UTF-8 text (byte 1200013 cannot be read)"]
    assert not DataImport.objects.exists() and not Prompt.objects.exists()


def test_an_upload_over_the_size_limit_is_refused(staff_api, settings):
    settings.DATA_IMPORT_MAX_BYTES = 100
    response = staff_api.post("/api/prompts/import/", {"file": upload(MT_BENCH)}, format="multipart")
    assert response.status_code == 400 and "DATA_IMPORT_MAX_BYTES" in response.json()["errors"]["file"][0]
    assert not DataImport.objects.exists()


def test_an_upload_sent_again_while_it_waits_is_the_same_import(staff_api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as sent:
        first = staff_api.post("/api/prompts/import/", {"file": upload(MT_BENCH)}, format="multipart")
        retried = staff_api.post("/api/prompts/import/", {"file": upload(MT_BENCH)}, format="multipart")
    assert first.status_code == retried.status_code == 202 and retried.json()["id"] == first.json()["id"]
    assert len(sent) == 1 and DataImport.objects.count() == 1  # handed to the task queue once
    other_set = staff_api.post(
        "/api/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "b"}, format="multipart"
    )
    assert other_set.status_code == 202 and other_set.json()["id"] != first.json()["id"]


# --- Preference data -------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_preference_import_all_or_nothing_or_skipping_bad_rows(staff_api):
    rejected = _imported(
        staff_api,
        staff_api.post("/api/preferences/import/", {"file": upload(HH_RLHF), "format": "hh-rlhf"}, format="multipart"),
    )
    assert (rejected["status"], rejected["error"]) == ("failed", "3 bad rows; nothing was imported")
    assert [error["line"] for error in rejected["line_errors"]] == [87, 517, 926]
    assert rejected["line_errors"][0]["reason"] == "the chosen answer is empty"
    assert not Pair.objects.exists()

    imported = _imported(
        staff_api,
        staff_api.post(
            "/api/preferences/import/",
            {"file": upload(HH_RLHF), "format": "hh-rlhf", "skip_bad": "true"},
            format="multipart",
        ),
    )
    assert imported["status"] == "done" and imported["options"] == {"prompt_set": "imported", "skip_bad": True}
    assert imported["result"] == {
        "imported": 997, "duplicates": 0, "new_prompts": 997, "model_version": "imported:hh-rlhf", "skipped": 3
    }  # fmt: skip
    assert [error["line"] for error in imported["line_errors"]] == [87, 517, 926]
    assert Judgement.objects.filter(source="imported", annotator=None).count() == 997


def test_preference_import_needs_a_known_format(staff_api):
    response = staff_api.post("/api/preferences/import/", {"file": upload(HH_RLHF)}, format="multipart")
    assert response.status_code == 400 and set(response.json()["errors"]) == {"format"}
    response = staff_api.post(
        "/api/preferences/import/", {"file": upload(HH_RLHF), "format": "csv"}, format="multipart"
    )
    assert response.status_code == 400 and set(response.json()["errors"]) == {"format"}
    assert not DataImport.objects.exists()


def test_an_import_that_does_not_exist_is_a_404(staff_api):
    assert staff_api.get("/api/imports/999/").status_code == 404
    assert staff_api.post("/api/imports/999/enqueue/").status_code == 404


def _broker_refuses(*args, **kwargs):
    """A task's send while the broker is away (as the data pages' tests have it)."""
    raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.mark.django_db(transaction=True)
def test_a_queued_import_is_sent_again_as_the_page_does(staff_api, monkeypatch):
    with monkeypatch.context() as patched:
        patched.setattr(tasks.data_import_run, "apply_async", _broker_refuses)
        response = staff_api.post("/api/prompts/import/", {"file": upload(MT_BENCH)}, format="multipart")
        waiting = response.json()
        assert response.status_code == 202 and waiting["status"] == "queued"
        assert waiting["error"] == "not started yet: the task queue could not be reached"
        still_down = staff_api.post(f"/api/imports/{waiting['id']}/enqueue/")
        assert still_down.status_code == 202 and still_down.json()["error"] == waiting["error"]

    sent = staff_api.post(f"/api/imports/{waiting['id']}/enqueue/")  # the queue is back (the tests' own broker)
    assert sent.status_code == 202 and sent["Location"] == waiting["url"]
    assert (sent.json()["status"], sent.json()["error"]) == ("queued", "")

    tasks.data_import_run(waiting["id"])  # a worker takes it
    done = staff_api.post(f"/api/imports/{waiting['id']}/enqueue/")
    assert (
        done.status_code == 409 and done.json()["status"] == "done" and "only a queued import" in done.json()["detail"]
    )
    assert Prompt.objects.count() == 80 and DataImport.objects.get().status == "done"


# --- Pairs, votes, model versions ------------------------------------------------------------------------------


@pytest.fixture
def one_vote_each_way(make_pair, annotator, staff_api):
    """A human vote on a served pair, and an imported vote."""
    pair = make_pair(texts=("left text", "right text"))
    vote_as_annotator(annotator, pair=pair, choice="a", strength=2)
    make_pair()  # still needs its vote
    one = imports.parse_preferences('{"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}', dataset_format="trl")
    imports.preferences_import(preference_file=one, dataset_format="trl", file_name="one.jsonl")
    return pair


def test_pairs_list_with_filters(staff_api, one_vote_each_way, serving_version):
    pair = one_vote_each_way
    everything = staff_api.get("/api/pairs/").json()
    assert everything["count"] == 3
    first = everything["results"][0]
    assert first["id"] == pair.pk and first["messages"] == pair.prompt.messages
    assert (first["completion_a"]["text"], first["completion_a"]["model_version"]) == (
        "left text",
        serving_version.name,
    )
    assert first["sampled_from"] == serving_version.name and first["judgement_count"] == 1

    def ids(query):
        return [item["id"] for item in staff_api.get(f"/api/pairs/?{query}").json()["results"]]

    imported = Pair.objects.get(sampled_from__name="imported:trl").pk
    assert ids("model_version=imported:trl") == [imported]
    assert ids("complete=true") == [pair.pk, imported]
    assert ids("complete=false") == [pair.pk + 1]
    assert ids("prompt_set=imported") == [imported]


def test_judgements_list_with_filters(staff_api, one_vote_each_way, annotator):
    votes = staff_api.get("/api/judgements/list/").json()["results"]
    assert [(v["annotator"], v["source"], v["a_on_left"], v["choice"]) for v in votes] == [
        (annotator.username, "human", Judgement.objects.get(annotator=annotator).a_on_left, "a"),
        (None, "imported", None, votes[1]["choice"]),
    ]
    assert votes[1]["source_detail"] == "one.jsonl (trl)"
    assert [v["source"] for v in staff_api.get("/api/judgements/list/?source=imported").json()["results"]] == [
        "imported"
    ]
    assert staff_api.get(f"/api/judgements/list/?annotator={annotator.username}").json()["count"] == 1
    assert staff_api.get(f"/api/judgements/list/?pair={one_vote_each_way.pk}").json()["count"] == 1
    assert staff_api.get("/api/judgements/list/?date_to=2000-01-01").json()["count"] == 0
    bad = staff_api.get("/api/judgements/list/?date_from=yesterday&source=robots")
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"date_from", "source"}


def test_model_versions_list(staff_api, one_vote_each_way, serving_version):
    versions = staff_api.get("/api/model-versions/").json()["results"]
    assert [(v["name"], v["status"], v["parent_version"]) for v in versions] == [
        (serving_version.name, "serving", None),
        ("imported:trl", "external", None),
    ]
    external = staff_api.get("/api/model-versions/?status=external").json()
    assert [v["name"] for v in external["results"]] == ["imported:trl"]


# --- Exports ---------------------------------------------------------------------------------------------------


@pytest.fixture
def post_and_run(django_capture_on_commit_callbacks):
    """POST, then what happens once the request's transaction commits: the export task is sent, and runs here
    (the broker is the one part left out)."""

    def post(client, url, data):
        celery_app.conf.task_always_eager = True
        try:
            with django_capture_on_commit_callbacks(execute=True):
                return client.post(url, data, format="json")
        finally:
            celery_app.conf.task_always_eager = False

    return post


def test_export_create_status_and_download(staff_api, one_vote_each_way, settings, tmp_path, staff, post_and_run):
    settings.EXPORT_DIR = tmp_path
    response = post_and_run(
        staff_api, "/api/exports/", {"dataset_format": "trl-preference", "sources": ["human"], "license": "mit"}
    )

    assert response.status_code == 202
    accepted = response.json()
    assert (accepted["status"], accepted["row_count"], accepted["created_by"]) == ("queued", None, staff.username)
    assert (accepted["votes_read"], accepted["download"]) == (0, None)
    assert accepted["filters"]["sources"] == ["human"] and accepted["filters"]["license"] == "mit"
    created = staff_api.get(f"/api/exports/{accepted['id']}/").json()  # the worker has run it since
    assert (created["status"], created["row_count"], created["votes_read"], created["votes_total"]) == ("done", 1, 1, 1)
    assert created["progress_percent"] == 100
    assert created["download"].startswith("http://testserver/api/exports/")
    assert staff_api.get("/api/exports/").json()["results"] == [created]

    data = staff_api.get(f"/api/exports/{created['id']}/download/")
    assert data.status_code == 200 and "attachment" in data["Content-Disposition"]
    (row,) = [json.loads(line) for line in b"".join(data.streaming_content).decode().splitlines()]
    assert row["chosen"] == [{"role": "assistant", "content": "left text"}] and row["source"] == "human"
    card = staff_api.get(created["card"].removeprefix("http://testserver"))
    assert b"".join(card.streaming_content).decode().startswith("---\nlicense: mit\n")


def test_an_export_waits_queued_until_a_worker_runs_it(staff_api, one_vote_each_way, settings, tmp_path):
    from annotate import tasks

    settings.EXPORT_DIR = tmp_path
    response = staff_api.post("/api/exports/", {"dataset_format": "arena"}, format="json")
    assert response.status_code == 202 and response.json()["status"] == "queued"
    export_id = response.json()["id"]
    assert staff_api.get(f"/api/exports/{export_id}/").json()["status"] == "queued"
    tasks.export_run(export_id)
    assert staff_api.get(f"/api/exports/{export_id}/").json()["status"] == "done"


@pytest.mark.django_db(transaction=True)
def test_a_queued_export_is_sent_again_as_the_page_does(staff_api, one_vote_each_way, settings, tmp_path, monkeypatch):
    settings.EXPORT_DIR = tmp_path
    with monkeypatch.context() as patched:
        patched.setattr(tasks.export_run, "apply_async", _broker_refuses)
        waiting = staff_api.post("/api/exports/", {"dataset_format": "arena"}, format="json").json()
        assert waiting["error"] == "not started yet: the task queue could not be reached"

    sent = staff_api.post(f"/api/exports/{waiting['id']}/enqueue/")  # the queue is back (the tests' own broker)
    assert sent.status_code == 202 and (sent.json()["status"], sent.json()["error"]) == ("queued", "")

    tasks.export_run(waiting["id"])
    done = staff_api.post(f"/api/exports/{waiting['id']}/enqueue/")
    assert (
        done.status_code == 409 and done.json()["status"] == "done" and "only a queued export" in done.json()["detail"]
    )
    assert staff_api.post("/api/exports/999/enqueue/").status_code == 404


def test_bad_exports_are_a_400_naming_the_fields(staff_api, one_vote_each_way):
    response = staff_api.post("/api/exports/", {"dataset_format": "csv", "min_agreement": 2}, format="json")
    assert response.status_code == 400 and set(response.json()["errors"]) == {"dataset_format", "min_agreement"}
    response = staff_api.post("/api/exports/", {"dataset_format": "arena", "model_versions": ["nope"]}, format="json")
    assert response.status_code == 400 and response.json()["errors"] == {"model_versions": "unknown: nope"}
    response = staff_api.post("/api/exports/", {"dataset_format": "arena", "date_to": "9999-12-31"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"date_to": "9999-12-31 is too near the end of the calendar: use a real date"}
    response = staff_api.post("/api/exports/", {"dataset_format": "arena", "weighting": "strength"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"weighting": "only trl-preference rows carry a weight"}
    response = staff_api.post("/api/exports/", {"dataset_format": "trl-preference", "weighting": "loud"}, format="json")
    assert response.status_code == 400 and set(response.json()["errors"]) == {"weighting"}
    assert not Export.objects.exists()


def test_downloads_that_do_not_exist(staff_api, settings, tmp_path, serving_version, post_and_run):
    settings.EXPORT_DIR = tmp_path
    assert staff_api.get("/api/exports/999/download/").status_code == 404
    created = post_and_run(staff_api, "/api/exports/", {"dataset_format": "arena"}).json()
    assert staff_api.get(f"/api/exports/{created['id']}/download/?file=secrets").status_code == 400
    (tmp_path / f"export-{created['id']}-arena.jsonl").unlink()
    gone = staff_api.get(f"/api/exports/{created['id']}/download/")
    assert gone.status_code == 404 and "no data file" in gone.json()["detail"]
    assert staff_api.get(f"/api/exports/{created['id']}/").json()["download"] is None
    assert ModelVersion.objects.count() == 1


# --- Input the database cannot store ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "extra", "line"),
    [
        ("/api/prompts/import/", {}, '{"prompt": "before\\u0000after"}'),
        ("/api/preferences/import/", {"format": "trl"}, '{"prompt": "Q", "chosen": "a\\u0000", "rejected": "b"}'),
        ("/api/prompts/import/", {}, '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("/api/prompts/import/", {}, json.dumps({"prompt": "x" * 1_000_000})),
    ],
    ids=["prompt-nul", "preference-nul", "deep", "one-megabyte"],
)
@pytest.mark.django_db(transaction=True)
def test_imports_refuse_lines_the_database_or_the_model_server_cannot_take(staff_api, url, extra, line):
    good = '{"prompt": "Q2", "chosen": "yes", "rejected": "no"}'
    upload = SimpleUploadedFile("rows.jsonl", f"{good}\n{line}\n".encode())
    failed = _imported(staff_api, staff_api.post(url, {"file": upload, **extra}, format="multipart"))
    assert failed["status"] == "failed"
    message, ((line, reason),) = failed["error"], [error.values() for error in failed["line_errors"]]
    assert message == "1 bad line; nothing was imported" if "prompts" in url else "1 bad row; nothing was imported"
    assert line == 2 and any(
        expected in reason for expected in ("NUL character", "nested too deeply", "1,000,000 characters")
    )
    assert (Prompt.objects.count(), Pair.objects.count()) == (0, 0)


def test_one_prompt_through_the_api_with_a_nul_or_over_the_limit_is_a_400(staff_api):
    for body in ({"prompt": "a\u0000b"}, {"messages": [{"role": "user", "content": "x" * 20_001}]}):
        response = staff_api.post("/api/prompts/", body, format="json")
        assert response.status_code == 400 and set(response.json()["errors"]) == set(body)
    assert not Prompt.objects.exists()
