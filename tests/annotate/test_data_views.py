import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from kombu.exceptions import OperationalError

from annotate import tasks
from annotate.celery import app as celery_app
from annotate.models import DataImport, Export, Judgement, Pair, Prompt
from tests.annotate.voting import vote_as_annotator
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.django_db

MT_BENCH = SHARED_DATA / "mt_bench_questions.jsonl"
HH_RLHF = SHARED_DATA / "hh_rlhf_harmless_dev.jsonl"
PAGES = ["/data/prompts/import/", "/data/preferences/import/", "/data/exports/"]
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def voted_pair(make_pair, annotator):
    pair = make_pair(texts=("good answer", "bad answer"))
    vote_as_annotator(annotator, pair=pair, choice="a", strength=3)
    return pair


@pytest.fixture
def worker_runs_tasks():
    """Tasks run in this process when they are sent: the broker is the one part left out. (Tests using it commit
    for real, django_db(transaction=True), so tasks are sent when the request's transaction commits.)"""
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def upload(path, name=None):
    return SimpleUploadedFile(name or path.name, path.read_bytes())


@pytest.mark.parametrize("url", [*PAGES, "/data/exports/1/", "/data/exports/1/download/"])
def test_pages_are_for_staff_only(client, annotator, url):
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    client.force_login(annotator)
    assert client.get(url).status_code == 403


@pytest.mark.parametrize("url", PAGES)
def test_staff_see_each_page_with_its_form(staff_client, url):
    response = staff_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert "<html" in page and f'action="{url}"' in page and f'hx-post="{url}"' in page
    assert 'href="/data/exports/"' in page  # the pages link to each other


def _run_import(response):
    """What the worker does with the import a POST recorded and sent to the task queue."""
    data_import = DataImport.objects.get()
    tasks.data_import_run(data_import.pk)
    return data_import


@pytest.mark.django_db(transaction=True)
def test_prompt_upload_without_javascript_goes_to_the_import_page(staff_client):
    response = staff_client.post(
        "/data/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "mt-bench", "new_set": "on"}
    )
    data_import = DataImport.objects.get()
    assert response.status_code == 303 and response["Location"] == f"/data/imports/{data_import.pk}/"
    assert not Prompt.objects.exists()  # the worker imports it

    tasks.data_import_run(data_import.pk)
    page = staff_client.get(response["Location"]).content.decode()
    assert "<html" in page and "80 prompts imported into the set “mt-bench”; 0 duplicates skipped." in page
    assert Prompt.objects.filter(prompt_set="mt-bench").count() == 80


def test_prompt_upload_through_htmx_sends_the_browser_to_the_import_page(staff_client):
    response = staff_client.post(
        "/data/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "x", "new_set": "on"}, **HTMX
    )
    data_import = DataImport.objects.get()
    assert response.status_code == 200 and response["HX-Redirect"] == f"/data/imports/{data_import.pk}/"
    assert (data_import.status, data_import.options, data_import.file_format) == (
        "queued",
        {"prompt_set": "x"},
        "jsonl",
    )


@pytest.mark.django_db(transaction=True)
def test_a_rejected_prompt_file_lists_the_lines_and_imports_nothing(staff_client, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text('{"prompt": "ok"}\n{"prompt": 7}\n')
    response = staff_client.post("/data/prompts/import/", {"file": upload(path, "bad.jsonl")})
    data_import = _run_import(response)
    page = staff_client.get(response["Location"]).content.decode()
    assert 'data-testid="status">Failed<' in page and "hx-trigger" not in page
    assert "1 bad line; nothing was imported" in page and "line 2: &quot;prompt&quot; must be a non-empty" in page
    assert not Prompt.objects.exists()
    data_import.refresh_from_db()
    assert data_import.content == b""  # the file is let go once the import is over


@pytest.mark.django_db(transaction=True)
def test_the_import_page_lists_the_first_20_bad_lines_and_counts_the_rest(staff_client):
    bad = SimpleUploadedFile("bad.jsonl", b"not json\n" * 25)
    response = staff_client.post("/data/prompts/import/", {"file": bad})
    _run_import(response)
    page = staff_client.get(response["Location"]).content.decode()
    assert "25 bad lines; nothing was imported" in page and page.count("not valid JSON") == 20
    assert "line 20: not valid JSON" in page and "line 21:" not in page and "... and 5 more bad lines" in page


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("prompts.xlsx", b"prompt\nhello\n", "cannot tell the format of &#x27;prompts.xlsx&#x27;"),
        ("prompts.csv", b"question\nhello\n", "line 1: the header row must name a &quot;prompt&quot; column"),
        ("prompts.txt", b"caf\xe9\n", "the file is not UTF-8 text (byte 3 cannot be read)"),
    ],
    ids=["format", "csv-header", "not-utf8"],
)
def test_what_can_be_checked_at_once_is_a_400_and_records_nothing(staff_client, name, content, reason):
    response = staff_client.post("/data/prompts/import/", {"file": SimpleUploadedFile(name, content)}, **HTMX)
    assert response.status_code == 400 and reason in response.content.decode()
    assert not DataImport.objects.exists()


def test_a_form_without_a_file_is_a_400(staff_client):
    response = staff_client.post("/data/preferences/import/", {"format": "hh-rlhf"})
    assert response.status_code == 400 and "This field is required." in response.content.decode()
    assert staff_client.post("/data/prompts/import/").status_code == 400
    assert not DataImport.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_preference_upload_rejects_the_whole_file_then_skips_bad_rows(staff_client):
    rejected = staff_client.post("/data/preferences/import/", {"file": upload(HH_RLHF), "format": "hh-rlhf"})
    _run_import(rejected)
    page = staff_client.get(rejected["Location"]).content.decode()
    assert "3 bad rows; nothing was imported" in page and "line 926: the chosen answer is empty" in page
    assert not Pair.objects.exists()

    response = staff_client.post(
        "/data/preferences/import/", {"file": upload(HH_RLHF), "format": "hh-rlhf", "skip_bad": "on"}
    )
    data_import = DataImport.objects.get(options__skip_bad=True)
    tasks.data_import_run(data_import.pk)
    page = staff_client.get(response["Location"], **HTMX).content.decode()
    assert 'data-testid="status">Done<' in page and "hx-trigger" not in page
    assert "997 pairs imported as votes of <code>imported:hh-rlhf</code> (997 new prompts)" in page
    assert "3 bad rows skipped" in page and "line 87: the chosen answer is empty" in page
    assert Judgement.objects.filter(source="imported").count() == 997
    listed = staff_client.get("/data/preferences/import/").content.decode()
    assert f'<a href="/data/imports/{data_import.pk}/">{data_import.pk}</a>' in listed and "<td>Done</td>" in listed


EXPORT_FORM = {"dataset_format": "trl-preference", "file_format": "jsonl", "combine": "majority", "min_agreement": "0"}


@pytest.mark.django_db(transaction=True)
def test_export_without_javascript_goes_to_the_export_with_its_card(
    staff_client, voted_pair, settings, tmp_path, worker_runs_tasks
):
    settings.EXPORT_DIR = tmp_path
    response = staff_client.post("/data/exports/", {**EXPORT_FORM, "prompt_sets": ["default"], "license": "cc-by-4.0"})
    export = Export.objects.get()
    assert response.status_code == 303 and response["Location"] == f"/data/exports/{export.pk}/"

    page = staff_client.get(response["Location"]).content.decode()
    assert 'data-testid="status">Done<' in page and "1 row " in page and "1 vote exported as 1 row." in page
    assert "hx-trigger" not in page  # over: the page no longer polls
    assert "license: cc-by-4.0" in page and "<td>policy-v0-secret-name</td>" in page  # the card, rendered
    assert "<dt>license</dt><dd>cc-by-4.0</dd>" in page  # its front matter, read as YAML
    assert "<dt>tags</dt><dd>pairloop, preference, human-feedback, dpo</dd>" in page
    assert f'href="/data/exports/{export.pk}/download/?file=card"' in page
    download = staff_client.get(f"/data/exports/{export.pk}/download/")
    assert download.status_code == 200
    (row,) = [json.loads(line) for line in b"".join(download.streaming_content).splitlines()]
    assert row["chosen"] == [{"role": "assistant", "content": "good answer"}]
    assert staff_client.get(f"/data/exports/{export.pk}/download/?file=other").status_code == 404


def test_an_export_is_queued_for_a_worker_and_its_page_polls_until_it_is_done(
    staff_client, voted_pair, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.EXPORT_DIR = tmp_path
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = staff_client.post("/data/exports/", EXPORT_FORM, **HTMX)
    export = Export.objects.get()
    assert len(callbacks) == 1  # handed to the task queue once the export was committed
    page = response.content.decode()
    assert response.status_code == 200 and "<html" not in page
    assert f'Export <a href="/data/exports/{export.pk}/">{export.pk}</a>: queued.' in page
    assert 'hx-select="#exports-list"' in page  # the list follows the export while it is queued or running
    assert (export.status, export.error) == ("queued", "")

    waiting = staff_client.get(f"/data/exports/{export.pk}/").content.decode()
    assert 'data-testid="status">Queued<' in waiting and "Waiting for a worker; this page updates itself" in waiting
    assert f'hx-get="/data/exports/{export.pk}/" hx-trigger="every 1s" hx-select="#export"' in waiting

    tasks.export_run(export.pk)  # what the worker runs

    done = staff_client.get(f"/data/exports/{export.pk}/", **HTMX).content.decode()
    assert 'data-testid="status">Done<' in done and "hx-trigger" not in done and 'data-testid="card"' in done
    listed = staff_client.get("/data/exports/", **HTMX).content.decode()
    assert "<td>Done</td>" in listed and 'hx-select="#exports-list"' not in listed
    assert (tmp_path / f"export-{export.pk}-trl-preference.jsonl").is_file()


@pytest.mark.django_db(transaction=True)
def test_with_the_task_queue_down_the_export_waits_and_the_page_says_so(
    staff_client, voted_pair, settings, tmp_path, monkeypatch
):
    settings.EXPORT_DIR = tmp_path

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with monkeypatch.context() as patched:
        patched.setattr(tasks.export_run, "apply_async", broker_down)
        response = staff_client.post("/data/exports/", EXPORT_FORM, **HTMX)
    export = Export.objects.get()
    assert response.status_code == 200 and export.status == "queued"
    assert "the task queue could not be reached" in response.content.decode()
    page = staff_client.get(f"/data/exports/{export.pk}/").content.decode()
    assert "Waiting for a worker: not started yet: the task queue could not be reached" in page
    assert "Try again</button>" in page

    again = staff_client.post(f"/data/exports/{export.pk}/")  # the queue is back (the tests' own broker)
    assert again.status_code == 303
    export.refresh_from_db()
    assert (export.status, export.error) == ("queued", "")


@pytest.mark.django_db(transaction=True)
def test_export_through_htmx_returns_the_panel_with_the_list(
    staff_client, voted_pair, settings, tmp_path, worker_runs_tasks
):
    settings.EXPORT_DIR = tmp_path
    response = staff_client.post(
        "/data/exports/",
        {"dataset_format": "arena", "file_format": "parquet", "combine": "majority", "min_agreement": "0"},
        **HTMX,
    )
    page = response.content.decode()
    export = Export.objects.get()
    assert response.status_code == 200 and "<html" not in page
    assert f'Export <a href="/data/exports/{export.pk}/">{export.pk}</a>: done.' in page
    assert "<td>arena</td>" in page and "<td>parquet</td>" in page
    assert (tmp_path / f"export-{export.pk}-arena.parquet").is_file()


def test_bad_export_requests_show_the_errors_and_record_nothing(staff_client, voted_pair):
    response = staff_client.post(
        "/data/exports/", {"dataset_format": "arena", "file_format": "jsonl", "combine": "all", "min_agreement": "3"}
    )
    assert response.status_code == 400 and "less than or equal to 1" in response.content.decode()
    assert not Export.objects.exists()


def test_a_date_at_the_end_of_the_calendar_is_a_400_naming_the_field(staff_client, voted_pair, tmp_path, settings):
    settings.EXPORT_DIR = tmp_path
    response = staff_client.post("/data/exports/", {**EXPORT_FORM, "date_to": "9999-12-31"}, **HTMX)
    page = response.content.decode()
    assert response.status_code == 400 and "9999-12-31 is too near the end of the calendar" in page
    assert 'name="date_to"' in page.split("too near the end")[0].rsplit('<div class="field">', 1)[-1]
    assert not Export.objects.exists()
    # The last day as the first one is a real (empty) range: it is accepted.
    assert staff_client.post("/data/exports/", {**EXPORT_FORM, "date_from": "9999-12-31"}).status_code == 303


@pytest.mark.django_db(transaction=True)
def test_a_done_export_says_how_many_votes_its_rules_left_out_and_which(
    staff_client, staff, make_pair, annotator, other_annotator, settings, tmp_path, worker_runs_tasks
):
    from annotate.annotation import services

    settings.EXPORT_DIR = tmp_path
    for number in range(2):
        pair = make_pair(texts=(f"good answer {number}", f"bad answer {number}"), required=2)
        vote_as_annotator(annotator, pair=pair, choice="a")
        vote_as_annotator(other_annotator, pair=pair, choice="b")
    services.annotator_act(annotator=other_annotator, action="exclude", by=staff, reason="guessing")
    response = staff_client.post("/data/exports/", EXPORT_FORM)
    page = staff_client.get(response["Location"]).content.decode()
    progress = page.split('data-testid="progress">', 1)[1].split("</p>", 1)[0]
    assert progress.startswith("2 votes exported as 2 rows. 2 other votes matched the filters and were left out")
    assert progress.endswith("left out by the export's rules: 2 votes of excluded annotators.")  # rules that bit
    assert "of 4 votes read" not in page


def test_a_prompt_set_not_stored_yet_needs_new_set_ticked(staff_client, make_pair):
    make_pair(prompt_set="maths")
    page = staff_client.get("/data/prompts/import/").content.decode()
    assert '<datalist id="prompt-sets"><option value="default"></option><option value="maths"></option>' in page
    typo = staff_client.post("/data/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "mahts"})
    assert typo.status_code == 400 and "No prompt set is named “mahts”" in typo.content.decode()
    again = staff_client.post(
        "/data/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "maths", "new_set": "on"}
    )
    assert again.status_code == 400 and "There is a set named “maths” already" in again.content.decode()
    assert not DataImport.objects.exists()
    into_existing = staff_client.post("/data/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "maths"})
    assert into_existing.status_code == 303 and DataImport.objects.get().options == {"prompt_set": "maths"}
