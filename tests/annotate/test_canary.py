"""The human canary gate through its real paths: a round in human mode trained by the scripted trainer, head-to-head
pairs sampled from the fake model server over HTTP, votes through the annotation services, the decision task."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils.html import escape
from rest_framework.test import APIClient

from annotate import tasks
from annotate.annotation import services
from annotate.errors import Conflict, Invalid
from annotate.models import Judgement, ModelVersion, Pair, TrainingRound
from annotate.rounds import canary
from annotate.rounds import services as rounds
from annotate.sampling import services as sampling
from annotate.sampling.generation import client_from_settings
from tests.annotate.browsers import CHROMIUM, CHROMIUM_ARGS, log_in

from .edges import ChattingModelServer

pytestmark = pytest.mark.django_db
Status = TrainingRound.Status


@pytest.fixture
def model_server():
    return ChattingModelServer(max_lora_rank=16)


@pytest.fixture
def canary_settings(loop):
    """A test that decides within the sixteen pairs a test makes: H0 a win rate of at most 0.4, H1 at least 0.7. A win
    adds log(0.7 / 0.4) = 0.560 to the evidence, a loss log(0.3 / 0.6) = -0.693, a tie half of each; it serves at
    log(0.9 / 0.05) = 2.890 and rejects at log(0.1 / 0.95) = -2.251, from 10 votes on; undecided at 16 votes it serves
    above a win rate of 0.553."""
    loop.CANARY_MARGIN = 0.1
    loop.CANARY_TARGET_WIN_RATE = 0.7
    loop.CANARY_ALPHA = 0.05
    loop.CANARY_BETA = 0.1
    loop.CANARY_MIN_VOTES = 10
    loop.CANARY_MAX_VOTES = 16
    loop.CANARY_MAX_MINUTES = 60
    loop.CANARY_PAIR_SHARE = 1.0
    return loop


def start_canary(gate_mode: str = "human") -> TrainingRound:
    training_round = rounds.round_start(trigger="api", gate_mode=gate_mode)
    rounds.round_run(training_round.pk)
    training_round.refresh_from_db()
    return training_round


def make_head_to_head_pairs(count: int) -> int:
    made = 0
    with client_from_settings() as client:
        while made < count:
            made += sampling.head_to_head_pairs_refill(client=client, missing=min(8, count - made))
    return made


def vote(training_round: TrainingRound, outcomes: list[str]) -> None:
    """One fresh annotator per outcome (win, tie or loss, from the candidate's side), voting through the services
    on the screen sides they were shown; ordinary pairs leased on the way get a tie."""
    candidate = training_round.result_version
    for outcome in outcomes:
        voter = User.objects.create_user(f"voter-{uuid.uuid4().hex[:8]}")
        while True:
            assignment = services.assignment_lease_next(annotator=voter)
            assert assignment is not None, "no pair left to vote on"
            if not assignment.pair.is_head_to_head:
                services.judgement_record(
                    annotator=voter, pair_id=assignment.pair_id, choice="tie", strength=None, rationale="",
                    idempotency_key=uuid.uuid4(),
                )  # fmt: skip
                continue
            candidate_side = "left" if assignment.left.model_version_id == candidate.pk else "right"
            other_side = "right" if candidate_side == "left" else "left"
            choice = {"win": candidate_side, "loss": other_side, "tie": "tie"}[outcome]
            services.judgement_record(
                annotator=voter, pair_id=assignment.pair_id, choice=choice, strength=None if choice == "tie" else 2,
                rationale="", idempotency_key=uuid.uuid4(),
            )  # fmt: skip
            break


def test_a_human_mode_round_waits_as_a_canary_with_its_adapter_loaded_and_serving_unchanged(
    canary_settings, serving_version, model_server
):
    training_round = start_canary()

    assert training_round.status == Status.CANARY and training_round.active
    candidate = training_round.result_version
    assert candidate.status == ModelVersion.Status.CANDIDATE
    assert candidate.name in model_server.models
    assert ModelVersion.objects.serving() == serving_version
    with pytest.raises(Conflict, match="canary"):
        rounds.round_start(trigger="api")  # the canary holds the one round slot


def test_head_to_head_pairs_hold_one_answer_per_version_with_the_same_sampling_and_their_own_seeds(
    canary_settings, serving_version, model_server
):
    training_round = start_canary()
    assert make_head_to_head_pairs(16) == 16

    pairs = Pair.objects.filter(completion_a__model_version=training_round.result_version) | Pair.objects.filter(
        completion_b__model_version=training_round.result_version
    )
    assert pairs.count() == 16
    candidate_on_a = 0
    for pair in pairs:
        versions = {pair.completion_a.model_version_id, pair.completion_b.model_version_id}
        assert versions == {training_round.result_version_id, serving_version.pk}
        assert pair.sampled_from == serving_version and pair.is_head_to_head
        sampling_a = {k: v for k, v in pair.completion_a.sampling.items() if k != "seed"}
        sampling_b = {k: v for k, v in pair.completion_b.sampling.items() if k != "seed"}
        assert sampling_a == sampling_b
        assert pair.completion_a.seed != pair.completion_b.seed
        candidate_on_a += pair.completion_a.model_version_id == training_round.result_version_id
    # Which version is A is drawn for each pair: 16 pairs all on one side happens once in 32768 runs.
    assert 0 < candidate_on_a < 16


def test_a_prompt_the_model_server_refuses_is_skipped_and_the_others_make_pairs(
    canary_settings, serving_version, model_server
):
    start_canary()
    model_server.refuse = "number 3?"
    with client_from_settings() as client:
        assert sampling.head_to_head_pairs_refill(client=client, missing=8) == 7
    refused_prompt = Pair.objects.filter(prompt__messages__0__content="Question number 3?")
    assert [pair.is_head_to_head for pair in refused_prompt] == [False]  # only the fixture's own pair


def test_the_share_of_new_pairs_follows_the_setting(canary_settings, serving_version):
    canary_settings.HEAD_TO_HEAD_PAIR_SHARE = 0
    assert sampling.head_to_head_pairs_wanted(8) == (None, 0)  # no canary, no earlier versions wanted
    canary_settings.HEAD_TO_HEAD_PAIR_SHARE = 0.25
    assert sampling.head_to_head_pairs_wanted(8) == (None, 2)  # no canary: the serving version against earlier ones
    training_round = start_canary()
    canary_settings.CANARY_PAIR_SHARE = 0.25
    assert sampling.head_to_head_pairs_wanted(8) == (training_round, 2)  # the canary takes the slot
    assert sampling.head_to_head_pairs_wanted(0)[1] == 0


def test_the_rule_waits_for_enough_votes_then_promotes_and_the_candidate_serves(
    canary_settings, serving_version, model_server
):
    training_round = start_canary()
    make_head_to_head_pairs(16)
    vote(training_round, ["win"] * 9)

    assert canary.canaries_decide() is None  # 9 of 10 votes: too few, whatever the win rate
    training_round.refresh_from_db()
    assert training_round.status == Status.CANARY

    vote(training_round, ["win"])
    assert canary.canaries_decide() == "promote"
    training_round.refresh_from_db()
    assert training_round.status == Status.DEPLOYING and training_round.active
    assert training_round.canary_decision["votes"] == 10 and training_round.canary_decision["wins"] == 10
    tasks.round_deploy(training_round.pk)  # what the training worker runs

    training_round.refresh_from_db()
    assert training_round.status == Status.SERVING and training_round.active is None
    assert ModelVersion.objects.serving() == training_round.result_version
    assert training_round.result_version.name in model_server.models


def test_a_modest_improvement_keeps_collecting_votes_and_serves_when_the_test_must_stop(
    canary_settings, serving_version, model_server
):
    """The old rule (Wilson lower bound at least 0.5 after 10 votes here) rejected 6 wins and 4 losses: the lower
    bound is 0.313. The sequential test keeps collecting, and undecided at its vote limit serves a candidate whose
    win rate is above the midpoint."""
    training_round = start_canary()
    make_head_to_head_pairs(16)
    vote(training_round, ["win", "loss"] * 4 + ["win", "win"])  # 6 wins, 4 losses: evidence 0.585
    tally = canary.canary_tally(training_round)
    assert (tally.wins, tally.ties, tally.losses) == (6, 0, 4)

    assert canary.canaries_decide() is None
    training_round.refresh_from_db()
    assert training_round.status == Status.CANARY
    vote(training_round, ["win", "loss", "tie", "tie", "win", "loss"])  # 16 votes, 8 wins, 2 ties: 0.5625
    assert canary.canaries_decide() == "promote"
    training_round.refresh_from_db()
    assert training_round.status == Status.DEPLOYING
    assert training_round.canary_decision["reason"] == (
        "16 votes, the most the test takes, without a decision; win rate 0.562 over 16 votes is above 0.553"
    )


def test_the_edges_of_the_rule_one_vote_apart(canary_settings):
    rule = canary.canary_rule
    now = timedelta(0)
    # 6 wins and 4 ties: evidence 6 x 0.560 + 2 x (0.560 - 0.693) = 3.09, over the bound; 5 wins and 5 ties: 2.46.
    assert rule(canary.Tally(6, 4, 0), waited=now)[0] == "promote"
    assert rule(canary.Tally(5, 5, 0), waited=now) is None
    # 3 losses and 7 ties: -2.55, under the bound; a win instead of one of the ties: -1.92.
    assert rule(canary.Tally(0, 7, 3), waited=now)[0] == "reject"
    assert rule(canary.Tally(1, 6, 3), waited=now) is None
    # Nine wins are far over the bound but below the minimum; the tenth vote decides.
    assert rule(canary.Tally(9, 0, 0), waited=now) is None
    assert rule(canary.Tally(9, 0, 1), waited=now)[0] == "promote"
    # At the vote limit undecided: above the midpoint (0.553) serves, a win rate of exactly 0.5 does not.
    assert rule(canary.Tally(9, 0, 7), waited=now)[0] == "promote"
    assert rule(canary.Tally(8, 0, 8), waited=now)[0] == "reject"
    # At the time limit: decided by the lean with the minimum of votes, rejected with fewer.
    limit = timedelta(minutes=60)
    assert rule(canary.Tally(6, 0, 4), waited=limit - timedelta(seconds=1)) is None
    assert rule(canary.Tally(6, 0, 4), waited=limit) == (
        "promote",
        "the time limit without a decision; win rate 0.600 over 10 votes is above 0.553",
    )
    assert rule(canary.Tally(5, 0, 5), waited=limit)[0] == "reject"
    assert rule(canary.Tally(9, 0, 0), waited=limit) == ("reject", "not enough votes: 9 of 10 in the time limit")


def test_the_live_instances_tally_keeps_collecting_at_the_default_settings(settings):
    """Issue 21: 22 wins and 18 losses (0.55, Wilson lower bound 0.398) were rejected. At the defaults the test
    neither serves nor rejects it yet, and expects to serve such a candidate."""
    defaults = (settings.CANARY_MARGIN, settings.CANARY_TARGET_WIN_RATE, settings.CANARY_ALPHA, settings.CANARY_BETA)
    assert defaults == (0.05, 0.55, 0.05, 0.1)  # the ones docs/benchmarks.md measures
    assert (settings.CANARY_MIN_VOTES, settings.CANARY_MAX_VOTES) == (20, 200)
    tally = canary.Tally(22, 0, 18)
    assert canary.canary_rule(tally, waited=timedelta(0)) is None
    chance, more = canary.canary_outlook(tally)
    assert chance > 0.9 and 40 < more < 160


def test_a_rejected_canary_leaves_serving_unchanged_and_unloads_the_adapter(
    canary_settings, serving_version, model_server
):
    training_round = start_canary()
    make_head_to_head_pairs(16)
    vote(training_round, ["win"] * 2 + ["loss"] * 8)  # evidence 2 x 0.560 - 8 x 0.693 = -4.43

    assert canary.canaries_decide() == "reject"
    training_round.refresh_from_db()
    assert training_round.status == Status.REJECTED and training_round.active is None
    assert training_round.canary_decision["reason"] == (
        "win rate 0.200 over 10 votes: the evidence for a win rate of at most 0.400 reached its bound "
        "(log-likelihood ratio -4.43 \u2264 -2.25)"
    )
    assert training_round.result_version.status == ModelVersion.Status.REJECTED
    assert training_round.result_version.name not in model_server.models
    assert ModelVersion.objects.serving() == serving_version
    assert rounds.round_start(trigger="api").status == Status.QUEUED  # the slot is free again


def test_the_time_limit_rejects_a_canary_without_enough_votes(canary_settings, serving_version, model_server):
    training_round = start_canary()
    make_head_to_head_pairs(16)
    vote(training_round, ["win"] * 9)
    started = training_round.canary_started_at

    assert canary.canaries_decide(now=started + timedelta(minutes=60) - timedelta(seconds=1)) is None
    assert canary.canaries_decide(now=started + timedelta(minutes=60)) == "reject"
    training_round.refresh_from_db()
    assert training_round.status == Status.REJECTED
    assert training_round.canary_decision["reason"].startswith("not enough votes: 9 of 10")
    assert training_round.result_version.name not in model_server.models
    assert ModelVersion.objects.serving() == serving_version


def test_a_waiting_canary_is_never_failed_as_stale(canary_settings, serving_version):
    training_round = start_canary()
    canary_settings.ROUND_STALE_SECONDS = 0  # any round without a heartbeat this instant counts as stale

    with pytest.raises(Conflict, match="canary"):
        rounds.round_start(trigger="api")
    training_round.refresh_from_db()
    assert training_round.status == Status.CANARY


def test_an_early_decision_needs_a_reason_and_is_recorded_with_it(
    canary_settings, serving_version, staff, model_server
):
    training_round = start_canary()
    with pytest.raises(Invalid) as refused:
        canary.canary_decide_early(training_round=training_round, by=staff, decision="reject", reason="  ")
    assert "reason" in refused.value.errors
    training_round.refresh_from_db()
    assert training_round.status == Status.CANARY

    canary.canary_decide_early(training_round=training_round, by=staff, decision="reject", reason="reads worse")
    training_round.refresh_from_db()
    assert training_round.status == Status.REJECTED
    assert training_round.canary_decision["reason"] == "decided early: reads worse"
    assert training_round.canary_decision["by"] == "sam"
    assert training_round.result_version.name not in model_server.models
    with pytest.raises(Conflict):
        canary.canary_decide_early(training_round=training_round, by=staff, decision="promote", reason="again")


def test_both_mode_rejects_offline_first_and_runs_the_canary_only_when_the_offline_check_passes(
    canary_settings, serving_version, monkeypatch
):
    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.3")
    rejected = start_canary("both")
    assert rejected.status == Status.REJECTED and not rejected.canary_decision

    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.9")
    assert start_canary("both").status == Status.CANARY


def test_an_unknown_gate_mode_is_refused_naming_the_field(canary_settings):
    with pytest.raises(Invalid) as refused:
        rounds.round_start(trigger="api", gate_mode="vibes")
    assert "gate_mode" in refused.value.errors
    assert not TrainingRound.objects.exists()


def test_simulated_annotators_vote_on_head_to_head_pairs_and_their_taste_decides(
    canary_settings, serving_version, model_server, make_pair
):
    training_round = start_canary()
    make_head_to_head_pairs(16)
    for number in range(8):
        make_pair(texts=(f"short {number}", f"a much longer answer {number}"))

    # Eight ordinary pairs and sixteen head-to-head ones: the simulated annotator meets both kinds.
    call_command("simulate_annotators", "--prefer", "shorter", "--count", "24", "--profile", "careful")

    tally = canary.canary_tally(training_round)
    assert tally.votes == 16
    assert tally.wins == 16  # the candidate answers briefly: a careful annotator who prefers shorter picks it
    assert Judgement.objects.filter(source=Judgement.Source.SIMULATED).count() == 24
    assert canary.canaries_decide() == "promote"


def test_ties_count_half_a_win(canary_settings):
    assert canary.Tally(6, 4, 0).win_rate == canary.Tally(8, 0, 2).win_rate == 0.8
    assert canary.Tally(6, 4, 0).interval == canary.Tally(8, 0, 2).interval
    assert canary.Tally(6, 4, 0).as_dict()["evidence"] == pytest.approx(canary.Tally(8, 0, 2).as_dict()["evidence"])
    assert canary.Tally(0, 0, 0).interval is None  # no votes, no interval


# --- The round page, the Start round form and the API ------------------------------------------------------------

FORM = {"beta": "0.1", "learning_rate": "5e-5", "epochs": "1", "batch_size": "4", "max_length": "128",
        "max_steps": "2", "lora_rank": "8", "loss_type": "ipo"}  # fmt: skip


def test_the_round_page_shows_the_canary_live_and_its_poll_follows_the_votes(
    canary_settings, serving_version, client, staff
):
    training_round = start_canary()
    make_head_to_head_pairs(8)
    client.force_login(staff)
    url = f"/rounds/{training_round.pk}/?revision={training_round.revision}"

    page = client.get(url).content.decode()
    assert "0 (decides from 10, at most 16)" in page and "Decide early" in page
    assert escape(canary.decision_rule_text()) in page  # the rule in a sentence, with the settings' numbers
    assert "sequential test" in page and "serves if its win rate is above 0.553" in page
    expected = canary.canary_outlook(canary.Tally(0, 0, 0))[1]
    assert f"The test expects about {expected:.0f} more votes to decide" in page
    vote(training_round, ["win", "win", "tie", "loss"])
    polled = client.get(url, headers={"HX-Request": "true"})  # the round did not change; its votes did
    assert polled.status_code == 200
    body = polled.content.decode()
    assert "4 (decides from 10, at most 16)" in body and "0.625" in body  # (2 + 0.5) / 4
    assert "0.36 (-2.25, 2.89)" in body  # 2.5 x 0.560 - 1.5 x 0.693: the evidence between its bounds
    expected = canary.canary_outlook(canary.canary_tally(training_round))[1]
    assert 6 <= expected <= 12  # at least the 6 votes to the minimum, at most the 12 to the limit
    assert f"The test expects about {expected:.0f} more votes to decide" in body


def test_deciding_early_on_the_page_needs_a_reason(canary_settings, serving_version, client, staff, model_server):
    training_round = start_canary()
    client.force_login(staff)
    url = f"/rounds/{training_round.pk}/canary/"

    refused = client.post(url, {"decision": "promote", "reason": "   "})
    assert refused.status_code == 400 and "Reason: This field is required." in refused.content.decode()
    assert client.post(url, {"decision": "maybe", "reason": "why not"}).status_code == 400
    training_round.refresh_from_db()
    assert training_round.status == Status.CANARY

    done = client.post(url, {"decision": "promote", "reason": "the new answers are plainly better"})
    assert done.status_code == 302
    training_round.refresh_from_db()
    assert training_round.status == Status.DEPLOYING
    assert training_round.canary_decision["reason"] == "decided early: the new answers are plainly better"
    tasks.round_deploy(training_round.pk)
    assert ModelVersion.objects.serving() == training_round.result_version
    page = client.get(f"/rounds/{training_round.pk}/").content.decode()
    assert "Canary promoted by sam: decided early: the new answers are plainly better" in page
    assert client.post(url, {"decision": "reject", "reason": "too late"}).status_code == 409


def test_the_canary_form_is_for_staff_and_needs_csrf(canary_settings, serving_version, annotator, staff):
    from django.test import Client

    training_round = start_canary()
    url = f"/rounds/{training_round.pk}/canary/"
    as_annotator = Client()
    as_annotator.force_login(annotator)
    assert as_annotator.post(url, {"decision": "reject", "reason": "no"}).status_code == 403
    checked = Client(enforce_csrf_checks=True)
    checked.force_login(staff)
    assert checked.post(url, {"decision": "reject", "reason": "no"}).status_code == 403
    training_round.refresh_from_db()
    assert training_round.status == Status.CANARY


def test_the_start_form_and_the_api_choose_the_gate_mode(canary_settings, serving_version, client, staff):
    from rest_framework.test import APIClient

    client.force_login(staff)
    response = client.post("/rounds/start/", {**FORM, "gate_mode": "human"})
    assert response.status_code == 302
    assert TrainingRound.objects.get().gate_mode == "human"
    assert client.post("/rounds/start/", {**FORM, "gate_mode": "vibes"}).status_code == 400
    rounds.round_cancel(training_round=TrainingRound.objects.get())  # queued: cancelled at once

    api = APIClient()
    api.force_authenticate(staff)
    refused = api.post("/api/rounds/", {"gate_mode": "vibes"}, format="json")
    assert refused.status_code == 400 and "gate_mode" in refused.json()["errors"]
    created = api.post("/api/rounds/", {"gate_mode": "both", "max_steps": 2}, format="json")
    assert created.status_code == 201 and created.json()["gate_mode"] == "both"
    assert TrainingRound.objects.get(pk=created.json()["id"]).gate_mode == "both"


def test_the_api_decides_a_canary_early_with_a_reason(canary_settings, serving_version, staff, model_server):
    from rest_framework.test import APIClient

    training_round = start_canary()
    api = APIClient()
    api.force_authenticate(staff)
    url = f"/api/rounds/{training_round.pk}/canary/"
    refused = api.post(url, {"decision": "reject", "reason": " "}, format="json")
    assert refused.status_code == 400 and "reason" in refused.json()["errors"]
    decided = api.post(url, {"decision": "reject", "reason": "answers drift off topic"}, format="json")
    assert decided.status_code == 202 and decided.json()["status"] == "rejected"
    assert decided.json()["canary_decision"]["reason"] == "decided early: answers drift off topic"
    assert training_round.result_version.name not in model_server.models
    assert api.post(url, {"decision": "reject", "reason": "again"}, format="json").status_code == 409


def test_staff_cannot_serve_a_candidate_its_canary_is_deciding_and_the_page_does_not_offer_it(
    canary_settings, serving_version, model_server, client, staff
):
    """Serving a canary's candidate by hand left the round unable to reject it: the rule's rejection failed at every
    beat and the canary blocked every new round."""
    training_round = start_canary()
    candidate = training_round.result_version
    client.force_login(staff)
    serve_form = f'action="/versions/{candidate.pk}/serve/"'
    assert serve_form not in client.get("/rounds/").content.decode()
    refused = client.post(f"/versions/{candidate.pk}/serve/", follow=True)
    assert "still deciding" in refused.content.decode()
    api = APIClient()
    api.force_authenticate(staff)
    assert api.post(f"/api/model-versions/{candidate.pk}/serve/").status_code == 409
    candidate.refresh_from_db()
    assert candidate.status == ModelVersion.Status.CANDIDATE and ModelVersion.objects.serving() == serving_version

    make_head_to_head_pairs(16)
    vote(training_round, ["win"] * 2 + ["loss"] * 8)
    assert canary.canaries_decide() == "reject"  # the rule still decides, and the slot is free again
    assert rounds.round_start(trigger="api").status == Status.QUEUED
    # Once decided, a rejected candidate is approved by staff before it may serve; a retired one is offered again.
    assert serve_form not in client.get("/rounds/").content.decode()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_the_canary_box_reads_at_desktop_and_phone_widths(
    canary_settings, serving_version, staff, live_server, tmp_path
):
    """The round page of a waiting canary in Chromium: the votes the test expects to need and the rule are on screen,
    and the canary box fits a phone's width (its table scrolls inside itself rather than widening the box)."""
    from playwright.sync_api import sync_playwright

    training_round = start_canary()
    make_head_to_head_pairs(8)
    vote(training_round, ["win", "win", "tie", "loss", "win", "loss"])
    expected = canary.canary_outlook(canary.canary_tally(training_round))[1]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for name, viewport in (("desktop", {"width": 1400, "height": 900}), ("phone", {"width": 390, "height": 844})):
            page = browser.new_page(viewport=viewport)
            log_in(page, live_server.url, "sam", "sam-password-1")
            page.goto(f"{live_server.url}/rounds/{training_round.pk}/")
            sentence = page.locator("[data-testid=canary-expected]")
            sentence.scroll_into_view_if_needed()
            assert sentence.is_visible()
            assert f"about {expected:.0f} more votes" in sentence.inner_text()
            assert "sequential test" in page.inner_text("body")
            page.locator("h2", has_text="Canary").scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / f"round-canary-{name}.png"))  # for a person to look at
            box = page.locator("[data-testid=canary-box]")
            assert box.evaluate(
                "box => box.scrollWidth <= box.clientWidth && box.getBoundingClientRect().right <= innerWidth"
            )
            page.close()
        browser.close()
