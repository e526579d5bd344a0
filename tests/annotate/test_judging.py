"""The AI judge against a stand-in judge (a real HTTP server in the test): it asks twice with the sides swapped,
records its verdicts with their lineage, is measured against gold and people, settles pairs only while that trust
holds (never a pair a person holds), stops routing by itself when its checks slip, and records every failure."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import override_settings

from annotate.annotation import services as annotation
from annotate.errors import Invalid
from annotate.judging import services as judging
from annotate.judging.selectors import judge_trust
from annotate.models import Campaign, Judge, Judgement, JudgeVerdict, Pair, WebhookDelivery
from annotate.quality.preferences import PreferenceRules, judgements_for_preferences, verdicts
from tests.annotate.judge_stand_in import stand_in_judge

pytestmark = pytest.mark.django_db(transaction=True)

CAMPAIGN = "judged"
GOOD, BAD = "This is the correct answer.", "This answer is wrong."


@pytest.fixture
def stand_in():
    with stand_in_judge() as server:
        yield server


@pytest.fixture
def pairs(make_pair):
    """`make(n, gold=False)`: n pairs of the campaign, the correct answer on A or B in turn."""

    def make(count: int, *, gold: bool = False) -> list[Pair]:
        made = []
        for index in range(count):
            texts = (GOOD, BAD) if index % 2 == 0 else (BAD, GOOD)
            pair = make_pair(texts=texts, prompt_set=CAMPAIGN)
            if gold:
                pair = annotation.pair_mark_gold(pair=pair, expected="a" if texts[0] == GOOD else "b")
            made.append(pair)
        return made

    return make


def vote_correctly(annotator: Any, *, contrary: bool = False) -> Judgement:
    """Lease the next pair as the annotate page does and vote for the correct answer (or the other one)."""
    assignment = annotation.assignment_lease_next(annotator=annotator)
    assert assignment is not None
    left_is_good = assignment.left.text == GOOD
    side = "left" if left_is_good != contrary else "right"
    return annotation.judgement_record(
        annotator=annotator,
        pair_id=assignment.pair_id,
        choice=side,
        strength=2,
        rationale="",
        idempotency_key=uuid.uuid4(),
    ).judgement


def configure(url: str, **overrides: Any) -> Judge:
    values = {
        "url": url,
        "model": "stand-in",
        "api_key": "sk-test-secret-123456",
        "enabled": True,
        "allow_private": True,
        "routing_allowed": True,
        "min_evidence": 4,
        "min_gold_accuracy": 0.8,
        "min_kappa": 0.6,
        "min_confidence": 0.8,
        "check_share": 0.0,
        **overrides,
    }
    return judging.judge_configure(campaign=Campaign.objects.get(name=CAMPAIGN), values=values, app_hosts=[])


def people_vote_on_all(annotator: Any, count: int, *, contrary: bool = False) -> None:
    for _ in range(count):
        vote_correctly(annotator, contrary=contrary)


def test_a_judge_that_agrees_with_gold_earns_routing_and_saves_peoples_votes(stand_in, pairs, annotator, staff):
    pairs(4, gold=True)
    pairs(4)
    people_vote_on_all(annotator, 4)
    untouched = pairs(6)
    judge = configure(stand_in.url)
    assert judge.routing_active is False  # allowed, not yet earned

    recorded = judging.judge_run(judge_id=judge.pk, limit=50)

    assert recorded == 14
    judge.refresh_from_db()
    assert judge.routing_active is True
    # Asked twice per pair, the sides swapped, with its key as a bearer token.
    assert len(stand_in.requests) == 28
    assert stand_in.headers[0]["authorization"] == "Bearer sk-test-secret-123456"
    trust = judge_trust(judge=judge)
    assert trust.gold == 4 and trust.gold_accuracy == 1.0
    assert trust.compared == 4 and trust.kappa == pytest.approx(1.0) and trust.flip_rate == 0.0
    # The untouched pairs were settled by the judge: a judge vote each, their places filled, nobody is dealt them.
    assert trust.settled == 6 and trust.votes_saved == 6
    for pair in untouched:
        pair.refresh_from_db()
        assert pair.is_complete
        vote = pair.judgements.get()
        assert vote.source == Judgement.Source.JUDGE and vote.annotator is None
        assert vote.choice == ("a" if pair.completion_a.text == GOOD else "b")
        assert "stand-in" in vote.source_detail and "prompt v1" in vote.source_detail
    assert annotation.assignment_lease_next(annotator=staff) is None or (
        annotation.assignment_lease_next(annotator=staff).pair.gold_choice != ""
    )
    verdict = JudgeVerdict.objects.get(pair=untouched[0])
    assert verdict.endpoint == stand_in.url and verdict.model == "stand-in" and verdict.prompt_version == "v1"
    assert '"choice"' in verdict.first_reply and verdict.consistent is True and verdict.confidence == 0.95

    # Judge votes train only by the rule: left out by default, in when included.
    default = list(verdicts(judgements_for_preferences(rules=PreferenceRules()), PreferenceRules()))
    assert {v.pair.pk for v in default}.isdisjoint({p.pk for p in untouched})
    included = PreferenceRules(judge="in")
    with_judge = list(verdicts(judgements_for_preferences(rules=included), included))
    assert {p.pk for p in untouched} <= {v.pair.pk for v in with_judge}

    # Running again asks nothing new: every pair has its verdict under this prompt version.
    assert judging.judge_run(judge_id=judge.pk, limit=50) == 0


def test_a_judge_that_flips_with_the_order_is_unsure_and_never_earns_routing(stand_in, pairs, annotator):
    stand_in.mode = "first"  # always the first answer shown: it flips when the sides are swapped
    pairs(4, gold=True)
    pairs(4)
    people_vote_on_all(annotator, 4)
    untouched = pairs(3)
    judge = configure(stand_in.url)

    judging.judge_run(judge_id=judge.pk, limit=50)

    judge.refresh_from_db()
    assert judge.routing_active is False and judge.routing_allowed is True
    trust = judge_trust(judge=judge)
    assert trust.flip_rate == 1.0 and trust.gold_accuracy == 0.0 and trust.settled == 0
    assert set(JudgeVerdict.objects.values_list("choice", flat=True)) == {"unsure"}
    assert all(Pair.objects.get(pk=pair.pk).judgement_count == 0 for pair in untouched)


def test_routing_stops_by_itself_when_the_checks_slip_and_staff_are_told(stand_in, pairs, annotator, staff):
    from annotate.hooks import services as hooks

    hooks.webhook_endpoint_create(
        url="http://127.0.0.1:9/hook", event_names=["judge.routing_stopped"], allow_private=True, created_by=staff
    )
    pairs(4, gold=True)
    pairs(4)
    people_vote_on_all(annotator, 4)
    judge = configure(stand_in.url, check_share=1.0)  # every pair it could settle goes to people as a check
    judging.judge_run(judge_id=judge.pk, limit=50)
    judge.refresh_from_db()
    assert judge.routing_active is True

    checks = pairs(6)
    judging.judge_run(judge_id=judge.pk, limit=50)
    assert JudgeVerdict.objects.filter(pair__in=checks, is_check=True, settled=False).count() == 6
    people_vote_on_all(annotator, 6, contrary=True)  # the people disagree with it on every check

    judging.judge_run(judge_id=judge.pk, limit=50)  # its next review reads the checks

    judge.refresh_from_db()
    assert judge.routing_active is False and judge.routing_allowed is False
    assert "checked pairs" in judge.routing_stopped_reason or "kappa" in judge.routing_stopped_reason
    delivery = WebhookDelivery.objects.get(event="judge.routing_stopped")
    assert delivery.payload["data"]["judge"] == judge.pk
    # Staff allow it again: the reason is cleared, and it has to earn routing again.
    judge = configure(stand_in.url, check_share=1.0)
    assert judge.routing_stopped_reason == "" and judge.routing_active is False


def test_a_pair_a_person_holds_is_never_settled_by_the_judge(stand_in, pairs, annotator, other_annotator):
    pairs(4, gold=True)
    pairs(4)
    people_vote_on_all(annotator, 4)
    judge = configure(stand_in.url)
    judging.judge_run(judge_id=judge.pk, limit=50)
    held = pairs(1)[0]
    assignment = annotation.assignment_lease_next(annotator=other_annotator)
    assert assignment is not None and assignment.pair_id == held.pk

    judging.judge_run(judge_id=judge.pk, limit=50)

    held.refresh_from_db()
    assert held.judgement_count == 0 and held.lease_count == 1
    assert not held.judgements.exists()
    assert JudgeVerdict.objects.get(pair=held).settled is False
    vote_correctly(other_annotator)  # their vote still counts: nothing over-voted
    held.refresh_from_db()
    assert held.judgement_count == 1 == held.judgements_required


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("garbage", "no choice in the reply"),
        ("huge", "reply larger than"),
        ("status", "answered 500"),
        ("hang", "timed out"),
    ],
)
def test_a_judge_that_fails_is_a_recorded_failure_and_nothing_is_stuck(stand_in, pairs, mode, error):
    stand_in.mode = mode
    made = pairs(2)
    judge = configure(stand_in.url)
    with override_settings(JUDGE_READ_TIMEOUT=0.5, JUDGE_TOTAL_SECONDS=1.0):
        assert judging.judge_run(judge_id=judge.pk, limit=10) == 2
    for verdict in JudgeVerdict.objects.filter(pair__in=made):
        assert verdict.status == JudgeVerdict.Status.FAILED
        assert error in verdict.error
        assert verdict.holder == "" and len(verdict.first_reply) <= 4000
        assert verdict.second_reply == ""  # not asked the other way round after a failure
    assert not Judgement.objects.filter(source=Judgement.Source.JUDGE).exists()
    assert judge_trust(judge=judge).failures == 2


def test_a_verdict_whose_worker_died_is_taken_over_once_its_lease_ran_out(stand_in, pairs):
    from django.utils import timezone

    made = pairs(1)
    judge = configure(stand_in.url, enabled=False)
    JudgeVerdict.objects.create(
        judge=judge,
        pair=made[0],
        prompt_version="v1",
        endpoint=judge.url,
        model=judge.model,
        holder="elsewhere:1:dead",
        lease_expires_at=timezone.now() - timezone.timedelta(seconds=1),
    )
    Judge.objects.filter(pk=judge.pk).update(enabled=True)

    assert judging.judge_run(judge_id=judge.pk, limit=10) == 1

    verdict = JudgeVerdict.objects.get(pair=made[0])
    assert verdict.status == JudgeVerdict.Status.DONE and verdict.holder == ""


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"url": "http://127.0.0.1:8100/v1", "allow_private": False}, "url", "private"),
        ({"url": "http://10.1.2.3/v1", "allow_private": False}, "url", "private"),
        ({"url": "ftp://example.com/v1"}, "url", "http"),
        ({"url": "http://user:pw@example.com/v1"}, "url", "password"),
        ({"prompt_template": "Pick one: {first} or {second}"}, "prompt_template", "missing fields: prompt"),
        ({"prompt_template": "{prompt} {first} {second} {secret_key}"}, "prompt_template", "unknown fields"),
        ({"prompt_template": "{prompt} {first} {second} {"}, "prompt_template", "not a valid template"),
        ({"prompt_version": "v 1; drop"}, "prompt_version", "letters"),
        ({"model": ""}, "model", "name the model"),
    ],
)
def test_bad_judge_settings_are_refused_and_change_nothing(pairs, overrides, field, words):
    pairs(1)
    values = dict(overrides)
    with pytest.raises(Invalid) as refused:
        configure(values.pop("url", "http://127.0.0.1:8100/v1"), **values)
    assert words in str(refused.value.errors[field])
    assert not Judge.objects.exists()


def test_a_judge_url_pointing_at_the_app_itself_is_refused(pairs):
    pairs(1)
    campaign = Campaign.objects.get(name=CAMPAIGN)
    values = {"url": "http://127.0.0.1:8611/v1", "model": "m", "allow_private": True}
    with pytest.raises(Invalid) as refused:
        judging.judge_configure(campaign=campaign, values=values, app_hosts=["127.0.0.1:8611"])
    assert "this app itself" in str(refused.value.errors["url"])
    with override_settings(ALLOWED_HOSTS=["pairloop.example.org"]), pytest.raises(Invalid) as refused:
        judging.judge_configure(
            campaign=campaign, values={**values, "url": "https://pairloop.example.org/v1"}, app_hosts=[]
        )
    assert "answers to" in str(refused.value.errors["url"])
    assert not Judge.objects.exists()


def test_a_failed_verdict_is_asked_again_later_up_to_the_attempts_allowed(stand_in, pairs, settings):
    settings.JUDGE_RETRY_SECONDS, settings.JUDGE_MAX_ATTEMPTS = 0, 2
    made = pairs(1)
    stand_in.mode = "status"  # the judge is down
    judge = configure(stand_in.url)
    judging.judge_run(judge_id=judge.pk, limit=5)
    assert JudgeVerdict.objects.get(pair=made[0]).status == JudgeVerdict.Status.FAILED

    stand_in.mode = "gold"  # back up: the next run asks again
    assert judging.judge_run(judge_id=judge.pk, limit=5) == 1

    verdict = JudgeVerdict.objects.get(pair=made[0])
    assert verdict.status == JudgeVerdict.Status.DONE and verdict.attempts == 2 and verdict.error == ""
    other = pairs(1)[0]
    stand_in.mode = "status"
    judging.judge_run(judge_id=judge.pk, limit=5)
    judging.judge_run(judge_id=judge.pk, limit=5)
    assert judging.judge_run(judge_id=judge.pk, limit=5) == 0  # two asks used: left failed
    assert JudgeVerdict.objects.get(pair=other).attempts == 2


@pytest.fixture
def settled(stand_in, pairs, annotator):
    """4 gold pairs, 4 pairs people voted on, 3 pairs the judge settled alone; the judge."""
    pairs(4, gold=True)
    pairs(4)
    people_vote_on_all(annotator, 4)
    pairs(3)
    judge = configure(stand_in.url)
    judging.judge_run(judge_id=judge.pk, limit=50)
    assert judge_trust(judge=judge).settled == 3
    return judge


def test_exports_mark_judge_votes_and_the_card_says_how_many(settled, staff, settings, tmp_path):
    import json

    from annotate.data import exports
    from annotate.data.exports import ExportFilters

    settings.EXPORT_DIR = tmp_path / "exports"

    def export(judge: str) -> tuple[list[dict[str, Any]], str]:
        filters = ExportFilters(rules=PreferenceRules(judge=judge))  # type: ignore[arg-type]
        done = exports.export_run(
            export=exports.export_create(
                created_by=staff, dataset_format="trl-preference", file_format="jsonl", filters=filters
            )
        )
        files = exports.export_files(done)
        rows = [json.loads(line) for line in files["data"].read_text().splitlines()]
        return rows, files["card"].read_text()

    rows, card = export("out")
    assert len(rows) == 4 and {row["source"] for row in rows} == {"human"}
    assert "votes of the AI judge" in card and "left out" in card
    rows, card = export("in")
    assert len(rows) == 7 and sum(row["source"] == "judge" for row in rows) == 3
    assert "human: 4, judge: 3" in card, card
    assert all("weight" not in row for row in rows)
    # weight: the same rows, each judge row weighing the judge weight (0.5 by default) against a person's 1.
    rows, card = export("weight")
    assert len(rows) == 7
    assert sorted(row["weight"] for row in rows) == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert {row["weight"] for row in rows if row["source"] == "judge"} == {0.5}
    assert "weighted 0.5 (a person's vote: 1)" in card, card
