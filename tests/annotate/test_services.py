import threading
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from annotate.annotation import services
from annotate.errors import Conflict, Invalid
from annotate.models import Assignment, Judgement, ModelVersion, Pair, Prompt
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerClient, ModelServerUnavailable, Sample

from .conftest import run_round

pytestmark = pytest.mark.django_db


def vote(user, pair_id, choice="left", strength=2, key=None, rationale=""):
    return services.judgement_record(
        annotator=user,
        pair_id=pair_id,
        choice=choice,
        strength=strength if choice in ("left", "right") else None,
        rationale=rationale,
        idempotency_key=key or uuid.uuid4(),
    )


# --- leases ---------------------------------------------------------------------------------------------------


def test_lease_gives_oldest_pair_and_records_sides(make_pair, annotator):
    first, _second = make_pair(), make_pair()

    assignment = services.assignment_lease_next(annotator=annotator)

    assert assignment.pair == first
    assert assignment.status == Assignment.Status.LEASED
    assert assignment.expires_at > timezone.now()
    left_expected = first.completion_a if assignment.a_on_left else first.completion_b
    assert assignment.left == left_expected


def test_sides_are_randomised_across_assignments(make_pair, annotator):
    for _ in range(40):
        make_pair()
    sides = set()
    for _ in range(40):
        assignment = services.assignment_lease_next(annotator=annotator)
        sides.add(assignment.a_on_left)
        services.assignment_skip(annotator=annotator, pair_id=assignment.pair_id)
    assert sides == {True, False}  # 40 fair coin flips all landing the same way: about 1 in 5e11


def test_asking_again_returns_the_same_leased_pair(make_pair, annotator):
    make_pair(), make_pair()
    first = services.assignment_lease_next(annotator=annotator)
    again = services.assignment_lease_next(annotator=annotator)
    assert again.pk == first.pk
    assert Assignment.objects.count() == 1


def test_a_leased_pair_is_not_given_to_another_annotator(make_pair, annotator, other_annotator):
    pair = make_pair()
    services.assignment_lease_next(annotator=annotator)
    assert services.assignment_lease_next(annotator=other_annotator) is None
    other = make_pair()
    assert services.assignment_lease_next(annotator=other_annotator).pair == other
    assert Assignment.objects.filter(pair=pair).count() == 1


def test_expired_lease_goes_to_the_next_annotator_and_the_first_can_no_longer_vote(
    make_pair, annotator, other_annotator
):
    pair = make_pair()
    first = services.assignment_lease_next(annotator=annotator)
    Assignment.objects.filter(pk=first.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    second = services.assignment_lease_next(annotator=other_annotator)

    assert second.pair == pair
    first.refresh_from_db()
    assert first.status == Assignment.Status.EXPIRED
    with pytest.raises(Conflict, match="expired"):
        vote(annotator, pair.pk)
    assert Judgement.objects.count() == 0


def test_expired_lease_that_nobody_took_still_accepts_the_vote(make_pair, annotator):
    pair = make_pair()
    assignment = services.assignment_lease_next(annotator=annotator)
    Assignment.objects.filter(pk=assignment.pk).update(expires_at=timezone.now() - timedelta(minutes=5))

    recorded = vote(annotator, pair.pk)

    assert recorded.created
    pair.refresh_from_db()
    assert pair.judgement_count == 1


def test_an_annotator_never_sees_a_pair_twice(make_pair, annotator):
    judged, skipped = make_pair(required=3), make_pair(required=3)
    services.assignment_lease_next(annotator=annotator)
    vote(annotator, judged.pk)
    assert services.assignment_lease_next(annotator=annotator).pair == skipped
    services.assignment_skip(annotator=annotator, pair_id=skipped.pk)

    assert services.assignment_lease_next(annotator=annotator) is None


def test_pair_stops_being_served_once_it_has_its_votes(make_pair, annotator, other_annotator, staff):
    pair = make_pair(required=2)
    services.assignment_lease_next(annotator=annotator)
    vote(annotator, pair.pk)
    assert services.assignment_lease_next(annotator=other_annotator).pair == pair
    vote(other_annotator, pair.pk, choice="tie")

    assert services.assignment_lease_next(annotator=staff) is None
    pair.refresh_from_db()
    assert pair.judgement_count == 2 and pair.is_complete


# --- votes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_on_left", "choice", "stored"),
    [(True, "left", "a"), (True, "right", "b"), (False, "left", "b"), (False, "right", "a"), (False, "tie", "tie")],
)
def test_choice_is_stored_relative_to_the_pair_not_the_screen(make_pair, annotator, a_on_left, choice, stored):
    pair = make_pair()
    assignment = services.assignment_lease_next(annotator=annotator)
    Assignment.objects.filter(pk=assignment.pk).update(a_on_left=a_on_left)

    judgement = vote(annotator, pair.pk, choice=choice, rationale="  concise  ").judgement

    judgement.refresh_from_db()
    assert judgement.choice == stored
    assert judgement.a_on_left is a_on_left
    assert judgement.choice_on_screen == choice
    assert judgement.rationale == "concise"
    assert judgement.source == Judgement.Source.HUMAN
    assert judgement.time_spent_ms is not None and judgement.time_spent_ms >= 0
    assert judgement.strength == (2 if choice in ("left", "right") else None)


def test_same_idempotency_key_returns_the_stored_vote_and_writes_nothing(make_pair, annotator):
    pair = make_pair(required=2)
    services.assignment_lease_next(annotator=annotator)
    key = uuid.uuid4()
    first = vote(annotator, pair.pk, key=key)
    replay = vote(annotator, pair.pk, choice="right", key=key)

    assert first.created and not replay.created
    assert replay.judgement.pk == first.judgement.pk
    assert Judgement.objects.count() == 1
    pair.refresh_from_db()
    assert pair.judgement_count == 1


def test_idempotency_key_reused_for_another_pair_is_refused(make_pair, annotator):
    first, second = make_pair(), make_pair()
    key = uuid.uuid4()
    services.assignment_lease_next(annotator=annotator)
    vote(annotator, first.pk, key=key)
    services.assignment_lease_next(annotator=annotator)
    with pytest.raises(Conflict, match="idempotency key"):
        vote(annotator, second.pk, key=key)
    assert Judgement.objects.count() == 1


def test_vote_on_a_pair_not_leased_to_you_is_refused(make_pair, annotator, other_annotator):
    pair = make_pair()
    services.assignment_lease_next(annotator=other_annotator)
    with pytest.raises(Conflict, match="not leased to you"):
        vote(annotator, pair.pk)
    assert Judgement.objects.count() == 0


def test_second_vote_with_a_new_key_is_refused(make_pair, annotator):
    pair = make_pair(required=2)
    services.assignment_lease_next(annotator=annotator)
    vote(annotator, pair.pk)
    with pytest.raises(Conflict, match="already judged"):
        vote(annotator, pair.pk)
    assert Judgement.objects.count() == 1


@pytest.mark.parametrize(
    ("choice", "strength", "field"),
    [("up", None, "choice"), ("left", None, "strength"), ("left", 7, "strength"), ("tie", 2, "strength")],
)
def test_invalid_vote_names_the_field_and_changes_nothing(make_pair, annotator, choice, strength, field):
    pair = make_pair()
    services.assignment_lease_next(annotator=annotator)
    with pytest.raises(Invalid) as caught:
        services.judgement_record(
            annotator=annotator,
            pair_id=pair.pk,
            choice=choice,
            strength=strength,
            rationale="",
            idempotency_key=uuid.uuid4(),
        )
    assert field in caught.value.errors
    assert Judgement.objects.count() == 0
    assert Assignment.objects.get().status == Assignment.Status.LEASED


def test_rationale_over_the_limit_is_refused(make_pair, annotator, settings):
    settings.RATIONALE_MAX_LENGTH = 10
    pair = make_pair()
    services.assignment_lease_next(annotator=annotator)
    with pytest.raises(Invalid) as caught:
        vote(annotator, pair.pk, rationale="x" * 11)
    assert "rationale" in caught.value.errors


def test_progress_counts_today_and_all(make_pair, annotator):
    for _ in range(3):
        make_pair()
    for _ in range(2):
        assignment = services.assignment_lease_next(annotator=annotator)
        vote(annotator, assignment.pair_id)
    Judgement.objects.filter(pk=Judgement.objects.first().pk).update(created_at=timezone.now() - timedelta(days=2))

    progress = services.annotator_progress(annotator=annotator)

    assert (progress.today, progress.total) == (1, 2)


# --- sampling -------------------------------------------------------------------------------------------------


class ScriptedModelServer(ModelServerClient):
    """Answers from a list instead of a model: for the buffer arithmetic only (the real server is tested in
    tests/integration)."""

    def __init__(self, answers_by_prompt=None):
        super().__init__("http://127.0.0.1:9")
        self.answers = answers_by_prompt or {}  # prompt text -> answers, taken in turn
        self.requests = []
        self._lock = threading.Lock()

    def chat(self, *, model, messages, params):
        with self._lock:  # requests arrive from several threads at once
            self.requests.append((model, messages, params))
            queued = self.answers.get(messages[-1]["content"])
            text = queued.pop(0) if queued else f"answer with seed {params.seed}"
        return Sample(text, "stop", 12, 4, 30, "cmpl-1", {"seed": params.seed, "temperature": params.temperature})


def test_refill_tops_the_buffer_up_to_its_target(serving_version, settings):
    settings.PAIR_BUFFER_TARGET = 3
    prompts = [Prompt.objects.create(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(5)]
    server = ScriptedModelServer()

    made = sampling.pairs_refill(client_factory=lambda: server)

    assert made == 3
    assert Pair.objects.count() == 3
    assert len({pair.prompt_id for pair in Pair.objects.all()}) == 3  # spread over prompts
    assert all(model == serving_version.name for model, _, _ in server.requests)
    seeds = [params.seed for _, _, params in server.requests]
    assert len(set(seeds)) == len(seeds) == 6  # every answer has its own recorded seed
    pair = Pair.objects.first()
    assert pair.sampled_from == serving_version
    assert pair.completion_a.seed != pair.completion_b.seed
    assert pair.completion_a.sampling["seed"] == pair.completion_a.seed
    assert {pair.prompt for pair in Pair.objects.all()} <= set(prompts)
    assert sampling.pairs_refill(client_factory=lambda: server) == 0  # full: nothing more is asked for


def test_identical_twin_answers_do_not_become_a_pair(serving_version, settings):
    settings.PAIR_BUFFER_TARGET = 2
    Prompt.objects.create(messages=[{"role": "user", "content": "q1"}])
    Prompt.objects.create(messages=[{"role": "user", "content": "q2"}])
    server = ScriptedModelServer({"q1": ["Same.", " Same. "], "q2": ["One", "Two"]})

    assert sampling.pairs_refill(client_factory=lambda: server) == 1
    pair = Pair.objects.get()
    assert {pair.completion_a.text, pair.completion_b.text} == {"One", "Two"}


def test_refill_against_a_server_that_is_down_raises_for_retry(serving_version, settings):
    settings.VLLM_BASE_URL = "http://127.0.0.1:9"  # the discard port: nothing listens
    Prompt.objects.create(messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(ModelServerUnavailable):
        sampling.pairs_refill()
    assert Pair.objects.count() == 0


def test_base_version_becomes_serving_only_when_nothing_serves(db):
    base = ModelVersion.objects.ensure_base(name="base", base_model="/m")
    assert base.status == ModelVersion.Status.SERVING
    other = ModelVersion.objects.ensure_base(name="other", base_model="/m")
    assert other.status == ModelVersion.Status.CANDIDATE
    assert ModelVersion.objects.serving() == base


def test_pairs_from_the_serving_version_are_served_first(loop, make_pair, annotator, serving_version):
    old_pair = make_pair()  # sampled from serving_version, which a round is about to replace
    newer = run_round().result_version  # trained, gated and served through the round's real path
    assert ModelVersion.objects.serving() == newer
    serving_version.refresh_from_db()
    assert serving_version.status == ModelVersion.Status.RETIRED
    new_pair = make_pair(version=newer)

    assert services.assignment_lease_next(annotator=annotator).pair == new_pair  # newer, yet served first
    vote(annotator, new_pair.pk)
    assert services.assignment_lease_next(annotator=annotator).pair == old_pair  # old pairs stay valid
