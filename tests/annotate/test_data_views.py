import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotate.models import Export, Judgement, Pair, Prompt
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
    Judgement.objects.create(pair=pair, annotator=annotator, choice="a", strength=3, a_on_left=True)
    Pair.objects.filter(pk=pair.pk).update(judgement_count=1)
    return pair


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


def test_prompt_upload_without_javascript(staff_client):
    response = staff_client.post("/data/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "mt-bench"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "<html" in page and "80 prompts imported into the set “mt-bench”; 0 duplicates skipped." in page
    assert Prompt.objects.filter(prompt_set="mt-bench").count() == 80


def test_prompt_upload_through_htmx_returns_the_panel(staff_client):
    response = staff_client.post("/data/prompts/import/", {"file": upload(MT_BENCH), "prompt_set": "x"}, **HTMX)
    page = response.content.decode()
    assert response.status_code == 200 and "<html" not in page and page.lstrip().startswith('<section id="panel"')
    assert "80 prompts imported" in page


def test_a_rejected_prompt_file_lists_the_lines_and_imports_nothing(staff_client, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text('{"prompt": "ok"}\n{"prompt": 7}\n')
    response = staff_client.post("/data/prompts/import/", {"file": upload(path, "bad.jsonl")}, **HTMX)
    assert response.status_code == 400
    page = response.content.decode()
    assert "1 bad line; nothing was imported" in page and "line 2: &quot;prompt&quot; must be a non-empty" in page
    assert not Prompt.objects.exists()


def test_a_form_without_a_file_is_a_400(staff_client):
    response = staff_client.post("/data/preferences/import/", {"format": "hh-rlhf"})
    assert response.status_code == 400 and "This field is required." in response.content.decode()


def test_preference_upload_rejects_the_whole_file_then_skips_bad_rows(staff_client):
    rejected = staff_client.post("/data/preferences/import/", {"file": upload(HH_RLHF), "format": "hh-rlhf"})
    assert rejected.status_code == 400 and "line 926: the chosen answer is empty" in rejected.content.decode()
    assert not Pair.objects.exists()

    response = staff_client.post(
        "/data/preferences/import/", {"file": upload(HH_RLHF), "format": "hh-rlhf", "skip_bad": "on"}, **HTMX
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "997 pairs imported as votes of <code>imported:hh-rlhf</code> (997 new prompts)" in page
    assert "3 bad rows skipped" in page and "line 87: the chosen answer is empty" in page
    assert Judgement.objects.filter(source="imported").count() == 997


def test_export_without_javascript_goes_to_the_export_with_its_card(staff_client, voted_pair, settings, tmp_path):
    settings.EXPORT_DIR = tmp_path
    response = staff_client.post(
        "/data/exports/",
        {"dataset_format": "trl-preference", "file_format": "jsonl", "combine": "majority", "min_agreement": "0",
         "prompt_sets": ["default"], "license": "cc-by-4.0"},
    )  # fmt: skip
    export = Export.objects.get()
    assert response.status_code == 303 and response["Location"] == f"/data/exports/{export.pk}/"

    page = staff_client.get(response["Location"]).content.decode()
    assert 'data-testid="status">Done<' in page and "1 row " in page
    assert "license: cc-by-4.0" in page and "<td>policy-v0-secret-name</td>" in page  # the card, rendered
    assert "<dt>license</dt><dd>cc-by-4.0</dd>" in page  # its front matter, read as YAML
    assert "<dt>tags</dt><dd>pairloop, preference, human-feedback, dpo</dd>" in page
    assert f'href="/data/exports/{export.pk}/download/?file=card"' in page
    download = staff_client.get(f"/data/exports/{export.pk}/download/")
    assert download.status_code == 200
    assert b'"chosen": [{"role": "assistant", "content": "good answer"}]' in b"".join(download.streaming_content)
    assert staff_client.get(f"/data/exports/{export.pk}/download/?file=other").status_code == 404


def test_export_through_htmx_returns_the_panel_with_the_list(staff_client, voted_pair, settings, tmp_path):
    settings.EXPORT_DIR = tmp_path
    response = staff_client.post(
        "/data/exports/",
        {"dataset_format": "arena", "file_format": "parquet", "combine": "majority", "min_agreement": "0"},
        **HTMX,
    )
    page = response.content.decode()
    export = Export.objects.get()
    assert response.status_code == 200 and "<html" not in page
    assert f'Export <a href="/data/exports/{export.pk}/">{export.pk}</a>: done, 1 row.' in page
    assert "<td>arena</td>" in page and "<td>parquet</td>" in page
    assert (tmp_path / f"export-{export.pk}-arena.parquet").is_file()


def test_bad_export_requests_show_the_errors_and_record_nothing(staff_client, voted_pair, settings):
    response = staff_client.post(
        "/data/exports/", {"dataset_format": "arena", "file_format": "jsonl", "combine": "all", "min_agreement": "3"}
    )
    assert response.status_code == 400 and "less than or equal to 1" in response.content.decode()
    settings.EXPORT_WEB_MAX_VOTES = 0
    response = staff_client.post(
        "/data/exports/",
        {"dataset_format": "arena", "file_format": "jsonl", "combine": "all", "min_agreement": "0"},
        **HTMX,
    )
    assert response.status_code == 400 and "1 votes match; exports over 0 votes" in response.content.decode()
    assert not Export.objects.exists()
