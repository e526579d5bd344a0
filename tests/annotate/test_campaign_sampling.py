"""A campaign says what is sampled: its system prompt and sampling settings reach the model server (the stub records
each request) and each answer's lineage; its sides compare the serving version with itself, with a named earlier
version, or with other settings; a change applies to new pairs only; bad values are refused by the page and the API
and store nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from annotate.data import exports
from annotate.data.exports import ExportFilters
from annotate.models import Campaign, Completion, ModelVersion, Pair, Prompt
from annotate.sampling import services as sampling
from annotate.sampling.generation import client_from_settings
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS, log_in
from tests.annotate.model_server_stub import ModelServerStub
from tests.annotate.voting import vote_as_annotator

pytestmark = pytest.mark.django_db

SYSTEM_PROMPT = "You are a careful nurse. Answer in one sentence."


@pytest.fixture
def stub(serving_version, settings):
    with ModelServerStub(served_models=(serving_version.name, "policy-v1")).running() as server:
        settings.VLLM_BASE_URL = server.url
        settings.VLLM_TIMEOUT = 10
        settings.HEAD_TO_HEAD_PAIR_SHARE = 0  # only the campaign's own sides
        yield server


@pytest.fixture
def staff_api(staff):
    api = APIClient()
    api.force_authenticate(staff)
    return api


def create_campaign(staff_api, **fields):
    response = staff_api.post("/api/campaigns/", {"name": "nursing", **fields}, format="json")
    assert response.status_code == 201, response.content
    return Campaign.objects.get(pk=response.json()["id"])


def nursing_prompts(count):
    return [
        Prompt.objects.create(
            messages=[{"role": "user", "content": f"Is dose {number} safe?"}], prompt_set="nursing", source="test"
        )
        for number in range(count)
    ]


def refill(settings, pairs):
    """Ask the refill for `pairs` more pairs than are waiting for votes; returns the new pairs."""
    newest = Pair.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    settings.PAIR_BUFFER_TARGET = sampling.pairs_ready_count() + pairs
    assert sampling.pairs_refill() == pairs
    return list(Pair.objects.filter(pk__gt=newest).select_related("completion_a", "completion_b"))


def sent_for(stub, completion):
    return next(body for body in stub.requests if body["seed"] == completion.seed)


def test_the_system_prompt_and_settings_are_sent_and_recorded_with_each_answer(stub, settings, staff_api):
    create_campaign(staff_api, system_prompt=SYSTEM_PROMPT, temperature=0.3, top_p=0.5, max_tokens=40)
    nursing_prompts(2)

    pairs = refill(settings, 2)

    assert len(pairs) == 2
    for completion in Completion.objects.all():
        sent = sent_for(stub, completion)
        assert sent["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert sent["messages"][1:] == completion.prompt.messages
        assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.3, 0.5, 40)
        assert completion.sampling == {"temperature": 0.3, "top_p": 0.5, "max_tokens": 40, "seed": completion.seed,
                                       "n": 1, "system_prompt": SYSTEM_PROMPT}  # fmt: skip


def test_a_prompt_with_its_own_system_message_keeps_it(stub, settings, staff_api):
    create_campaign(staff_api, system_prompt=SYSTEM_PROMPT)
    own = [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hello?"}]
    Prompt.objects.create(messages=own, prompt_set="nursing", source="test")

    refill(settings, 1)

    assert [body["messages"] for body in stub.requests] == [own, own]
    assert all("system_prompt" not in completion.sampling for completion in Completion.objects.all())


def test_a_change_applies_to_new_pairs_only(stub, settings, staff_api):
    campaign = create_campaign(staff_api, system_prompt=SYSTEM_PROMPT, temperature=0.3)
    nursing_prompts(2)
    [first] = refill(settings, 1)

    changed = staff_api.patch(f"/api/campaigns/{campaign.pk}/", {"system_prompt": "", "temperature": 1.2},
                              format="json")  # fmt: skip
    assert changed.status_code == 200, changed.content
    [second] = refill(settings, 1)

    first.completion_a.refresh_from_db()
    assert first.completion_a.sampling["temperature"] == 0.3
    assert first.completion_a.sampling["system_prompt"] == SYSTEM_PROMPT
    for completion in (second.completion_a, second.completion_b):
        assert completion.sampling["temperature"] == 1.2
        assert "system_prompt" not in completion.sampling
        assert sent_for(stub, completion)["messages"] == completion.prompt.messages


def test_sides_of_two_settings_sample_the_serving_version_twice_with_each(stub, settings, staff_api, serving_version):
    create_campaign(staff_api, sides="settings", temperature=0.2, second_temperature=1.5, second_top_p=0.7)
    nursing_prompts(4)

    pairs = refill(settings, 4)

    for pair in pairs:
        answers = (pair.completion_a, pair.completion_b)
        assert {answer.model_version_id for answer in answers} == {serving_version.pk}
        settings_used = sorted((answer.sampling["temperature"], answer.sampling["top_p"]) for answer in answers)
        assert settings_used == [(0.2, settings.SAMPLING_TOP_P), (1.5, 0.7)]
        for answer in answers:
            sent = sent_for(stub, answer)
            assert (sent["temperature"], sent["top_p"]) == (answer.sampling["temperature"], answer.sampling["top_p"])


def test_sides_against_a_named_earlier_version(stub, settings, staff_api, serving_version):
    newer = ModelVersion.objects.create(name="policy-v1", base_model="/models/base")
    with client_from_settings() as client:
        newer.serve(client)  # the first version is now an earlier one
    serving_version.refresh_from_db()
    assert serving_version.status == ModelVersion.Status.RETIRED
    create_campaign(staff_api, sides="version", opponent_version=serving_version.pk, max_tokens=30)
    nursing_prompts(4)

    pairs = refill(settings, 4)

    for pair in pairs:
        assert pair.sampled_from == newer and pair.is_head_to_head
        answers = (pair.completion_a, pair.completion_b)
        assert {answer.model_version.name for answer in answers} == {"policy-v1", serving_version.name}
        for answer in answers:
            assert sent_for(stub, answer)["model"] == answer.model_version.name
            assert answer.sampling["max_tokens"] == 30


def test_exports_and_their_card_say_which_settings_made_which_rows(
    stub, settings, staff_api, staff, annotator, tmp_path
):
    settings.EXPORT_DIR = tmp_path / "exports"
    campaign = create_campaign(staff_api, sides="settings", system_prompt=SYSTEM_PROMPT, temperature=0.2,
                               second_temperature=1.5, max_tokens=40)  # fmt: skip
    nursing_prompts(3)
    refill(settings, 3)
    # A later change: the next pairs are sampled without the system prompt, as two settings still.
    staff_api.patch(f"/api/campaigns/{campaign.pk}/", {"system_prompt": ""}, format="json")
    refill(settings, 1)
    votes = [vote_as_annotator(annotator, choice="a") for _ in range(4)]

    done = exports.export_run(
        export=exports.export_create(
            created_by=staff,
            dataset_format="trl-preference",
            file_format="jsonl",
            filters=ExportFilters(prompt_sets=("nursing",)),
        )
    )

    assert (done.status, done.row_count) == ("done", 4)
    digest = hashlib.sha256(SYSTEM_PROMPT.encode()).hexdigest()[:12]
    cool, hot = (f"temperature {t}, top_p {settings.SAMPLING_TOP_P}, max_tokens 40" for t in (0.2, 1.5))
    rows = {row["pair_id"]: row for row in map(json.loads, Path(done.path).read_text().splitlines())}
    for vote in votes:
        pair = vote.pair
        expected = {}
        for side, completion in (("chosen", pair.completion_a), ("rejected", pair.completion_b)):
            label = cool if completion.sampling["temperature"] == 0.2 else hot
            if completion.sampling.get("system_prompt"):
                label += f", system prompt {digest}"
            expected[f"{side}_sampling"] = label
        assert {key: rows[pair.pk][key] for key in expected} == expected
    card = Path(done.path).with_suffix(".md").read_text()
    for line in (f"| {cool}, system prompt {digest} | 3 |", f"| {hot}, system prompt {digest} | 3 |",
                 f"| {cool} | 1 |", f"| {hot} | 1 |"):  # fmt: skip
        assert line in card, line


# Each bad value, and the field the refusal names.
BAD_VALUES = [
    ({"temperature": 5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10_000_000}, "max_tokens"),
    ({"second_temperature": 2.5}, "second_temperature"),
    ({"system_prompt": "Be kind.\x00"}, "system_prompt"),
    ({"system_prompt": "x" * 2_000_000}, "system_prompt"),
    ({"sides": "everything"}, "sides"),
    ({"sides": "version"}, "opponent_version"),  # no version named
    ({"sides": "version", "opponent_version": 999_999}, "opponent_version"),
    ({"sides": "settings"}, "second_temperature"),  # no second setting
    ({"temperature": "nan"}, "temperature"),
    ({"top_p": "inf"}, "top_p"),
]


def case_id(case) -> str:
    bad = case[0]
    return ",".join(f"{key}={str(value)[:12]!r}" for key, value in bad.items())


@pytest.mark.parametrize("case", BAD_VALUES, ids=case_id)
def test_bad_sampling_values_are_refused_by_the_api_and_store_nothing(staff_api, case):
    bad, field = case
    response = staff_api.post("/api/campaigns/", {"name": "nursing", **bad}, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert not Campaign.objects.filter(name="nursing").exists()

    campaign = create_campaign(staff_api, name="kept", temperature=0.4)
    response = staff_api.patch(f"/api/campaigns/{campaign.pk}/", bad, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]
    campaign.refresh_from_db()
    assert (campaign.temperature, campaign.system_prompt, campaign.sides) == (0.4, "", Campaign.Sides.SELF)


@pytest.mark.parametrize("case", BAD_VALUES, ids=case_id)
def test_bad_sampling_values_are_refused_by_the_form_and_store_nothing(client, staff, case):
    bad, field = case
    client.force_login(staff)
    form = {"name": "nursing", "votes_per_pair": 1, "gold_rate": 0, "repeat_rate": 0, "sides": "self", **bad}
    response = client.post("/campaigns/", form)
    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert not Campaign.objects.filter(name="nursing").exists()


def test_an_opponent_that_never_served_is_refused(staff_api, serving_version):
    candidate = ModelVersion.objects.create(name="policy-v1", base_model="/models/base")
    response = staff_api.post("/api/campaigns/", {"name": "nursing", "sides": "version",
                                                  "opponent_version": candidate.pk}, format="json")  # fmt: skip
    assert response.status_code == 400
    assert not Campaign.objects.filter(name="nursing").exists()


def test_the_form_saves_the_sampling_fields(client, staff, serving_version):
    client.force_login(staff)
    form = {"name": "nursing", "votes_per_pair": 1, "gold_rate": 0, "repeat_rate": 0, "system_prompt": SYSTEM_PROMPT,
            "temperature": 0.5, "top_p": 0.9, "max_tokens": 64, "sides": "version",
            "opponent_version": serving_version.pk}  # fmt: skip
    response = client.post("/campaigns/", form)
    assert response.status_code == 303
    campaign = Campaign.objects.get(name="nursing")
    assert (campaign.system_prompt, campaign.temperature, campaign.top_p, campaign.max_tokens) == (
        SYSTEM_PROMPT, 0.5, 0.9, 64,
    )  # fmt: skip
    assert campaign.opponent_version == serving_version


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_the_campaign_page_sets_the_sampling_and_names_a_bad_value(staff, serving_version, live_server, tmp_path):
    """In Chromium, at desktop and phone widths: staff set a campaign's sampling on its page; a temperature out of
    bounds is refused with the field named, and the form fits the screen's width."""
    from playwright.sync_api import sync_playwright

    campaign = Campaign.objects.create(name="nursing", title="Nursing answers")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, viewport in (("desktop", {"width": 1400, "height": 900}), ("phone", {"width": 390, "height": 844})):
            page = browser.new_page(viewport=viewport)
            log_in(page, live_server.url, "sam", "sam-password-1")
            page.goto(f"{live_server.url}/campaigns/{campaign.pk}/")
            page.fill("textarea[name=system_prompt]", SYSTEM_PROMPT)
            page.fill("input[name=temperature]", "5")
            page.fill("input[name=max_tokens]", "64")
            page.select_option("select[name=sides]", "settings")
            page.fill("input[name=second_temperature]", "1.2")
            # The browser's own check would stop the post (the field's max is 2): send it as a script could.
            page.locator("#campaign form").evaluate("form => { form.noValidate = true; }")
            page.click("#campaign form button.primary")
            assert "less than or equal to 2" in page.inner_text("body")
            campaign.refresh_from_db()
            assert campaign.temperature is None and campaign.system_prompt == ""
            page.locator("input[name=temperature]").scroll_into_view_if_needed()
            page.wait_for_load_state("load")  # widths only once the stylesheets apply (the text comes before them)
            page.screenshot(path=str(tmp_path / f"campaign-sampling-{name}.png"))  # for a person to look at
            assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
            page.fill("input[name=temperature]", "0.4")
            page.click("#campaign form button.primary")
            campaign.refresh_from_db()
            assert (campaign.temperature, campaign.second_temperature, campaign.sides) == (0.4, 1.2, "settings")
            Campaign.objects.filter(pk=campaign.pk).update(temperature=None, system_prompt="", sides="self",
                                                           second_temperature=None)  # fmt: skip
            page.close()
        browser.close()


def test_the_admin_checks_the_same_bounds(client, staff, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="root-password-1")
    client.force_login(admin)
    campaign = Campaign.objects.create(name="nursing")
    form = {"name": "nursing", "title": "", "guidelines": "", "votes_per_pair": 1, "gold_rate": 0, "repeat_rate": 0,
            "is_active": "on", "system_prompt": "", "temperature": 5, "sides": "self"}  # fmt: skip
    response = client.post(f"/admin/annotate/campaign/{campaign.pk}/change/", form)
    assert response.status_code == 200 and "less than or equal to 2" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.temperature is None
    response = client.post(f"/admin/annotate/campaign/{campaign.pk}/change/", {**form, "temperature": 1})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.temperature == 1


def test_a_cap_lowered_after_the_campaign_was_saved_still_holds(stub, settings, staff_api):
    create_campaign(staff_api, max_tokens=1000)
    settings.SAMPLING_MAX_TOKENS_CAP = 300
    nursing_prompts(1)

    refill(settings, 1)

    assert [body["max_tokens"] for body in stub.requests] == [300, 300]
    assert {completion.sampling["max_tokens"] for completion in Completion.objects.all()} == {300}
