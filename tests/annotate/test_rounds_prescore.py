"""A trainer's idle time spent on the next round (annotate.rounds.prescore), with the real warm trainer and
`python -m training prescore` on a tiny random Llama: after it, the round reads every reference log-prob it needs
from the cache and scores none; after a promotion it scores again under the new serving version; new votes, a
round in progress and the settings that turn it off are each obeyed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from annotate.models import ModelVersion, TrainingRound
from annotate.rounds import prescore
from annotate.rounds import services as rounds

from .conftest import run_round
from .test_rounds_torchrun import ROUND, serving_version, tiny_model_dir  # noqa: F401
from .test_rounds_warm import warm_loop  # noqa: F401
from .voting import vote_as_annotator

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
Status = TrainingRound.Status


@pytest.fixture
def idle_loop(warm_loop):  # type: ignore[no-untyped-def]  # noqa: F811
    # The deployment's defaults are the tiny round's (ROUND_* settings): what prescoring scores for
    warm_loop.ROUND_CONFIG_DEFAULTS = {**warm_loop.ROUND_CONFIG_DEFAULTS, **ROUND, "max_steps": 2}
    warm_loop.ROUND_PRESCORE_SECONDS = 300.0
    return warm_loop


def report_of(training_round: TrainingRound) -> dict[str, Any]:
    return dict(json.loads((Path(training_round.directory) / "evaluation.json").read_text()))


def test_a_round_after_an_idle_trainer_prescored_scores_no_pair_again(idle_loop, make_pair, django_user_model):
    done = prescore.round_prescore()
    assert done.startswith("complete: ") and "0 already held" in done, done
    assert prescore.round_prescore() == "up to date"
    assert not list((Path(settings.ROUND_DIR) / "prescore").glob("worker-*"))  # each ask's files go with it

    first = run_round()
    assert first.status == Status.SERVING, first.error + first.log_tail
    report = report_of(first)
    assert report["training_reference"] == {"hits": first.train_pairs, "misses": 0}
    assert first.evaluation["training_reference"] == report["training_reference"]  # the round's record says so too
    assert (report["reference_cache"]["hits"], report["reference_cache"]["misses"]) == (first.heldout_pairs, 0)

    # Round 1 serves: the next round's reference is its adapter, under which nothing was scored yet
    assert ModelVersion.objects.serving() == first.result_version
    done = prescore.round_prescore()
    assert done.startswith(f"complete: {first.train_pairs} training pairs scored, 0 already held"), done
    # A new vote: the next round reads one more pair, which is all that is scored
    pair = make_pair(texts=("brief", "a far longer answer than the other"))
    vote_as_annotator(django_user_model.objects.create_user("late"), pair=pair, choice="a", strength=2)
    done = prescore.round_prescore()
    scored = re.fullmatch(
        r"complete: (\d+) training pairs scored, (\d+) already held; held out: (\d+) scored, (\d+) held", done
    )
    assert scored is not None, done
    assert int(scored[1]) + int(scored[3]) == 1, done  # its pair went to training or was held out

    second = run_round()
    assert second.status == Status.SERVING, second.error + second.log_tail
    assert report_of(second)["training_reference"] == {"hits": second.train_pairs, "misses": 0}


def test_without_prescoring_the_round_scores_its_own_pairs(idle_loop):
    first = run_round()
    assert first.status == Status.SERVING, first.error + first.log_tail
    assert report_of(first)["training_reference"] == {"hits": 0, "misses": first.train_pairs}


def test_nothing_is_scored_beside_a_round_in_progress_or_where_it_is_off(idle_loop):
    training_round = rounds.round_start(trigger="api")  # queued: a trainer takes it next
    assert prescore.round_prescore() == "a round is training: it scores its own pairs"
    rounds.round_cancel(training_round=training_round)

    idle_loop.ROUND_PRESCORE_SECONDS = 0
    assert prescore.round_prescore().startswith("off: ROUND_PRESCORE_SECONDS")
    idle_loop.ROUND_PRESCORE_SECONDS = 300.0
    idle_loop.TRAINING_WARM_START = False
    assert prescore.round_prescore().startswith("off: rounds start cold")
    assert not (Path(settings.ROUND_DIR) / rounds.REFERENCE_CACHE).exists()


def test_a_slice_that_scores_nothing_is_not_asked_again_until_the_votes_change(
    idle_loop, monkeypatch, make_pair, django_user_model
):
    asked: list[str] = []
    monkeypatch.setattr(prescore, "enqueue", lambda name, *args: asked.append(name))  # the queue's edge
    idle_loop.ROUND_PRESCORE_SECONDS = 0.001  # gone before the first pair
    assert prescore.round_prescore().startswith("no progress in 0.001 s: the round will score its own pairs")
    idle_loop.ROUND_PRESCORE_SECONDS = 300.0
    assert prescore.round_prescore() == "stalled on these votes: the round will score its own pairs"
    assert asked == []  # nothing burns the cores again and again

    pair = make_pair(texts=("brief", "a far longer answer than the other"))
    vote_as_annotator(django_user_model.objects.create_user("late"), pair=pair, choice="a", strength=2)
    assert prescore.round_prescore().startswith("complete: ")


def test_a_prescore_that_fails_says_where_to_look_and_is_not_asked_again_on_the_same_votes(idle_loop):
    # Every prompt, in the model's chat template, is longer than the shortest max_length: nothing left to train on
    idle_loop.ROUND_CONFIG_DEFAULTS = {**idle_loop.ROUND_CONFIG_DEFAULTS, "max_length": 32}
    done = prescore.round_prescore()
    assert done.startswith("`python -m training prescore` failed (exit 2); see "), done
    assert "nothing left to train on" in (Path(settings.ROUND_DIR) / "prescore" / "prescore.log").read_text()
    assert prescore.round_prescore() == "stalled on these votes: the round will score its own pairs"


def test_above_the_vote_limit_nothing_is_read(idle_loop):
    idle_loop.ROUND_PRESCORE_MAX_VOTES = 7  # the loop cast 8
    assert prescore.round_prescore() == "off above ROUND_PRESCORE_MAX_VOTES=7 votes (8): see there"
    assert not list((Path(settings.ROUND_DIR) / "prescore").glob("**/train.jsonl"))


def test_beat_asks_on_the_training_queue_and_an_ask_expires_with_the_next():
    entry = settings.CELERY_BEAT_SCHEDULE["round-prescore"]
    assert entry["task"] == "annotate.tasks.round_prescore"
    assert entry["options"]["expires"] == entry["schedule"] == settings.ROUND_PRESCORE_INTERVAL
    assert settings.CELERY_TASK_ROUTES["annotate.tasks.round_prescore"] == {"queue": settings.CELERY_TRAINING_QUEUE}
