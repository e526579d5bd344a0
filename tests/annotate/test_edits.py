"""Writing a better answer with a vote (annotate/annotation/edits.py): through the annotate page's form, the API and
the staff pair page, as annotators and staff reach each state."""

import time
import uuid

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from annotate.annotation import edits, services
from annotate.models import Assignment, Campaign, HumanAnswer, Judgement
from tests.annotate.conftest import run_in_threads

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def edits_on(staff, make_pair):
    """Make the default campaign (a first pair makes it) take written answers, as staff do through the API."""

    def turn_on(name="default"):
        campaign = Campaign.objects.get(name=name)
        api = APIClient()
        api.force_authenticate(staff)
        response = api.patch(reverse("api-campaign", args=[campaign.pk]), {"edits_allowed": True}, format="json")
        assert response.status_code == 200 and response.json()["edits_allowed"] is True

    return turn_on


def lease(client):
    client.get(reverse("annotate"))
    return Assignment.objects.filter(status=Assignment.Status.LEASED).order_by("-id").first()


def side_of(assignment, completion):
    return "left" if (completion == assignment.pair.completion_a) == assignment.a_on_left else "right"


def post_vote(client, assignment, **fields):
    form = {"choice": "left", "strength": "2", "idempotency_key": str(uuid.uuid4()), **fields}
    return client.post(reverse("judge", args=[assignment.pair_id]), form)


def record(annotator, assignment, key, edit):
    """A vote of "both bad" with an answer written afresh, through the service."""
    return edits.judgement_record_with_edit(
        annotator=annotator,
        pair_id=assignment.pair_id,
        choice="both_bad",
        strength=None,
        rationale="",
        idempotency_key=key,
        edit=edit,
    )


def nothing_stored():
    return not Judgement.objects.exists() and not HumanAnswer.objects.exists()


def test_diff_size_counts_the_characters_of_the_words_added_and_removed():
    assert edits.diff_size("The cat sat.", "The cat sat.") == edits.DiffSize(0, 0)
    assert edits.diff_size("The cat sat.", "The black cat sat.") == edits.DiffSize(5, 0)  # white space not counted
    assert edits.diff_size("The cat sat.", "The dog sat.") == edits.DiffSize(3, 3)
    assert edits.diff_size("", "Written afresh!") == edits.DiffSize(14, 0)
    assert edits.diff_size("Gone entirely", "") == edits.DiffSize(0, 12)
    assert edits.diff_size("a b c", "a  b\n\nc") == edits.DiffSize(0, 0)  # only white space changed


def test_diff_size_stays_fast_on_long_repetitive_text():
    """Without difflib's junk heuristic 10,000 repeated words took 46 s; the long-text path takes milliseconds."""
    started = time.monotonic()
    size = edits.diff_size("a " * 10_000, "a " * 5_000 + "b " + "a " * 4_999)
    assert time.monotonic() - started < 2 and size.added >= 1 and size.removed >= 1


def test_the_page_offers_the_box_only_where_the_campaign_takes_written_answers(client, annotator, make_pair, edits_on):
    make_pair(texts=("Paris is in France.", "It is Lyon."))
    client.force_login(annotator)
    assert 'data-testid="edit"' not in client.get(reverse("annotate")).content.decode()
    edits_on()
    body = client.get(reverse("annotate")).content.decode()
    assert 'data-testid="edit"' in body and 'name="edit"' in body
    assert 'id="edit-source-left"' in body and "Paris is in France." in body


def test_an_edit_of_the_chosen_answer_is_stored_with_its_vote(client, annotator, make_pair, edits_on):
    pair = make_pair(texts=("Paris is in France.", "It is Lyon."))
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    response = post_vote(
        client,
        assignment,
        choice=side_of(assignment, pair.completion_a),
        edit="Paris is the capital of France.\r\n",
    )
    assert response.status_code == 302
    judgement = Judgement.objects.get()
    written = HumanAnswer.objects.get()
    assert (written.judgement, written.author, written.started_from) == (judgement, annotator, pair.completion_a)
    assert written.text == "Paris is the capital of France."
    assert (written.chars_added, written.chars_removed) == (12, 2)  # "in" became "the capital of"
    assert written.status == HumanAnswer.Status.ACCEPTED
    assert 0 < written.changed_share < 1


def test_both_bad_with_an_answer_written_afresh(client, annotator, make_pair, edits_on):
    make_pair()
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    assert post_vote(client, assignment, choice="both_bad", edit="A better one.").status_code == 302
    written = HumanAnswer.objects.get()
    assert written.started_from is None and (written.chars_added, written.chars_removed) == (11, 0)
    assert written.judgement.choice == Judgement.Choice.BOTH_BAD


def test_the_side_the_page_started_from_is_kept_even_when_the_vote_went_the_other_way(
    client, annotator, make_pair, edits_on
):
    pair = make_pair(texts=("first answer", "second answer"))
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    started = side_of(assignment, pair.completion_b)
    voted = "left" if started == "right" else "right"
    post_vote(client, assignment, choice=voted, edit="second answer, better", edit_from=started)
    assert HumanAnswer.objects.get().started_from == pair.completion_b


def test_an_edit_that_changes_nothing_is_no_edit(client, annotator, make_pair, edits_on):
    pair = make_pair(texts=("Same text.", "Other."))
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    post_vote(client, assignment, choice=side_of(assignment, pair.completion_a), edit="  Same text.\n")
    assert Judgement.objects.count() == 1 and not HumanAnswer.objects.exists()


@pytest.mark.parametrize(
    ("edit", "reason"),
    [("x" * 2 * 1024 * 1024, "at most"), ("bad \x00 byte", "null characters")],
    ids=["2MB", "NUL"],
)
def test_an_edit_too_long_or_with_nul_is_a_400_that_stores_nothing(
    client, annotator, make_pair, edits_on, edit, reason
):
    make_pair()
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    response = post_vote(client, assignment, edit=edit, **HTMX)
    assert response.status_code == 400 and reason in response.content.decode().lower()
    assert nothing_stored()
    assert services.assignment_current(annotator=annotator).pk == assignment.pk  # the pair is still theirs


def test_the_service_refuses_nul_and_length_too(make_pair, annotator, edits_on, settings):
    settings.EDIT_MAX_LENGTH = 10
    make_pair()
    edits_on()
    assignment = services.assignment_lease_next(annotator=annotator)
    for text in ("x" * 11, "a\x00b"):
        with pytest.raises(edits.Invalid):
            record(annotator, assignment, uuid.uuid4(), text)
    assert nothing_stored()


def test_an_edit_on_a_campaign_that_takes_none_is_a_400_and_the_vote_is_not_stored_either(client, annotator, make_pair):
    make_pair()
    client.force_login(annotator)
    assignment = lease(client)
    response = post_vote(client, assignment, edit="my answer", **HTMX)
    assert response.status_code == 400 and "does not take written answers" in response.content.decode()
    assert nothing_stored()
    assert 'data-testid="edit"' not in response.content.decode()  # no box to put the draft back in
    # The same key again without the edit is a vote like any other.
    assert post_vote(client, assignment).status_code == 302 and Judgement.objects.count() == 1


def test_an_edit_on_a_pair_not_shown_to_them_is_a_409_that_stores_nothing(
    client, annotator, other_annotator, make_pair, edits_on
):
    make_pair(required=1), make_pair(required=1)
    edits_on()
    client.force_login(other_annotator)
    theirs = lease(client)
    client.force_login(annotator)
    response = client.post(
        reverse("judge", args=[theirs.pair_id]),
        {"choice": "both_bad", "idempotency_key": str(uuid.uuid4()), "edit": "sneaky"},
        **HTMX,
    )
    assert response.status_code == 409 and nothing_stored()


def test_a_resend_with_the_same_key_stores_nothing_twice(client, annotator, make_pair, edits_on):
    make_pair(required=2)
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    form = {"choice": "both_bad", "idempotency_key": str(uuid.uuid4()), "edit": "written once"}
    first = client.post(reverse("judge", args=[assignment.pair_id]), form)
    second = client.post(reverse("judge", args=[assignment.pair_id]), {**form, "edit": "changed in the resend"})
    assert first.status_code == second.status_code == 302
    assert Judgement.objects.count() == 1 and HumanAnswer.objects.get().text == "written once"


@pytest.mark.django_db(transaction=True)
def test_the_same_submission_sent_at_once_stores_one_vote_and_one_edit(annotator, make_pair, edits_on):
    make_pair(required=2)
    edits_on()
    assignment = services.assignment_lease_next(annotator=annotator)
    key = uuid.uuid4()
    results = []

    def send():
        results.append(record(annotator, assignment, key, "one answer"))

    run_in_threads([send] * 4)
    assert len(results) == 4 and sum(result.created for result in results) == 1
    assert Judgement.objects.count() == 1 and HumanAnswer.objects.count() == 1


def test_the_api_takes_an_edit_and_answers_a_resend_with_it(annotator, make_pair, edits_on):
    pair = make_pair()
    edits_on()
    api = APIClient()
    api.force_authenticate(annotator)
    leased = api.get(reverse("api-pairs-next")).json()
    assert leased["pair"] == pair.pk
    body = {
        "pair": pair.pk,
        "choice": "left",
        "strength": 3,
        "idempotency_key": str(uuid.uuid4()),
        "edit": f"{leased['left']['text']} And more.",
    }
    first = api.post(reverse("api-judgements"), body, format="json")
    second = api.post(reverse("api-judgements"), body, format="json")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["edit"] == second.json()["edit"]
    assert first.json()["edit"]["chars_added"] == len("Andmore.") and first.json()["edit"]["status"] == "accepted"
    assert HumanAnswer.objects.count() == 1


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"edit": "x" * 2 * 1024 * 1024}, 400),
        ({"edit": "a\x00b"}, 400),
        ({"edit": "fine", "edit_from": "middle"}, 400),
        ({"edit": ["a", "list"]}, 400),
    ],
    ids=["2MB", "NUL", "bad-side", "not-text"],
)
def test_the_api_refuses_bad_edits_and_stores_nothing(annotator, make_pair, edits_on, fields, status):
    pair = make_pair()
    edits_on()
    api = APIClient()
    api.force_authenticate(annotator)
    api.get(reverse("api-pairs-next"))
    body = {"pair": pair.pk, "choice": "tie", "idempotency_key": str(uuid.uuid4()), **fields}
    response = api.post(reverse("api-judgements"), body, format="json")
    assert response.status_code == status, response.content[:300]
    assert nothing_stored()


def test_undoing_the_vote_takes_its_edit_with_it(client, annotator, make_pair, edits_on):
    make_pair()
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    post_vote(client, assignment, choice="both_bad", edit="mine")
    judgement = Judgement.objects.get()
    page = client.post(reverse("undo"), {"judgement": judgement.pk}, **HTMX).content.decode()
    assert nothing_stored()
    # The pair comes back with the answer they wrote in the box, open, to send again (or change).
    assert '<details class="edit-answer" data-testid="edit" open>' in page
    assert 'placeholder="Your answer">mine</textarea>' in page
    assert post_vote(client, assignment, choice="both_bad", edit="mine, again").status_code == 302
    assert HumanAnswer.objects.get().text == "mine, again"


def written_answer(client, annotator, make_pair, edits_on, text="A <b>better</b> answer."):
    make_pair()
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    post_vote(client, assignment, choice="both_bad", edit=text)
    return HumanAnswer.objects.get()


def test_staff_see_the_written_answer_on_the_pair_page_and_reject_it_with_a_reason(
    client, annotator, staff, make_pair, edits_on
):
    written = written_answer(client, annotator, make_pair, edits_on)
    client.force_login(staff)
    page = client.get(reverse("pair-detail", args=[written.judgement.pair_id])).content.decode()
    assert 'data-testid="human-answer"' in page and "written afresh" in page and "Accepted" in page
    review = reverse("edit-review", args=[written.pk])

    no_reason = client.post(review, {"decision": "reject", "reason": " "})
    assert no_reason.status_code == 400 and "say why" in no_reason.content.decode()
    written.refresh_from_db()
    assert written.status == HumanAnswer.Status.ACCEPTED and written.reviewed_by is None

    rejected = client.post(review, {"decision": "reject", "reason": "copied from the web"})
    assert rejected.status_code == 303
    written.refresh_from_db()
    assert (written.status, written.reviewed_by, written.review_reason) == ("rejected", staff, "copied from the web")
    again = client.post(review, {"decision": "reject", "reason": "twice"})
    assert again.status_code == 409 and "not accepted" in again.content.decode()
    assert client.post(review, {"decision": "accept"}).status_code == 303
    written.refresh_from_db()
    assert written.status == HumanAnswer.Status.ACCEPTED


@pytest.mark.parametrize(
    "form",
    [
        {},
        {"decision": "delete"},
        {"decision": "reject", "reason": "x" * 2001},
        {"decision": "reject", "reason": "a\x00"},
    ],
    ids=["empty", "unknown", "long-reason", "nul-reason"],
)
def test_a_bad_review_is_a_400_that_changes_nothing(client, annotator, staff, make_pair, edits_on, form):
    written = written_answer(client, annotator, make_pair, edits_on)
    client.force_login(staff)
    assert client.post(reverse("edit-review", args=[written.pk]), form).status_code == 400
    written.refresh_from_db()
    assert written.status == HumanAnswer.Status.ACCEPTED and written.reviewed_at is None


def test_annotators_cannot_review_and_a_missing_answer_is_a_404(client, annotator, staff, make_pair, edits_on):
    written = written_answer(client, annotator, make_pair, edits_on)
    review = reverse("edit-review", args=[written.pk])
    assert client.post(review, {"decision": "reject", "reason": "mine"}).status_code == 403
    client.force_login(staff)
    assert client.post(reverse("edit-review", args=[written.pk + 1]), {"decision": "accept"}).status_code == 404
    assert client.get(review).status_code == 405
    written.refresh_from_db()
    assert written.status == HumanAnswer.Status.ACCEPTED


def test_the_quality_row_counts_written_answers_and_how_much_they_change(
    client, annotator, other_annotator, staff, make_pair, edits_on
):
    make_pair(texts=("one two three four", "other"), required=2)
    make_pair(texts=("five six", "seven"), required=2)
    edits_on()
    client.force_login(annotator)
    for edit in ("one two three four five", "written afresh"):
        assignment = lease(client)
        post_vote(client, assignment, choice="both_bad", edit=edit, edit_from="" if "afresh" in edit else "left")
    client.force_login(other_annotator)
    post_vote(client, lease(client), choice="tie")

    answers = list(HumanAnswer.objects.filter(author=annotator))
    changed = sum(answer.chars_added + answer.chars_removed for answer in answers)
    total = sum(len(answer.text) + len(answer.started_from.text if answer.started_from else "") for answer in answers)
    client.force_login(staff)
    rows = {row["username"]: row for row in client.get(reverse("api-quality")).json()["annotators"]}
    assert rows["ann"]["edits"] == 2 and rows["ann"]["edit_changed_share"] == pytest.approx(changed / total)
    assert rows["bea"]["edits"] == 0 and rows["bea"]["edit_changed_share"] is None
    page = client.get(reverse("quality")).content.decode()
    assert "Written" in page and f"{changed / total:.2f} changed" in page


def test_staff_review_over_the_api(client, annotator, staff, make_pair, edits_on):
    written = written_answer(client, annotator, make_pair, edits_on)
    api = APIClient()
    api.force_authenticate(staff)
    url = reverse("api-edit-review", args=[written.pk])
    assert api.post(url, {"decision": "reject"}, format="json").status_code == 400  # no reason
    assert api.post(url, {"decision": "maybe", "reason": "x"}, format="json").status_code == 400
    response = api.post(url, {"decision": "reject", "reason": "not an answer"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["reviewed_by"], body["review_reason"]) == ("rejected", "sam", "not an answer")
    assert api.post(url, {"decision": "reject", "reason": "again"}, format="json").status_code == 409
    assert api.post(reverse("api-edit-review", args=[written.pk + 1]), {"decision": "accept"}).status_code == 404
    annotator_api = APIClient()
    annotator_api.force_authenticate(annotator)
    assert annotator_api.post(url, {"decision": "accept"}, format="json").status_code == 403
    written.refresh_from_db()
    assert written.status == "rejected"


def test_a_refused_vote_keeps_what_they_wrote_in_the_box(client, annotator, make_pair, edits_on):
    make_pair()
    edits_on()
    client.force_login(annotator)
    assignment = lease(client)
    response = post_vote(client, assignment, strength="", edit="<b>kept</b> draft", **HTMX)  # no strength: 400
    body = response.content.decode()
    assert response.status_code == 400 and nothing_stored()
    assert 'placeholder="Your answer">&lt;b&gt;kept&lt;/b&gt; draft</textarea>' in body


def test_the_written_column_shows_only_where_someone_wrote_an_answer(client, annotator, staff, make_pair):
    """A column of zeros where no campaign takes written answers would only widen the quality table (at 1280 px it
    then no longer fits: test_quality_browser); the API keeps the values either way."""
    make_pair(texts=("one", "two"))
    client.force_login(annotator)
    post_vote(client, lease(client), choice="tie")
    client.force_login(staff)
    assert client.get(reverse("api-quality")).json()["annotators"][0]["edits"] == 0
    assert ">Written<" not in client.get(reverse("quality")).content.decode()
