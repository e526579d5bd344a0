import html
import json
import re

import pytest
from rest_framework.test import APIClient

from annotate import tasks
from annotate.models import ModelVersion, TrainingRound
from annotate.rounds import canary
from annotate.rounds import services as rounds

from .conftest import run_round
from .edges import ChattingModelServer
from .test_canary import make_head_to_head_pairs, start_canary, vote
from .test_dashboard import tables_of
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
def model_server():
    """The fake vLLM server that also answers chats: a canary's head-to-head pairs need answers."""
    return ChattingModelServer(max_lora_rank=16)


@pytest.fixture
def canary_settings(loop):
    """A canary test that decides in a few votes: a win adds log(0.7 / 0.4) = 0.560 to the evidence, a loss
    log(0.3 / 0.6) = -0.693; it serves at 2.890 and rejects at -2.251, from 4 votes on (see test_canary.py)."""
    loop.CANARY_MARGIN = 0.1
    loop.CANARY_TARGET_WIN_RATE = 0.7
    loop.CANARY_ALPHA = 0.05
    loop.CANARY_BETA = 0.1
    loop.CANARY_MIN_VOTES = 4
    loop.CANARY_MAX_VOTES = 40
    loop.CANARY_MAX_MINUTES = 60
    loop.CANARY_PAIR_SHARE = 1.0
    return loop


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
    assert 'value="50"' in body and "Training: step 2 of 4." in body and "about 9 s left" in body
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
    assert "0.410" in body and "Offline gate did not pass: held-out accuracy 0.410 is below" in body
    assert 'name="reason"' in body and "Rejected by the offline gate" in body


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


# --- one status, the same words everywhere ----------------------------------------------------------------------


def statuses_everywhere(client, training_round):
    """The round's status as its own page, the rounds list and the dashboard show it, and who decided, each."""
    page = client.get(f"/rounds/{training_round.pk}/").content.decode()
    badge = re.search(r'data-testid="round-status">([^<]*)<', page).group(1)
    decided = re.search(r'data-testid="decided-by">([^<]*)<', page)
    listed = next(row for row in tables_of(client.get("/rounds/"))["rounds"] if row[0] == f"Round {training_round.pk}")
    dashboard = client.get("/dashboard/")
    recent = next(row for row in tables_of(dashboard)["recent-rounds"] if row[0] == f"Round {training_round.pk}")
    on_page = [html.unescape(badge), html.unescape(decided.group(1)) if decided else ""]
    return page, {"page": on_page, "list": listed[1:3], "dashboard": recent[1:3]}


def rejected_by_the_canary() -> TrainingRound:
    """A human-mode round whose canary had six votes before the rule looked (it decides from four), and lost."""
    training_round = start_canary()
    make_head_to_head_pairs(6)  # as many as the votes: none left over for a later canary's voters
    vote(training_round, ["loss"] * 5 + ["win"])
    assert canary.canaries_decide() == "reject"
    training_round.refresh_from_db()
    return training_round


def promoted_by_the_canary() -> TrainingRound:
    """A both-mode round that passed the offline gate, then won its canary, and serves."""
    training_round = start_canary("both")
    make_head_to_head_pairs(6)
    vote(training_round, ["win"] * 6)  # evidence 6 x 0.560 = 3.36, past the serving bound
    assert canary.canaries_decide() == "promote"
    tasks.round_deploy(training_round.pk)  # what the training worker runs
    training_round.refresh_from_db()
    return training_round


def test_a_round_the_canary_rejected_says_so_on_every_page(canary_settings, staff_client):
    training_round = rejected_by_the_canary()

    page, statuses = statuses_everywhere(staff_client, training_round)
    expected = ["Rejected by the canary", "the canary's rule"]
    assert statuses == {"page": expected, "list": expected, "dashboard": expected}
    assert "eval gate" not in page and "Rejected by the offline gate" not in page
    # The offline check passed, but it decided nothing: neutral, never a green line above the red canary's.
    assert 'class="gate gate-neutral"' in page and "gate-good" not in page
    assert "for information (the canary decides in human mode)" in page
    assert "6 of 4" not in page  # the tally never reads as more votes than there were places for
    assert "Human: a canary of head-to-head votes decides" in page


def test_a_round_the_canary_promoted_serves_and_says_so_on_every_page(canary_settings, staff_client):
    training_round = promoted_by_the_canary()

    page, statuses = statuses_everywhere(staff_client, training_round)
    expected = ["Serving", "the canary's rule"]
    assert statuses == {"page": expected, "list": expected, "dashboard": expected}
    assert "The round passed the offline gate" in page and 'class="gate gate-neutral"' in page
    summary = staff_client.get("/dashboard/").content.decode()
    assert re.search(r'data-testid="summary-round-status">Serving<', summary)
    assert f'data-testid="summary-serving">{training_round.result_version.name}<' in summary


def test_a_round_rolled_back_from_no_longer_says_serving(staff_client, loop, serving_version):
    served = run_round()
    assert served.status == TrainingRound.Status.SERVING
    staff_client.post(f"/versions/{serving_version.pk}/serve/")  # staff roll back

    _, statuses = statuses_everywhere(staff_client, served)
    expected = ["Promoted, no longer serving", "the offline gate"]
    assert statuses == {"page": expected, "list": expected, "dashboard": expected}


# --- wait states ---------------------------------------------------------------------------------------------------


def test_a_training_round_says_what_it_waits_for_and_how_long_the_last_round_took(staff_client, loop):
    earlier = run_round()  # the scripted trainer reports its phases as the real one does
    earlier.record_phases({"evaluate": 90.0})  # as a long evaluation measured it
    started = rounds.round_start(trigger="api")
    page = staff_client.get(f"/rounds/{started.pk}/").content.decode()
    assert "Queued: waiting for a training worker" in page
    assert "Offline: held-out accuracy decides" in page  # the gate mode from the start

    started.advance(TrainingRound.Status.PREPARING)
    started.advance(TrainingRound.Status.TRAINING, started_at=started.created_at)
    page = staff_client.get(f"/rounds/{started.pk}/").content.decode()
    assert "Starting: loading the model and computing the reference log-probs" in page
    assert re.search(r'<progress class="progress-bar" max="100">', page)  # no value: a busy bar, not an empty one
    assert "so far" in page

    started.record(heldout_pairs=12)
    started.record_steps([{"step": 13, "max_steps": 13, "loss": 0.5, "eta_seconds": 0.0, "time": 1.0}])
    page = staff_client.get(f"/rounds/{started.pk}/").content.decode()
    assert "Evaluating: scoring the candidate and its parent on 12 held-out pairs" in page
    assert "took 1 min 30 s in the previous round" in page
    assert "about 0 s left" not in page and "Step 13 of 13" not in page


def test_the_wait_before_the_first_step_is_estimated_from_the_previous_round(staff_client, loop):
    earlier = rounds.round_start(trigger="api")
    earlier.advance(TrainingRound.Status.PREPARING)
    earlier.advance(TrainingRound.Status.TRAINING, started_at=earlier.created_at)
    # As the real trainer logs its first step: its clock (elapsed_seconds) starts after loading and the reference pass.
    began = earlier.created_at.timestamp()
    earlier.record_steps([{"step": 1, "max_steps": 4, "loss": 0.6, "time": began + 215.0, "elapsed_seconds": 5.0}])
    earlier.record_phases({"start": 20.0, "load": 30.0, "train": 180.0})
    earlier.finish(TrainingRound.Status.FAILED, error="the trainer crashed")

    waiting = rounds.round_start(trigger="api")
    waiting.advance(TrainingRound.Status.PREPARING)
    waiting.advance(TrainingRound.Status.TRAINING)
    page = staff_client.get(f"/rounds/{waiting.pk}/").content.decode()
    assert "Starting: loading the model and computing the reference log-probs" in page
    assert "took 3 min 30 s in the previous round" in page  # 215 s to the first step, less its own 5 s


# --- the start form ------------------------------------------------------------------------------------------------


def test_the_start_form_puts_the_gate_and_the_votes_first_and_the_rest_under_advanced(staff_client, loop):
    page = staff_client.get("/rounds/").content.decode()
    preview = re.search(r'data-testid="votes-preview">(.*?)</p>', page, re.S).group(1)
    assert "<strong>8</strong> votes that prefer one answer, of 8 so far" in preview  # the loop fixture's votes
    gate, advanced = page.index('name="gate_mode"'), page.index('<details class="advanced"')
    assert gate < advanced < page.index('name="beta"')
    assert "how far the policy may move from its reference" in page  # help texts are rendered
    assert '<details class="advanced">' in page  # closed while nothing is wrong


def test_a_refused_start_shows_its_errors_above_the_form(staff_client, enough_votes, serving_version):
    running = make_round(status="training")
    refused = staff_client.post("/rounds/start/", FORM)
    body = refused.content.decode()
    assert refused.status_code == 409
    errors = body.index('data-testid="start-errors"')
    assert "is still training" in body[errors : body.index("<form", errors)]  # above the form, not in its grid
    assert f"Round {running.pk} is running" in body

    bad = staff_client.post("/rounds/start/", {**FORM, "beta": "-1"}).content.decode()
    assert '<details class="advanced" open>' in bad  # the field in error is in view
    assert "Beta: Ensure this value is greater than or equal to 0.001." in bad
    assert TrainingRound.objects.count() == 1


# --- asking before throwing work away ------------------------------------------------------------------------------


def test_cancel_asks_first_on_a_page_of_its_own(staff_client, enough_votes, serving_version):
    training_round = make_round(status="training")
    page = staff_client.get(f"/rounds/{training_round.pk}/").content.decode()
    assert f'href="/rounds/{training_round.pk}/cancel/"' in page  # a link to the question, not a button that acts

    asked = staff_client.get(f"/rounds/{training_round.pk}/cancel/")
    training_round.refresh_from_db()
    assert asked.status_code == 200 and not training_round.cancel_requested
    assert f"Yes, cancel round {training_round.pk}" in asked.content.decode()

    assert staff_client.post(f"/rounds/{training_round.pk}/cancel/").status_code == 302
    training_round.refresh_from_db()
    assert training_round.cancel_requested


def test_rejecting_a_canary_early_asks_first(canary_settings, staff_client):
    training_round = start_canary()
    url = f"/rounds/{training_round.pk}/canary/"

    asked = staff_client.post(url, {"decision": "reject", "reason": "answers <b>read</b> worse"})
    body = asked.content.decode()
    training_round.refresh_from_db()
    assert asked.status_code == 200 and training_round.status == TrainingRound.Status.CANARY
    assert "Yes, reject it" in body and "answers &lt;b&gt;read&lt;/b&gt; worse" in body

    done = staff_client.post(url, {"decision": "reject", "reason": "answers <b>read</b> worse", "confirmed": "on"})
    training_round.refresh_from_db()
    assert done.status_code == 302 and training_round.status == TrainingRound.Status.REJECTED
    assert training_round.canary_decision["reason"] == "decided early: answers <b>read</b> worse"
    _, statuses = statuses_everywhere(staff_client, training_round)
    expected = ["Rejected by staff during the canary", "sam, during the canary"]
    assert statuses == {"page": expected, "list": expected, "dashboard": expected}
