"""The annotate page's multi-turn parts: writing the next turn, the live stream of its pair, going on without it.

Each form works without JavaScript: the next turn posts and the page (reloaded, or its "Check now" link) shows the
conversation until a sampling worker has made its pair. With JavaScript the pair streams in (server-sent events).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseBase, HttpResponseRedirect, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from annotate.annotation.views import _after_answer, _annotate_context, _render_annotate
from annotate.broker import enqueue
from annotate.errors import Conflict, Invalid
from annotate.models import Continuation
from annotate.turns import services, streaming
from annotate.web.pages import AppRequest


class NextTurnForm(forms.Form):
    # The length is checked by the service (one rule for the page and any other caller), so a long message gets the
    # service's words; the form only bounds what it reads.
    message = forms.CharField(strip=False, required=False)
    idempotency_key = forms.UUIDField()


def _refused(request: AppRequest, error: Invalid | Conflict) -> HttpResponse:
    status = 409 if isinstance(error, Conflict) else 400
    context = _annotate_context(request, None, error=str(error))
    return _render_annotate(request, context, status=status)


@require_POST
@login_required
def next_turn(request: AppRequest, pair_id: int) -> HttpResponse:
    """The annotator's next user turn after their vote on this pair."""
    form = NextTurnForm(request.POST)
    if not form.is_valid():
        fields = {name: " ".join(str(message) for message in messages) for name, messages in form.errors.items()}
        return _refused(request, Invalid(fields))
    try:
        started = services.continuation_start(
            annotator=request.user,
            pair_id=pair_id,
            message=form.cleaned_data["message"],
            idempotency_key=form.cleaned_data["idempotency_key"],
        )
    except (Invalid, Conflict) as error:
        return _refused(request, error)
    if not request.htmx:
        # No JavaScript, so no stream: a worker writes the pair; the page shows the conversation until it is ready.
        if started.created:
            enqueue("annotate.tasks.continuation_make", started.continuation.pk)
        return HttpResponseRedirect(reverse("annotate"))
    return _render_annotate(request, _annotate_context(request, None))


def _continuation_for(request: AppRequest, continuation_id: int) -> Continuation:
    continuation = Continuation.objects.filter(pk=continuation_id, annotator=request.user).first()
    if continuation is None:
        raise Conflict("this is not a conversation of yours")
    return continuation


def _short_stream(name: str, data: dict[str, Any]) -> StreamingHttpResponse:
    return _event_response(iter([streaming.event(name, data)]))


def _event_response(events: Any) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must pass each event on as it comes
    return response


@never_cache
@require_GET
@login_required
def stream(request: AppRequest, continuation_id: int) -> HttpResponseBase:
    """Server-sent events of a continuation's pair as it is written (see annotate.turns.streaming)."""
    try:
        continuation = _continuation_for(request, continuation_id)
    except Conflict as error:
        return _refused(request, error)
    if continuation.status == Continuation.Status.READY:
        return _short_stream("ready", {"pair": continuation.pair_id})
    if continuation.status == Continuation.Status.FAILED:
        return _short_stream("failed", {"message": f"This conversation could not be continued: {continuation.error}"})
    return _event_response(streaming.continuation_events(continuation.pk))


@require_POST
@login_required
def stop_waiting(request: AppRequest, continuation_id: int) -> HttpResponse:
    """Go on with other pairs; the conversation's pair comes to the annotator when it is ready."""
    try:
        services.continuation_stop_waiting(annotator=request.user, continuation_id=continuation_id)
    except Conflict as error:
        return _refused(request, error)
    return _after_answer(request)


@require_POST
@login_required
def retry(request: AppRequest, continuation_id: int) -> HttpResponse:
    """Try a failed conversation again: the page streams it anew (without JavaScript, a worker samples it)."""
    try:
        continuation = services.continuation_retry(annotator=request.user, continuation_id=continuation_id)
    except Conflict as error:
        return _refused(request, error)
    if not request.htmx:
        enqueue("annotate.tasks.continuation_make", continuation.pk)
        return HttpResponseRedirect(reverse("annotate"))
    return _render_annotate(request, _annotate_context(request, None))
