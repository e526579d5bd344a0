import uuid

import pytest
from django.test import Client
from django.urls import reverse

from annotate.models import Assignment, Judgement

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def client_for(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def leased_pair(client):
    """Open the page (which leases a pair) and return that assignment."""
    response = client.get(reverse("annotate"))
    assert response.status_code == 200
    return Assignment.objects.get(status=Assignment.Status.LEASED)


def test_anonymous_user_is_sent_to_login(client):
    response = client.get(reverse("annotate"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_logs_in(client, annotator):
    response = client.post(reverse("login"), {"username": "ann", "password": "ann-password-1"})
    assert response.status_code == 302
    assert client.get(reverse("annotate")).status_code == 200


def test_full_page_shows_prompt_and_both_answers(client_for, annotator, make_pair):
    make_pair(texts=("**Bold** answer", "Plain answer"))
    response = client_for(annotator).get(reverse("annotate"))

    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" in body and 'id="pair"' in body
    assert "Question number 1?" in body
    assert "<strong>Bold</strong> answer" in body and "Plain answer" in body
    assert "Done today" in body and 'hx-headers=\'{"X-CSRFToken"' in body


def test_htmx_request_gets_only_the_fragment(client_for, annotator, make_pair):
    make_pair()
    response = client_for(annotator).get(reverse("annotate"), **HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body
    assert body.lstrip().startswith('<section id="pair"')


def test_model_identity_is_not_shown(client_for, annotator, make_pair, serving_version):
    make_pair()
    body = client_for(annotator).get(reverse("annotate")).content.decode()
    assert serving_version.name not in body.replace("pairloop", "")


def test_earlier_turns_of_a_multi_turn_prompt_are_shown(client_for, annotator, make_pair):
    make_pair(
        messages=[
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Now a darker one."},
        ]
    )
    body = client_for(annotator).get(reverse("annotate")).content.decode()
    assert "Name a colour." in body and "Blue." in body and "Now a darker one." in body
    assert "Earlier in this conversation (2 messages)" in body


def test_model_output_cannot_inject_html(client_for, annotator, make_pair):
    make_pair(texts=("<script>alert('x')</script>", "[click](javascript:alert(1)) <img src=x onerror=alert(1)>"))
    body = client_for(annotator).get(reverse("annotate")).content.decode()
    assert "<script>alert" not in body
    assert "onerror=alert(1)>" not in body and "<img" not in body
    assert 'href="javascript:' not in body
    assert "&lt;script&gt;" in body  # shown as text, not dropped silently


def test_no_pair_ready_says_they_are_being_prepared(client_for, annotator, serving_version):
    response = client_for(annotator).get(reverse("annotate"))
    assert response.status_code == 200
    assert "Pairs are being prepared" in response.content.decode()
    assert 'hx-trigger="every 5s"' in response.content.decode()


def test_vote_without_javascript_redirects_to_the_next_pair(client_for, annotator, make_pair):
    make_pair(), make_pair()
    client = client_for(annotator)
    assignment = leased_pair(client)
    response = client.post(
        reverse("judge", args=[assignment.pair_id]),
        {"choice": "right", "strength": "3", "rationale": "more useful", "idempotency_key": str(uuid.uuid4())},
    )
    assert response.status_code == 302 and response["Location"] == reverse("annotate")
    judgement = Judgement.objects.get()
    assert judgement.choice == ("b" if assignment.a_on_left else "a")
    assert (judgement.strength, judgement.rationale, judgement.annotator) == (3, "more useful", annotator)
    next_assignment = leased_pair(client)
    assert next_assignment.pair_id != assignment.pair_id


def test_vote_with_htmx_swaps_in_the_next_pair(client_for, annotator, make_pair):
    make_pair(texts=("first a", "first b")), make_pair(texts=("second a", "second b"))
    client = client_for(annotator)
    assignment = leased_pair(client)
    response = client.post(
        reverse("judge", args=[assignment.pair_id]),
        {"choice": "tie", "strength": "2", "idempotency_key": str(uuid.uuid4())},
        **HTMX,
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body and "second a" in body and "Saved." in body
    assert Judgement.objects.get().strength is None  # strength only counts when one side wins
    assert 'data-testid="done-today">1<' in body


def test_double_submit_with_the_same_key_stores_one_vote(client_for, annotator, make_pair):
    make_pair(required=2)
    client = client_for(annotator)
    assignment = leased_pair(client)
    form = {"choice": "left", "strength": "1", "idempotency_key": str(uuid.uuid4())}
    first = client.post(reverse("judge", args=[assignment.pair_id]), form)
    second = client.post(reverse("judge", args=[assignment.pair_id]), form)
    assert first.status_code == second.status_code == 302
    assert Judgement.objects.count() == 1


def test_invalid_vote_is_a_400_with_the_reason_and_keeps_the_pair(client_for, annotator, make_pair):
    make_pair()
    client = client_for(annotator)
    assignment = leased_pair(client)
    response = client.post(
        reverse("judge", args=[assignment.pair_id]),
        {"choice": "sideways", "idempotency_key": str(uuid.uuid4())},
        **HTMX,
    )
    assert response.status_code == 400
    assert "choice: Select a valid choice" in response.content.decode()
    assert f"/pairs/{assignment.pair_id}/judge/" in response.content.decode()
    assert Judgement.objects.count() == 0


def test_bad_idempotency_key_is_a_400(client_for, annotator, make_pair):
    make_pair()
    client = client_for(annotator)
    assignment = leased_pair(client)
    response = client.post(reverse("judge", args=[assignment.pair_id]), {"choice": "tie", "idempotency_key": "x"})
    assert response.status_code == 400
    assert "idempotency_key" in response.content.decode()
    assert Judgement.objects.count() == 0


def test_vote_on_someone_elses_pair_is_a_409(client_for, annotator, other_annotator, make_pair):
    pair = make_pair()
    leased_pair(client_for(other_annotator))
    client = Client()
    client.force_login(annotator)
    response = client.post(reverse("judge", args=[pair.pk]), {"choice": "tie", "idempotency_key": str(uuid.uuid4())})
    assert response.status_code == 409
    assert "not leased to you" in response.content.decode()
    assert Judgement.objects.count() == 0


def test_skip_moves_on_and_the_pair_does_not_come_back(client_for, annotator, make_pair):
    make_pair(), make_pair()
    client = client_for(annotator)
    first = leased_pair(client)
    response = client.post(reverse("skip", args=[first.pair_id]), **HTMX)
    assert response.status_code == 200 and "Skipped." in response.content.decode()
    first.refresh_from_db()
    assert first.status == Assignment.Status.SKIPPED
    second = Assignment.objects.get(status=Assignment.Status.LEASED)
    assert second.pair_id != first.pair_id


def test_posts_need_a_csrf_token(annotator, make_pair):
    pair = make_pair()
    client = Client(enforce_csrf_checks=True)
    client.force_login(annotator)
    client.get(reverse("annotate"))
    response = client.post(reverse("judge", args=[pair.pk]), {"choice": "tie", "idempotency_key": str(uuid.uuid4())})
    assert response.status_code == 403
    assert Judgement.objects.count() == 0


def test_vote_needs_a_post(client_for, annotator, make_pair):
    pair = make_pair()
    assert client_for(annotator).get(reverse("judge", args=[pair.pk])).status_code == 405


def test_only_staff_reach_the_admin(client_for, annotator, staff):
    assert client_for(annotator).get("/admin/annotate/judgement/").status_code == 302
    staff.is_superuser = True
    staff.save()
    assert client_for(staff).get("/admin/annotate/judgement/").status_code == 200
