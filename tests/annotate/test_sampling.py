"""Sampling pairs into the buffer, through the real HTTP client against a local server that answers like vLLM;
and asking for a refill when the broker is down."""

import time

import pytest
from django.core.cache import cache
from django.db import connections

from annotate.models import Completion, Pair, Prompt
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerRefused
from tests.annotate.model_server_stub import ModelServerStub

TOO_LONG = "Summarise this. " + "word " * 200_000  # about 1 MB, as a careless import might bring in


@pytest.fixture
def stub(serving_version, settings):
    with ModelServerStub(served_models=(serving_version.name,)).running() as server:
        settings.VLLM_BASE_URL = server.url
        settings.VLLM_TIMEOUT = 10
        yield server


def user_prompt(content):
    return Prompt.objects.create(messages=[{"role": "user", "content": content}], source="test")


def good_prompts(count):
    return [user_prompt(f"Good question {number}?") for number in range(count)]


def fill_each_prompt_once(settings, count):
    """Good prompts that each have one pair already, so a newer prompt with none is the first one offered."""
    prompts = good_prompts(count)
    settings.PAIR_BUFFER_TARGET = count
    assert sampling.pairs_refill() == count
    assert Pair.objects.values("prompt").distinct().count() == count
    return prompts


@pytest.mark.django_db
def test_a_prompt_the_server_refuses_is_recorded_and_the_others_fill_the_buffer(stub, settings):
    fill_each_prompt_once(settings, 3)
    bad = user_prompt(TOO_LONG)  # imported later: it has no pair, so the least-sampled ordering offers it first
    settings.PAIR_BUFFER_TARGET = 6

    made = sampling.pairs_refill()

    assert made == 3
    assert Pair.objects.count() == 6
    assert not Pair.objects.filter(prompt=bad).exists()
    assert TOO_LONG in stub.prompts_sent()  # it was tried, and refused
    bad.refresh_from_db()
    assert bad.refusal_count == 1
    assert "maximum context length" in bad.last_refusal and "HTTP 400" in bad.last_refusal
    assert bad.last_refused_at is not None
    assert list(sampling.prompts_set_aside()) == []  # one refusal is not enough to set it aside
    assert Prompt.objects.filter(refusal_count__gt=0).count() == 1  # no good prompt was blamed


@pytest.mark.django_db
def test_a_prompt_refused_max_times_is_set_aside_and_no_longer_sent(stub, settings):
    settings.PROMPT_MAX_REFUSALS = 2
    fill_each_prompt_once(settings, 4)
    bad = user_prompt(TOO_LONG)
    for target in (5, 6):  # each refill offers the bad prompt first (it has the fewest pairs)
        settings.PAIR_BUFFER_TARGET = target
        assert sampling.pairs_refill() == 1  # a spare prompt stood in for it
    assert stub.prompts_sent().count(TOO_LONG) == 4  # two refills, two requests each
    bad.refresh_from_db()
    assert bad.refusal_count == 2
    assert list(sampling.prompts_set_aside()) == [bad]
    sent_before = len(stub.requests)

    settings.PAIR_BUFFER_TARGET = 7
    assert sampling.pairs_refill() == 1

    assert TOO_LONG not in stub.prompts_sent()[sent_before:]  # set aside: never sent again
    bad.refresh_from_db()
    assert bad.refusal_count == 2
    # Staff set the count back to 0 (in the admin) and it is offered again.
    Prompt.objects.filter(pk=bad.pk).update(refusal_count=0)
    assert list(sampling.prompts_set_aside()) == []
    settings.PAIR_BUFFER_TARGET = 8
    sampling.pairs_refill()
    assert TOO_LONG in stub.prompts_sent()[sent_before:]


@pytest.mark.django_db
def test_set_aside_prompts_are_shown_in_the_admin(stub, settings, django_user_model, client):
    settings.PROMPT_MAX_REFUSALS = 1
    fill_each_prompt_once(settings, 1)
    bad = user_prompt(TOO_LONG)
    settings.PAIR_BUFFER_TARGET = 2
    assert sampling.pairs_refill() == 1
    assert list(sampling.prompts_set_aside()) == [bad]
    admin = django_user_model.objects.create_superuser("root", password="root-password-1")
    client.force_login(admin)

    listing = client.get("/admin/annotate/prompt/")
    page = client.get(f"/admin/annotate/prompt/{bad.pk}/change/")

    assert listing.status_code == 200 and "Refusal count" in listing.text
    assert page.status_code == 200
    assert "maximum context length" in page.text
    assert 'name="refusal_count"' in page.text  # staff can set it back to 0


@pytest.mark.django_db
def test_one_failing_request_costs_only_its_own_pair(stub, settings):
    settings.PAIR_BUFFER_TARGET = 4
    prompts = good_prompts(4)
    stub.failing_prompts.add(prompts[0].last_user_message)

    made = sampling.pairs_refill()

    assert made == 3
    assert set(Pair.objects.values_list("prompt", flat=True)) == {prompt.pk for prompt in prompts[1:]}
    assert Prompt.objects.filter(refusal_count__gt=0).count() == 0  # a server error is not the prompt's fault


@pytest.mark.django_db
def test_an_unknown_model_fails_the_refill_without_blaming_any_prompt(stub, settings, serving_version):
    settings.PAIR_BUFFER_TARGET = 3
    good_prompts(3)
    stub.served_models.clear()  # vLLM restarted without the serving adapter, say: 404 for every request

    with pytest.raises(ModelServerRefused) as caught:
        sampling.pairs_refill()

    assert caught.value.status_code == 404
    assert Pair.objects.count() == 0
    assert Prompt.objects.filter(refusal_count__gt=0).count() == 0


@pytest.mark.django_db
def test_every_answer_records_the_sampling_it_was_made_with(stub, settings):
    settings.PAIR_BUFFER_TARGET = 2
    settings.SAMPLING_TEMPERATURE, settings.SAMPLING_TOP_P, settings.SAMPLING_MAX_TOKENS = 0.6, 0.9, 77
    good_prompts(2)

    sampling.pairs_refill()

    sent_by_seed = {body["seed"]: body for body in stub.requests}
    completions = list(Completion.objects.all())
    assert len(completions) == 4 and len(sent_by_seed) == 4
    for completion in completions:
        sent = sent_by_seed[completion.seed]
        assert completion.sampling == {key: sent[key] for key in ("temperature", "top_p", "max_tokens", "seed", "n")}
        assert completion.sampling["max_tokens"] == 77
        assert completion.prompt.messages == sent["messages"]
        assert completion.text == f"Answer to {completion.prompt.last_user_message[:40]!r} with seed {completion.seed}."


@pytest.mark.django_db(transaction=True)
def test_pairs_are_stored_as_soon_as_both_of_their_answers_are_in(stub, settings):
    """The slowest answer holds back only its own pair: while it is still being generated, the others are stored."""
    settings.PAIR_BUFFER_TARGET = 4
    settings.PAIR_GENERATION_CONCURRENCY = 4
    slow, *others = good_prompts(4)
    seen_while_slow = []

    def wait_for_the_others() -> None:
        # Runs in the stub's thread, on a database connection of its own: it sees only committed pairs.
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline and Pair.objects.count() < len(others):
                time.sleep(0.05)
            seen_while_slow.append(Pair.objects.count())
        finally:
            connections.close_all()

    stub.before_answer[slow.last_user_message] = wait_for_the_others

    assert sampling.pairs_refill() == 4
    assert seen_while_slow and min(seen_while_slow) == len(others)


# --- the broker down ---------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_enqueue_really_fails_with_the_broker_down(broker_down):
    from kombu.exceptions import OperationalError

    from annotate.tasks import pairs_refill

    with pytest.raises(OperationalError):
        pairs_refill.delay()


@pytest.mark.django_db(transaction=True)
def test_the_annotate_page_and_the_api_answer_with_the_broker_down(
    broker_down, serving_version, annotator, client, caplog
):
    from rest_framework.authtoken.models import Token

    client.force_login(annotator)
    token = Token.objects.create(user=annotator)

    page = client.get("/")
    api = client.get("/api/pairs/next/", headers={"authorization": f"Token {token.key}"})
    sampling.pairs_refill_request(throttle=False)  # the worker's start hook: same path, same outcome

    assert page.status_code == 200
    assert "being prepared" in page.text  # the waiting state
    assert api.status_code == 204
    assert "could not enqueue annotate.tasks.pairs_refill" in caplog.text
    assert "the broker (redis://127.0.0.1:" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_vote_that_asks_for_more_pairs_is_stored_with_the_broker_down(
    broker_down, make_pair, annotator, client, settings
):
    from rest_framework.authtoken.models import Token

    settings.PAIR_BUFFER_LOW_WATERMARK = 5
    pair = make_pair()
    token = Token.objects.create(user=annotator)
    headers = {"authorization": f"Token {token.key}"}
    leased = client.get("/api/pairs/next/", headers=headers)
    assert leased.status_code == 200

    vote = client.post(
        "/api/judgements/",
        {"pair": pair.pk, "choice": "left", "strength": 2, "idempotency_key": "6a2f41a8-2a55-4d8a-9b9b-2b1e6c2f0a11"},
        content_type="application/json",
        headers=headers,
    )

    assert vote.status_code == 201
    pair.refresh_from_db()
    assert pair.judgement_count == 1
    assert client.get("/api/pairs/next/", headers=headers).status_code == 204


@pytest.mark.django_db(transaction=True)
def test_the_worker_start_hook_does_not_raise_with_the_broker_down(broker_down, caplog):
    from annotate import tasks

    tasks._fill_the_buffer_at_start(sender=None)

    assert "could not enqueue annotate.tasks.pairs_refill" in caplog.text


@pytest.mark.django_db
def test_a_vote_asks_for_pairs_only_below_the_low_watermark(
    make_pair, annotator, settings, monkeypatch, django_capture_on_commit_callbacks
):
    import uuid

    from annotate.annotation import services

    settings.PAIR_BUFFER_LOW_WATERMARK = 3
    for _ in range(4):
        make_pair()
    requested = []
    monkeypatch.setattr(sampling, "enqueue", lambda task, *args: requested.append(task))  # the broker: the edge

    def vote() -> None:
        assignment = services.assignment_lease_next(annotator=annotator)
        cache.clear()  # the request throttle is not what this test is about
        with django_capture_on_commit_callbacks(execute=True):
            services.judgement_record(
                annotator=annotator,
                pair_id=assignment.pair_id,
                choice="tie",
                strength=None,
                rationale="",
                idempotency_key=uuid.uuid4(),
            )

    vote()  # 3 open pairs left: not below the watermark
    assert requested == []
    vote()  # 2 left
    assert requested == ["annotate.tasks.pairs_refill"]
