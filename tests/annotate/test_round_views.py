import json
import re

import pytest
from rest_framework.test import APIClient

from annotate import tasks
from annotate.models import ModelVersion, TrainingRound
from annotate.rounds import services as rounds

from .conftest import run_round
from .voting import vote_as_annotator

pytestmark = pytest.mark.django_db

FORM = {"beta": "0.1", "learning_rate": "5e-5", "epochs": "1", "batch_size": "4", "max_length": "128",
        "max_steps": "2", "lora_rank": "8", "loss_type": "ipo", "label_smoothing": "0"}  # fmt: skip


@pytest.fixture
def enough_votes(make_pair, django_user_model, settings, tmp_path):
    settings.ROUND_DIR = tmp_path
    settings.ROUND_MIN_TRAIN_PAIRS = 2
    voter = django_user_model.objects.create_user("voter")
    for _ in range(2):
        vote_as_annotator(voter, pair=make_pair(), choice="b", strength=1)


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def staff_api(staff):
    api = APIClient()
    api.force_authenticate(staff)
    return api


def make_round(status="queued"):
    """A round started as staff start one, moved on by the round's own methods as the training worker moves it."""
    training_round = rounds.round_start(trigger="api")
    for step in {"queued": [], "training": ["preparing", "training"]}[status]:
        training_round.advance(step)
    return training_round


# --- pages ------------------------------------------------------------------------------------------------------


def test_round_pages_are_for_staff_only(client, annotator, serving_version, enough_votes):
    round_ = make_round()
    assert client.get("/rounds/").status_code == 302  # anonymous: to login
    client.force_login(annotator)
    assert client.get("/rounds/").status_code == 403
    assert client.get(f"/rounds/{round_.pk}/").status_code == 403
    assert client.post("/rounds/start/", FORM).status_code == 403
    assert client.post(f"/versions/{serving_version.pk}/serve/").status_code == 403
    assert TrainingRound.objects.count() == 1


def test_start_form_starts_a_round_and_shows_it(staff_client, enough_votes, serving_version):
    response = staff_client.post("/rounds/start/", FORM)
    training_round = TrainingRound.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/rounds/{training_round.pk}/"
    assert training_round.config["loss_type"] == "ipo" and training_round.config["lora_rank"] == 8
    assert training_round.started_by.username == "sam"
    page = staff_client.get(response["Location"]).content.decode()
    assert "Queued" in page and 'hx-trigger="every 2s"' in page and "Cancel round" in page


def test_start_form_names_bad_fields(staff_client, enough_votes, serving_version):
    response = staff_client.post("/rounds/start/", {**FORM, "beta": "-1", "loss_type": "mse"})
    assert response.status_code == 400
    body = response.content.decode()
    assert "greater than or equal to 0.001" in body and "Select a valid choice" in body
    assert TrainingRound.objects.count() == 0


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [("max_steps", -1, True), ("max_steps", -2, False), ("max_steps", 1_000_001, False), ("beta", 10, True),
     ("beta", 10.5, False), ("lora_rank", 16, True), ("lora_rank", 17, False)],
)  # fmt: skip
def test_the_form_and_the_api_take_the_same_bounds_from_the_spec(
    staff_client, staff_api, enough_votes, serving_version, settings, field, value, accepted
):
    settings.VLLM_MAX_LORA_RANK = 16  # the model server's limit caps the rank in both
    page = staff_client.post("/rounds/start/", {**FORM, field: str(value)})
    assert page.status_code == (302 if accepted else 400)
    if accepted:
        rounds.round_cancel(training_round=TrainingRound.objects.get())
    api = staff_api.post("/api/rounds/", {field: value}, format="json")
    assert api.status_code == (201 if accepted else 400)
    if not accepted:
        assert field in api.json()["errors"]
    assert TrainingRound.objects.count() == (2 if accepted else 0)


def test_start_form_explains_a_conflict(staff_client, enough_votes, serving_version):
    make_round(status="training")
    response = staff_client.post("/rounds/start/", FORM)
    assert response.status_code == 409
    assert "is still training" in response.content.decode()


def test_round_page_shows_progress_charts_and_evaluation(staff_client, loop, monkeypatch):
    round_ = rounds.round_start(trigger="api")
    # The steps the training worker takes, through the round's own methods.
    round_.advance(TrainingRound.Status.PREPARING)
    round_.advance(TrainingRound.Status.TRAINING)
    round_.record_steps([{"step": s, "max_steps": 4, "loss": 0.7 - s / 10, "rewards/accuracies": s / 4,
                          "eta_seconds": 9.0} for s in (1, 2)])  # fmt: skip
    body = staff_client.get(f"/rounds/{round_.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert body.lstrip().startswith('<section id="round"')  # the fragment the page polls for
    assert 'aria-valuenow="50"' in body and "Step 2 of 4" in body and "about 9 s left" in body
    # Two charts drawn by charts.js from their data blocks, and the same values as text for a page without scripts.
    assert body.count("<canvas data-chart-spec=") == 2
    loss = re.search(r'<script id="round-loss-chart" type="application/json">(.*?)</script>', body)
    assert json.loads(loss.group(1))["series"][0]["values"] == pytest.approx([0.6, 0.5])
    assert json.loads(loss.group(1))["x"]["values"] == [1, 2]
    assert "Loss: 0.500" in body and "<td>2</td><td>0.5000</td>" in body  # the last value, and step 2's row
    assert "<td>1</td><td>0.2500</td>" in body  # reward accuracy at step 1

    round_.finish(TrainingRound.Status.FAILED, error="the trainer crashed")  # as a crash ends it; the slot frees
    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.41")
    rejected = run_round()
    body = staff_client.get(f"/rounds/{rejected.pk}/").content.decode()
    assert rejected.status == TrainingRound.Status.REJECTED
    assert "every 2s" not in body  # a finished round stops polling
    assert "0.410" in body and "Gate: held-out accuracy 0.410 is below" in body and 'name="reason"' in body


def test_rollback_makes_an_earlier_version_serve(staff_client, serving_version):
    newer = ModelVersion.objects.create(name="newer", base_model="/m", parent=serving_version)
    staff_client.post(f"/versions/{newer.pk}/serve/")
    assert ModelVersion.objects.get(status="serving") == newer
    page = staff_client.get("/rounds/").content.decode()
    assert "Roll back to this" in page

    staff_client.post(f"/versions/{serving_version.pk}/serve/")
    serving_version.refresh_from_db()
    newer.refresh_from_db()
    assert (serving_version.status, newer.status) == ("serving", "retired")


def test_rollback_to_an_adapter_the_server_cannot_load_changes_nothing(staff_client, serving_version, settings):
    settings.VLLM_BASE_URL = "http://127.0.0.1:9"
    adapter = ModelVersion.objects.create(name="r1", base_model="/m", adapter_path="/a", parent=serving_version)
    response = staff_client.post(f"/versions/{adapter.pk}/serve/", follow=True)
    assert "could not load r1" in response.content.decode()
    assert ModelVersion.objects.get(status="serving") == serving_version


# --- API --------------------------------------------------------------------------------------------------------


def test_rounds_api_is_for_staff(annotator, serving_version, enough_votes):
    assert APIClient().post("/api/rounds/", {}, format="json").status_code == 401
    api = APIClient()
    api.force_authenticate(annotator)
    assert api.post("/api/rounds/", {}, format="json").status_code == 403
    round_ = make_round()
    assert api.get(f"/api/rounds/{round_.pk}/").status_code == 403
    assert api.post(f"/api/model-versions/{serving_version.pk}/serve/").status_code == 403


def test_create_and_read_a_round_through_the_api(staff_api, enough_votes, serving_version):
    created = staff_api.post("/api/rounds/", {"max_steps": 2, "loss_type": "ipo"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["status"] == "queued" and body["parent_version"] == serving_version.name
    assert body["config"]["max_steps"] == 2 and body["result_version"] is None
    detail = staff_api.get(f"/api/rounds/{body['id']}/")
    assert detail.status_code == 200 and detail.json()["id"] == body["id"]
    assert staff_api.post("/api/rounds/", {}, format="json").status_code == 409
    assert staff_api.get("/api/rounds/999/").status_code == 404


def test_round_api_names_bad_fields(staff_api, enough_votes, serving_version):
    response = staff_api.post("/api/rounds/", {"beta": 0, "loss_type": "nope", "epochs": "x"}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"beta", "loss_type", "epochs"}
    assert TrainingRound.objects.count() == 0


def test_cancel_and_promote_through_the_api(staff_api, loop, monkeypatch):
    queued = rounds.round_start(trigger="api")
    assert staff_api.post(f"/api/rounds/{queued.pk}/cancel/").json()["status"] == "cancelled"
    assert staff_api.post(f"/api/rounds/{queued.pk}/cancel/").status_code == 409
    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.3")
    rejected = run_round()
    missing_reason = staff_api.post(f"/api/rounds/{rejected.pk}/promote/", {}, format="json")
    assert missing_reason.status_code == 400 and "reason" in missing_reason.json()["errors"]
    promoted = staff_api.post(f"/api/rounds/{rejected.pk}/promote/", {"reason": "manual check"}, format="json")
    assert promoted.status_code == 202 and promoted.json()["override_reason"].startswith("manual check")
    assert promoted.json()["status"] == "deploying"
    tasks.round_deploy(rejected.pk)
    assert staff_api.get(f"/api/rounds/{rejected.pk}/").json()["status"] == "serving"


def test_serve_through_the_api(staff_api, serving_version):
    other = ModelVersion.objects.create(name="other", base_model="/m")
    response = staff_api.post(f"/api/model-versions/{other.pk}/serve/")
    assert response.status_code == 200 and response.json()["status"] == "serving"
    external = ModelVersion.objects.create(name="imported:x", base_model="-", status="external")
    assert staff_api.post(f"/api/model-versions/{external.pk}/serve/").status_code == 409
    assert ModelVersion.objects.get(status="serving") == other
