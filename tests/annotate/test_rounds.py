import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

import pytest

from annotate import tasks
from annotate.annotation.simulation import prefer_keyword, prefer_longer, prefer_shorter, preference_from_spec
from annotate.errors import Conflict, Invalid
from annotate.models import Judgement, ModelVersion, TrainingRound
from annotate.rounds import runner
from annotate.rounds import services as rounds

from .voting import vote_as_annotator

pytestmark = pytest.mark.django_db


@pytest.fixture
def votes(make_pair, django_user_model):
    """`votes(n)` makes n pairs and has one annotator vote on each through the annotation services (by default
    decisively: the shorter answer, A, wins)."""
    voter, _ = django_user_model.objects.get_or_create(username="voter")  # the loop fixture's voter, when it is used

    def make(count, choice="a"):
        pairs = []
        for number in range(count):
            pair = make_pair(texts=(f"short {number}", f"a much longer answer {number}"))
            vote_as_annotator(voter, pair=pair, choice=choice, strength=2)
            pairs.append(pair)
        return pairs

    return make


@pytest.fixture
def round_settings(settings, tmp_path):
    settings.ROUND_DIR = tmp_path / "rounds"
    settings.ROUND_MIN_TRAIN_PAIRS = 4
    settings.ROUND_HOLDOUT_FRACTION = 0.25
    return settings


def test_start_queues_a_round_on_the_serving_version(round_settings, votes, serving_version, staff):
    votes(4)
    training_round = rounds.round_start(trigger="page", started_by=staff, overrides={"beta": 0.2})
    assert training_round.status == TrainingRound.Status.QUEUED
    assert training_round.parent_version == serving_version
    assert training_round.config["beta"] == 0.2
    assert training_round.config["loss_type"] == "sigmoid"
    assert training_round.rules == {"combine": "majority", "include_ties": False, "include_both_bad": False,
                                    "min_agreement": 0.0, "include_gold": False, "include_repeats": False,
                                    "include_excluded_annotators": False, "exclude_head_to_head": False,
                                    "min_competence": 0.0, "judge": "out", "judge_weight": 0.5,
                                    "edits": "edits_and_choices"}  # fmt: skip


def test_a_second_round_cannot_start_while_one_runs(round_settings, votes, serving_version):
    votes(4)
    first = rounds.round_start(trigger="api")
    with pytest.raises(Conflict, match=f"round {first.pk} is still queued"):
        rounds.round_start(trigger="api")
    assert TrainingRound.objects.count() == 1


def _sleeping_trainer(directory: Path) -> str:
    """A TRAINING_LAUNCHER whose process writes its pid into `directory`/pid and then sleeps, as a long round does."""
    sleeper = directory / "sleeper.sh"
    sleeper.write_text(f"#!/bin/sh\necho $$ > {directory}/pid\nexec sleep 120\n")
    sleeper.chmod(0o755)
    return str(sleeper)


@pytest.mark.django_db(transaction=True)
def test_a_round_whose_worker_was_killed_no_longer_blocks_once_its_heartbeat_is_stale(
    round_settings, votes, serving_version, tmp_path
):
    """The round runs in its own process, as the training worker runs it, on this test's database; that process is
    SIGKILLed mid-training (its training process, in a session of its own, lives on), so nothing ends the round but
    the next start's look at its heartbeat."""
    from tests.integration.conftest import REPO, shared_database_url, wait_until

    votes(8)
    round_settings.ROUND_STALE_SECONDS = 5
    lost = rounds.round_start(trigger="api")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "annotate.settings", "DATABASE_URL": shared_database_url(),
           "ROUND_DIR": str(round_settings.ROUND_DIR), "ROUND_MIN_TRAIN_PAIRS": "4", "ROUND_HOLDOUT_FRACTION": "0.25",
           "ROUND_POLL_SECONDS": "0.2", "TRAINING_LAUNCHER": _sleeping_trainer(tmp_path)}  # fmt: skip
    code = f"from annotate.rounds.services import round_run; round_run({lost.pk})"
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, start_new_session=True
    )
    try:

        def training() -> bool:
            lost.refresh_from_db()
            return lost.status == TrainingRound.Status.TRAINING and (tmp_path / "pid").exists()

        wait_until(training, 90, "the worker process to start training", worker)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        lost.refresh_from_db()
        last_heartbeat = lost.heartbeat_at

        with pytest.raises(Conflict, match=f"round {lost.pk} is still training"):
            rounds.round_start(trigger="api")  # its last heartbeat is fresh: it may be alive

        def started() -> TrainingRound | None:
            try:
                return rounds.round_start(trigger="api")
            except Conflict:
                return None

        fresh = wait_until(started, 30, "the stale round to stop blocking")
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        if (tmp_path / "pid").exists():
            with suppress(ProcessLookupError):
                os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)

    lost.refresh_from_db()
    assert lost.status == TrainingRound.Status.FAILED and lost.active is None
    assert lost.finished_at - last_heartbeat >= timedelta(seconds=5)  # not before ROUND_STALE_SECONDS of silence
    assert "stopped reporting" in lost.error
    assert fresh.status == TrainingRound.Status.QUEUED and fresh.is_active and fresh.pk != lost.pk


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [({"loss_type": "hinge-ish"}, "loss_type", "must be one of"), ({"output_dir": "/tmp"}, "output_dir", "chosen by"),
     ({"beta": "high"}, "beta", "must be float"), ({"unknown": 1}, "unknown", "unknown"),
     ({"max_length": 16}, "max_length", ">= 32"), ({"max_steps": 0}, "max_steps", "-1 or >= 1"),
     ({"weighting": "loudness"}, "weighting", "must be one of")],
)  # fmt: skip
def test_bad_config_is_refused_with_the_reason(round_settings, votes, serving_version, overrides, field, message):
    votes(4)
    with pytest.raises(Invalid) as refused:
        rounds.round_start(trigger="api", overrides=overrides)
    assert message in refused.value.errors[field]
    assert TrainingRound.objects.count() == 0


def test_a_lora_rank_above_the_model_servers_limit_is_refused_before_training(round_settings, votes, serving_version):
    votes(4)
    round_settings.VLLM_MAX_LORA_RANK = 16
    with pytest.raises(Invalid) as refused:
        rounds.round_start(trigger="api", overrides={"lora_rank": 32})
    assert "<= 16" in refused.value.errors["lora_rank"] and "max-lora-rank" in refused.value.errors["lora_rank"]
    assert TrainingRound.objects.count() == 0
    assert rounds.round_start(trigger="api", overrides={"lora_rank": 16}).config["lora_rank"] == 16


def test_too_few_votes_is_refused(round_settings, votes, serving_version):
    votes(3)
    votes(5, choice="tie")  # ties make no DPO pair
    with pytest.raises(Conflict, match="only 3 votes"):
        rounds.round_start(trigger="api")


def test_prepare_freezes_votes_and_splits_by_prompt(round_settings, votes, serving_version):
    pairs = votes(40)
    votes(3, choice="tie")
    training_round = rounds.round_start(trigger="api")
    later = votes(1)[0]  # arrives after the round started: not part of it

    train_path, heldout_path = rounds.round_prepare(training_round)

    train = [json.loads(line) for line in train_path.read_text().splitlines()]
    heldout = [json.loads(line) for line in heldout_path.read_text().splitlines()]
    assert len(train) + len(heldout) == 40
    assert 0 < len(heldout) < 20  # about a quarter, decided by each prompt's hash
    assert not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in heldout}
    assert all(row["chosen"][0]["content"].startswith("short") for row in train + heldout)
    training_round.refresh_from_db()
    assert (training_round.train_pairs, training_round.heldout_pairs) == (len(train), len(heldout))
    # Frozen by a cut-off: every vote up to the start, none after it.
    assert training_round.votes_read == 43
    assert all(j.pk <= training_round.last_judgement_id for j in Judgement.objects.filter(pair__in=pairs))
    assert Judgement.objects.get(pair=later).pk > training_round.last_judgement_id


def test_prepare_fails_the_round_when_the_rules_leave_too_little(round_settings, votes, serving_version):
    votes(4)
    round_settings.ROUND_MIN_TRAIN_PAIRS = 4
    round_settings.ROUND_HOLDOUT_FRACTION = 0.9
    training_round = rounds.round_start(trigger="api")
    with pytest.raises(runner.RoundStopped):
        rounds.round_prepare(training_round)
    training_round.refresh_from_db()
    assert training_round.status == TrainingRound.Status.FAILED
    assert "training pairs after the rules" in training_round.error
    assert training_round.active is None


def test_cancelling_a_queued_round_ends_it_at_once(round_settings, votes, serving_version):
    votes(4)
    training_round = rounds.round_start(trigger="api")
    rounds.round_cancel(training_round=training_round)
    training_round.refresh_from_db()
    assert training_round.status == TrainingRound.Status.CANCELLED and training_round.active is None
    rounds.round_run(training_round.pk)  # a task delivered late does nothing
    training_round.refresh_from_db()
    assert training_round.status == TrainingRound.Status.CANCELLED


def test_a_cancel_request_shows_on_the_polled_round_page(round_settings, votes, serving_version, client, staff):
    votes(4)
    training_round = rounds.round_start(trigger="api")
    training_round.advance(TrainingRound.Status.PREPARING)  # the training worker took it, as round_run does
    client.force_login(staff)
    poll = f"/rounds/{training_round.pk}/?revision={training_round.revision}"
    assert client.get(poll, headers={"HX-Request": "true"}).status_code == 204

    assert client.post(f"/rounds/{training_round.pk}/cancel/").status_code == 302

    training_round.refresh_from_db()
    assert training_round.cancel_requested and training_round.status == TrainingRound.Status.PREPARING
    changed = client.get(poll, headers={"HX-Request": "true"})  # the revision moved: the poll gets the new page
    assert changed.status_code == 200
    page = changed.content.decode()
    assert "Cancelling: the training worker stops the round" in page and "Cancel round" not in page


def test_cancelling_a_round_that_ended_meanwhile_is_refused_and_changes_nothing(round_settings, votes, serving_version):
    votes(4)
    training_round = rounds.round_start(trigger="api")
    training_round.advance(TrainingRound.Status.PREPARING)
    seen_by_staff = TrainingRound.objects.get(pk=training_round.pk)  # the page they clicked on: still preparing
    training_round.finish(TrainingRound.Status.FAILED, error="the trainer crashed")
    with pytest.raises(Conflict, match="it is failed"):
        rounds.round_cancel(training_round=seen_by_staff)
    training_round.refresh_from_db()
    assert training_round.status == TrainingRound.Status.FAILED and not training_round.cancel_requested


def test_every_write_to_a_round_moves_its_revision(round_settings, votes, serving_version):
    votes(4)
    training_round = rounds.round_start(trigger="api")
    seen = [training_round.revision]
    assert training_round.heartbeat()  # a sign of life only: the page would show nothing new, so the revision stays
    assert TrainingRound.objects.get(pk=training_round.pk).revision == seen[0]
    training_round.record_phases({"prepare": 1.5})
    training_round.record_phases({"train": 2.0})
    seen.append(training_round.revision)
    training_round.record(evaluation={"accuracy": 0.75})
    stale = TrainingRound.objects.get(pk=training_round.pk)
    training_round.record(evaluation={"accuracy": 0.75, "gate": {"promote": True}})
    stale.record_evaluation({"mean_tokens_after": 12.0})  # adds to what is saved, not to its stale copy
    seen.append(stale.revision)

    training_round.refresh_from_db()
    assert seen == sorted(set(seen)) and training_round.revision == seen[-1]
    assert training_round.phase_seconds == {"prepare": 1.5, "train": 2.0}
    assert training_round.evaluation == {"accuracy": 0.75, "gate": {"promote": True}, "mean_tokens_after": 12.0}


def test_a_failing_training_process_fails_the_round_with_its_log(round_settings, votes, serving_version, settings):
    votes(8)
    settings.TRAINING_LAUNCHER = "false"  # a launcher that fails at once, as a crashed trainer would
    serving_before = ModelVersion.objects.get(status="serving")
    training_round = rounds.round_start(trigger="api")

    rounds.round_run(training_round.pk)

    training_round.refresh_from_db()
    assert training_round.status == TrainingRound.Status.FAILED
    assert "`python -m training round` failed (exit 1)" in training_round.error
    assert training_round.active is None and training_round.result_version is None
    assert ModelVersion.objects.get(status="serving") == serving_before


def test_a_killed_training_process_fails_the_round(round_settings, votes, serving_version, settings, tmp_path):
    votes(8)
    killer = tmp_path / "killer.sh"
    killer.write_text("#!/bin/sh\necho about to die\nkill -9 $$\n")
    killer.chmod(0o755)
    settings.TRAINING_LAUNCHER = str(killer)
    training_round = rounds.round_start(trigger="api")

    rounds.round_run(training_round.pk)

    training_round.refresh_from_db()
    assert "killed by signal 9" in training_round.error
    assert "about to die" in training_round.log_tail


def test_metrics_are_read_line_by_line_as_they_are_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "lo')
    rows, offset = runner.metrics_read_new(path, 0)
    assert rows == [{"step": 1, "loss": 0.7}]
    with path.open("a") as file:
        file.write('ss": 0.6}\n')
    rows, offset = runner.metrics_read_new(path, offset)
    assert rows == [{"step": 2, "loss": 0.6}]
    assert runner.metrics_read_new(path, offset) == ([], offset)
    assert runner.metrics_read_new(Path(tmp_path / "missing"), 0) == ([], 0)


def test_automatic_rounds_start_after_enough_new_votes(loop, votes, serving_version):
    """The first round is run to its end (serving) by the worker's path; new votes count from its start."""
    loop.ROUND_AUTO_MIN_NEW_VOTES = 0
    assert tasks.rounds_start_when_due() is None  # off, with the fixture's 8 votes in
    loop.ROUND_AUTO_MIN_NEW_VOTES = 5
    first = tasks.rounds_start_when_due()
    assert TrainingRound.objects.get(pk=first).trigger == "automatic"
    assert tasks.rounds_start_when_due() is None  # one round at a time
    rounds.round_run(first)
    served = TrainingRound.objects.get(pk=first)
    assert served.status == TrainingRound.Status.SERVING and served.active is None
    assert ModelVersion.objects.serving() == served.result_version
    votes(4)
    assert tasks.rounds_start_when_due() is None  # only 4 new votes since the last round
    votes(1)
    second = tasks.rounds_start_when_due()
    assert second is not None and TrainingRound.objects.get(pk=second).parent_version == served.result_version


# --- simulated annotators -------------------------------------------------------------------------------------


def test_simulated_preferences():
    assert prefer_shorter("abc", "abcdefgh") == ("left", 3)
    assert prefer_shorter("abcdefghij", "abcdefgh") == ("right", 1)
    assert prefer_shorter("same", "size") == ("tie", None)
    assert prefer_longer("abc", "abcdefgh") == ("right", 3)
    assert prefer_keyword("Banana")("I like bananas", "apples") == ("left", 3)
    assert prefer_keyword("banana")("pear", "plum") == ("both_bad", None)
    assert preference_from_spec("keyword:kiwi")("kiwi!", "no") == ("left", 3)
    with pytest.raises(ValueError, match="--prefer"):
        preference_from_spec("keyword:")


def test_simulate_annotators_votes_through_the_services(make_pair, serving_version):
    from django.core.management import call_command

    for _ in range(5):
        make_pair(texts=("tiny", "a considerably longer answer"), required=2)
    call_command("simulate_annotators", "--prefer", "shorter", "--count", "7", "--annotators", "2")

    judgements = Judgement.objects.all()
    assert judgements.count() == 7
    assert {j.source for j in judgements} == {"simulated"}
    assert all(j.choice_on_screen == ("left" if j.a_on_left else "right") for j in judgements)  # "tiny" is A
    assert all(j.choice == "a" for j in judgements)
    assert judgements.values("annotator").distinct().count() == 2


def test_training_processes_get_the_cpu_thread_budget(round_settings, votes, serving_version, settings, tmp_path):
    votes(8)
    settings.TRAINING_CPU_THREADS = 3
    reporter = tmp_path / "reporter.sh"
    reporter.write_text('#!/bin/sh\necho "threads=$OMP_NUM_THREADS/$MKL_NUM_THREADS"\nexit 3\n')
    reporter.chmod(0o755)
    settings.TRAINING_LAUNCHER = str(reporter)
    training_round = rounds.round_start(trigger="api")

    rounds.round_run(training_round.pk)

    training_round.refresh_from_db()
    assert "threads=3/3" in training_round.log_tail
    assert "(exit 3)" in training_round.error


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_round_asks_the_worker_which_stops_the_training_process(
    round_settings, votes, serving_version, settings, tmp_path
):
    import threading

    votes(8)
    settings.ROUND_POLL_SECONDS = 0.1
    settings.TRAINING_LAUNCHER = _sleeping_trainer(tmp_path)
    training_round = rounds.round_start(trigger="api")
    runner = threading.Thread(target=rounds.round_run, args=(training_round.pk,))
    started = time.monotonic()
    runner.start()
    while not (tmp_path / "pid").exists() and time.monotonic() - started < 30:
        time.sleep(0.1)
    training_round.refresh_from_db()
    assert training_round.status == TrainingRound.Status.TRAINING and training_round.process_id

    rounds.round_cancel(training_round=training_round)  # a running round is only asked: its worker ends it
    runner.join(timeout=60)

    assert not runner.is_alive() and time.monotonic() - started < 60  # not the 120 s the process would sleep
    training_round.refresh_from_db()
    assert training_round.cancel_requested
    assert training_round.status == TrainingRound.Status.CANCELLED and training_round.active is None
    assert training_round.error == "cancelled by an admin" and training_round.process_id is None
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists()
    assert rounds.round_start(trigger="api").is_active  # it no longer blocks the next round


def test_a_round_leaves_out_gold_repeat_and_excluded_votes_and_says_so(
    round_settings, make_pair, django_user_model, serving_version, staff, settings
):
    import uuid

    from annotate.annotation import services
    from annotate.models import Campaign

    settings.REPEAT_MIN_VOTES_BETWEEN = 0
    careful, spammer = (django_user_model.objects.create_user(name) for name in ("careful", "spammer"))
    for number in range(12):
        make_pair(texts=(f"short {number}", f"a much longer answer {number}"))

    def vote_next(annotator):
        assignment = services.assignment_lease_next(annotator=annotator)
        services.judgement_record(annotator=annotator, pair_id=assignment.pair_id, choice="left", strength=2,
                                  rationale="", idempotency_key=uuid.uuid4())  # fmt: skip
        return assignment

    for _ in range(6):
        vote_next(careful)
    gold_pair = vote_next(careful).pair
    services.pair_mark_gold(pair=gold_pair, expected="a")
    Campaign.objects.update(repeat_rate=1.0)
    assert vote_next(careful).kind == "repeat"
    Campaign.objects.update(repeat_rate=0.0)
    for _ in range(3):
        vote_next(spammer)
    services.annotator_act(annotator=spammer, action="exclude", by=staff, reason="left every time")

    training_round = rounds.round_start(trigger="api")
    train_path, heldout_path = rounds.round_prepare(training_round)

    training_round.refresh_from_db()
    assert training_round.votes_read == 6  # the careful annotator's six ordinary votes
    assert training_round.votes_left_out == {
        "votes on gold pairs": 1,
        "repeat votes (self-consistency checks)": 1,
        "votes of excluded annotators": 3,
        "votes of the AI judge": 0,
    }
    rows = train_path.read_text().splitlines() + heldout_path.read_text().splitlines()
    assert len(rows) == 6


@pytest.mark.slow
def test_a_minimum_competence_leaves_out_a_random_annotator(round_settings, make_pair, serving_version):
    from django.core.management import call_command

    round_settings.ROUND_MIN_COMPETENCE = 0.5
    round_settings.ROUND_HOLDOUT_FRACTION = 0.0
    for number in range(24):
        texts = ("short", "a considerably longer answer")
        make_pair(texts=texts if number % 2 else texts[::-1], required=5)
    call_command("simulate_annotators", "--prefer", "shorter", "--count", "120", "--seed", "3",
                 "--profile", "careful*4", "--profile", "random", verbosity=0)  # fmt: skip
    random_votes = Judgement.objects.filter(annotator__username__contains="random").count()
    assert random_votes == 24

    training_round = rounds.round_start(trigger="api")
    rounds.round_prepare(training_round)

    training_round.refresh_from_db()
    assert training_round.votes_left_out["votes of annotators with competence below 0.5"] == random_votes
    assert training_round.votes_read == 96


def test_auto_label_smoothing_follows_the_votes_disagreement(
    round_settings, make_pair, django_user_model, serving_version
):
    round_settings.ROUND_LABEL_SMOOTHING_AUTO = True
    voters = [django_user_model.objects.create_user(f"voter{n}") for n in range(4)]
    for number in range(8):
        pair = make_pair(texts=(f"short {number}", f"a much longer answer {number}"), required=4)
        # Three of four votes agree on every pair: a quarter of the votes disagree with the majority.
        for voter, choice in zip(voters, ("a", "a", "a", "b"), strict=True):
            vote_as_annotator(voter, pair=pair, choice=choice, strength=1)

    training_round = rounds.round_start(trigger="api")
    rounds.round_prepare(training_round)

    training_round.refresh_from_db()
    assert training_round.config["label_smoothing"] == 0.25
    assert training_round.label_smoothing_basis.startswith("8 of 32 votes on 8 pairs")
    round_settings.ROUND_LABEL_SMOOTHING_AUTO = False
    rounds.round_cancel(training_round=training_round)
    training_round.refresh_from_db()
    assert training_round.status == TrainingRound.Status.CANCELLED and training_round.active is None
    with pytest.raises(Invalid) as refused:
        rounds.round_start(trigger="api", overrides={"label_smoothing": 0.1, "loss_type": "ipo"})
    assert "needs the sigmoid loss" in refused.value.errors["config"]


def _vote_every_pair(annotator, answer):
    """The annotator votes on every open pair through the services, for `answer(pair)`: ("a" or "b", strength)."""
    import uuid

    from annotate.annotation import services

    while (assignment := services.assignment_lease_next(annotator=annotator)) is not None:
        chosen, strength = answer(assignment.pair)
        side = "left" if (chosen == "a") == assignment.a_on_left else "right"
        services.judgement_record(annotator=annotator, pair_id=assignment.pair_id, choice=side, strength=strength,
                                  rationale="", idempotency_key=uuid.uuid4())  # fmt: skip


def _weights_by_number(train_path):
    """Each training row's weight, by the number in its chosen answer ("short 3" -> 3)."""
    rows = [json.loads(line) for line in train_path.read_text().splitlines()]
    return {int(row["chosen"][0]["content"].split()[-1]): row["weight"] for row in rows}


def test_strength_weighting_weighs_each_pair_by_its_votes_strength(
    round_settings, make_pair, django_user_model, serving_version, staff, client
):
    round_settings.ROUND_HOLDOUT_FRACTION = 0.0
    for number in range(8):
        make_pair(texts=(f"short {number}", f"a much longer answer {number}"), required=2)
    first, second = (django_user_model.objects.create_user(name) for name in ("first", "second"))
    # Both prefer the short answer: "much better" on even pairs, "slightly" on odd ones; the second voter says
    # "clearly" on the first four.
    _vote_every_pair(first, lambda pair: ("a", 3 if int(pair.completion_a.text.split()[-1]) % 2 == 0 else 1))
    _vote_every_pair(second, lambda pair: ("a", 2 if int(pair.completion_a.text.split()[-1]) < 4 else 3))

    training_round = rounds.round_start(trigger="api", overrides={"weighting": "strength"})
    train_path, _ = rounds.round_prepare(training_round)

    # Mean strengths: (3+2)/2, (1+2)/2, (3+3)/2, (1+3)/2 on pairs 0-3 (even, odd) and 4-7; their mean is 2.25.
    raw = {number: ((3 if number % 2 == 0 else 1) + (2 if number < 4 else 3)) / 2 for number in range(8)}
    expected = {number: round(value / 2.25, 6) for number, value in raw.items()}
    assert _weights_by_number(train_path) == pytest.approx(expected)
    training_round.refresh_from_db()
    assert training_round.config["weighting"] == "strength"
    assert training_round.weighting_basis == "strength, normalised to mean 1; min 0.67, max 1.33"
    client.force_login(staff)
    page = client.get(f"/rounds/{training_round.pk}/").content.decode()
    assert "strength, normalised to mean 1; min 0.67, max 1.33" in page
    assert "their mean strength divided by 3" in page  # the rule behind the weights


@pytest.mark.parametrize("weighting", ["competence", "strength+competence"])
def test_competence_weighting_trusts_the_pairs_of_competent_voters_more(
    round_settings, make_pair, django_user_model, serving_version, weighting
):
    from annotate.quality.preferences import annotator_competence

    round_settings.ROUND_HOLDOUT_FRACTION = 0.0
    for number in range(12):
        make_pair(texts=(f"short {number}", f"a much longer answer {number}"), required=3)
    careful = [django_user_model.objects.create_user(f"careful{n}") for n in range(2)]
    erratic = django_user_model.objects.create_user("erratic")
    for voter in careful:
        _vote_every_pair(voter, lambda pair: ("a", 2))
    # The erratic voter agrees with the careful ones on a third of the pairs only, and then "much better".
    _vote_every_pair(erratic, lambda pair: ("a", 3) if int(pair.completion_a.text.split()[-1]) % 3 == 0 else ("b", 1))
    scores = annotator_competence(Judgement.objects.all())
    assert scores[erratic.pk] < min(scores[voter.pk] for voter in careful)

    training_round = rounds.round_start(trigger="api", overrides={"weighting": weighting})
    train_path, _ = rounds.round_prepare(training_round)

    weights = _weights_by_number(train_path)
    careful_mean = sum(scores[voter.pk] for voter in careful) / 2
    with_erratic = (2 * careful_mean + scores[erratic.pk]) / 3
    raw = {number: (with_erratic if number % 3 == 0 else careful_mean) for number in range(12)}
    if weighting == "strength+competence":  # (2+2+3)/3 and 2, over 3
        raw = {number: value * ((7 / 3) if number % 3 == 0 else 2) / 3 for number, value in raw.items()}
    mean = sum(raw.values()) / len(raw)
    assert weights == pytest.approx({number: value / mean for number, value in raw.items()}, abs=1e-6)
    assert sum(weights.values()) / len(weights) == pytest.approx(1.0, abs=1e-5)
    training_round.refresh_from_db()
    name = "competence" if weighting == "competence" else "strength × competence"  # noqa: RUF001
    assert training_round.weighting_basis.startswith(f"{name}, normalised to mean 1; min ")


def test_without_weighting_the_training_file_carries_no_weights(round_settings, votes, serving_version):
    votes(8)
    training_round = rounds.round_start(trigger="api")

    train_path, _ = rounds.round_prepare(training_round)

    assert all("weight" not in json.loads(line) for line in train_path.read_text().splitlines())
    training_round.refresh_from_db()
    assert training_round.config["weighting"] == "none"
    assert training_round.weighting_basis == "none (every pair 1)"
