"""A round's whole life through the real paths: start, run (a scripted trainer process), gate, deploy into an HTTP
model server, promote over the gate, and every way a deploy can fail. No state is built by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from annotate import tasks
from annotate.errors import Conflict, Invalid
from annotate.models import ModelVersion, TrainingRound
from annotate.rounds import services as rounds

from .conftest import run_round
from .voting import vote_as_annotator

pytestmark = pytest.mark.django_db
Status = TrainingRound.Status


def test_a_round_the_gate_passes_serves_and_its_adapter_is_loaded(loop, serving_version, model_server):
    training_round = run_round()

    assert training_round.status == Status.SERVING and training_round.active is None
    version = training_round.result_version
    assert version.status == ModelVersion.Status.SERVING
    assert version.name in model_server.models
    serving_version.refresh_from_db()
    assert serving_version.status == ModelVersion.Status.RETIRED
    assert [step.step for step in training_round.steps.all()] == [1, 2]
    phases = training_round.phase_seconds
    assert set(phases) == {"prepare", "train_and_evaluate", "start", "load", "train", "evaluate", "deploy"}
    # The training process's own split: what its phases leave of its wall time is the start (imports).
    assert (phases["start"], phases["load"], phases["train"], phases["evaluate"]) == (0.5, 1.5, 1.25, 0.75)
    assert training_round.evaluation["reference"] == "base model"
    assert (training_round.evaluation["accuracy"], training_round.evaluation["parent_accuracy"]) == (0.75, 0.5)


def test_a_rejected_round_can_be_promoted_with_a_reason(loop, serving_version, staff, model_server, monkeypatch):
    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.3")
    training_round = run_round()
    assert training_round.status == Status.REJECTED and training_round.active is None
    assert training_round.result_version.status == ModelVersion.Status.REJECTED
    assert ModelVersion.objects.serving() == serving_version

    with pytest.raises(Invalid):
        rounds.round_promote(training_round=training_round, by=staff, reason="  ")
    rounds.round_promote(training_round=training_round, by=staff, reason="the answers read better")
    training_round.refresh_from_db()
    assert training_round.status == Status.DEPLOYING and training_round.active  # the slot is held meanwhile
    with pytest.raises(Conflict, match="still deploying"):
        rounds.round_start(trigger="api")

    tasks.round_deploy(training_round.pk)  # what the training worker runs

    training_round.refresh_from_db()
    assert training_round.status == Status.SERVING and training_round.active is None
    assert training_round.override_reason == "the answers read better (promoted by sam)"
    assert ModelVersion.objects.serving() == training_round.result_version
    assert training_round.result_version.name in model_server.models


def test_a_promote_with_the_task_queue_down_leaves_the_round_trained_to_promote_again(
    loop, serving_version, staff, model_server, monkeypatch, request
):
    monkeypatch.setenv("SCRIPTED_ACCURACY", "0.3")
    training_round = run_round()
    assert training_round.status == Status.REJECTED

    request.getfixturevalue("broker_down")
    with pytest.raises(Conflict, match="task queue could not be reached"):
        rounds.round_promote(training_round=training_round, by=staff, reason="the answers read better")

    training_round.refresh_from_db()
    assert training_round.status == Status.TRAINED and training_round.active is None  # it holds no slot
    assert training_round.error == "the task queue could not be reached; promote it again"
    assert ModelVersion.objects.serving() == serving_version
    assert rounds.round_start(trigger="api").status == Status.QUEUED


def test_promote_is_refused_for_a_round_that_serves_or_runs(loop, staff):
    training_round = run_round()
    with pytest.raises(Conflict, match="nothing to promote"):
        rounds.round_promote(training_round=training_round, by=staff, reason="again")


def test_a_model_server_that_refuses_the_adapter_fails_the_round_and_frees_the_slot(
    loop, serving_version, model_server
):
    loop.VLLM_MAX_LORA_RANK = 64  # the deployment says 64, the server was started with 16: they disagree
    training_round = run_round(lora_rank=32)

    assert training_round.status == Status.FAILED and training_round.active is None
    assert "refused the adapter" in training_round.error and "max_lora_rank 16" in training_round.error
    assert ModelVersion.objects.serving() == serving_version
    assert training_round.result_version.status == ModelVersion.Status.REJECTED
    assert rounds.round_start(trigger="api").status == Status.QUEUED  # the next round may start


def test_an_unreachable_model_server_leaves_the_round_trained_and_a_retry_deploys_it(
    loop, serving_version, model_server
):
    reachable = loop.VLLM_BASE_URL
    loop.VLLM_BASE_URL = "http://127.0.0.1:9"  # nothing listens there
    training_round = rounds.round_start(trigger="api")
    rounds.round_run(training_round.pk)
    training_round.refresh_from_db()
    assert training_round.status == Status.TRAINED and training_round.active is None
    assert "unreachable" in training_round.error
    assert ModelVersion.objects.serving() == serving_version

    loop.VLLM_BASE_URL = reachable
    tasks.round_deploy(training_round.pk)  # the task's retry
    training_round.refresh_from_db()
    assert training_round.status == Status.SERVING
    assert ModelVersion.objects.serving() == training_round.result_version


def test_a_finished_round_refuses_every_move(loop):
    training_round = run_round()
    for status in (Status.TRAINING, Status.DEPLOYING, Status.FAILED):
        with pytest.raises(Conflict):
            training_round.finish(status) if status == Status.FAILED else training_round.advance(status)
    training_round.refresh_from_db()
    assert training_round.status == Status.SERVING


def test_round_page_poll_answers_204_when_nothing_changed(loop, client, staff):
    training_round = rounds.round_start(trigger="api")
    client.force_login(staff)
    url = f"/rounds/{training_round.pk}/?revision={training_round.revision}"
    assert client.get(url, headers={"HX-Request": "true"}).status_code == 204
    rounds.round_run(training_round.pk)
    changed = client.get(url, headers={"HX-Request": "true"})
    assert changed.status_code == 200 and "Serving" in changed.content.decode()


def test_a_larger_holdout_setting_never_holds_out_prompts_an_earlier_round_trained_on(
    loop, make_pair, django_user_model
):
    import json

    voter = django_user_model.objects.create_user("another voter")
    for number in range(52):
        pair = make_pair(texts=(f"brief {number}", f"a far longer answer {number}"))
        vote_as_annotator(voter, pair=pair, choice="a", strength=2)
    first = run_round()  # trained, gated and serving through the real paths
    assert first.status == Status.SERVING
    trained_on = {
        json.dumps(json.loads(line)["prompt"])
        for line in (Path(first.directory) / rounds.TRAIN_FILE).read_text().splitlines()
    }

    loop.ROUND_HOLDOUT_FRACTION = 0.6  # someone raised the setting
    second = rounds.round_start(trigger="api")
    _, second_heldout = rounds.round_prepare(second)

    assert second.holdout_fraction == first.holdout_fraction == 0.25
    held_out = {json.dumps(json.loads(line)["prompt"]) for line in second_heldout.read_text().splitlines()}
    assert held_out and not held_out & trained_on
