"""HTML views. Each serves the full page, or only its fragment when htmx asks; every form also works without JS."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import httpx
from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from annotate.annotation import edits, services
from annotate.errors import Conflict, Invalid
from annotate.judging import services as judging
from annotate.models import Assignment, Campaign, Judgement, ModelVersion, TrainingRound
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerUnavailable, client_from_settings
from annotate.turns.context import turns_context
from annotate.web.pages import AppRequest, render_page

logger = logging.getLogger(__name__)

ANNOTATE_TEMPLATE = "annotate/annotate.html"


def _annotate_context(request: AppRequest, assignment: Assignment | None, **extra: Any) -> dict[str, Any]:
    campaign = assignment.pair.campaign if assignment else None
    progress = services.annotator_progress(annotator=request.user)
    paused = assignment is None and services.annotator_is_paused(request.user)
    return {
        "assignment": assignment,
        "campaign": campaign,
        "campaign_progress": next((item for item in progress.campaigns if item.campaign == campaign), None),
        "guidelines_open": _guidelines_first_sight(request, campaign),
        "paused": paused,
        "wait": None if assignment or paused else services.annotator_wait(annotator=request.user, progress=progress),
        "idempotency_key": uuid.uuid4(),
        "progress": progress,
        "undoable": services.judgement_undoable(annotator=request.user),
        "previous": services.judgement_undone_last(assignment=assignment) if assignment else None,
        "edit_max_length": settings.EDIT_MAX_LENGTH,
        "strengths": list(zip(Judgement.Strength.values, STRENGTH_KEYS, Judgement.Strength.labels, strict=True)),
        "judge_hint": judging.judge_hint_for(assignment),
        **turns_context(request.user),
        **extra,
    }


# Keys for how much better, the row above the choice keys 1-4 (q under 1): one hand covers both.
STRENGTH_KEYS = ("q", "w", "e")
GUIDELINES_SEEN = "pairloop:guidelines-seen"


def _guidelines_first_sight(request: AppRequest, campaign: Campaign | None) -> bool:
    """True the first time this annotator sees the campaign's guidelines, and again whenever staff change them.

    What they saw is kept in their session (database- or cache-backed, so any web process reads it): a digest of
    the guidelines per campaign."""
    if campaign is None or not campaign.guidelines:
        return False
    digest = hashlib.sha256(campaign.guidelines.encode()).hexdigest()[:16]
    seen = dict(request.session.get(GUIDELINES_SEEN, {}))
    if seen.get(str(campaign.pk)) == digest:
        return False
    seen[str(campaign.pk)] = digest
    request.session[GUIDELINES_SEEN] = seen
    return True


def _render_annotate(request: AppRequest, context: dict[str, Any], status: int = 200) -> HttpResponse:
    return render_page(request, ANNOTATE_TEMPLATE, "pair", context, status=status)


@never_cache
@require_GET
@login_required
def annotate(request: AppRequest) -> HttpResponse:
    assignment = services.assignment_lease_next(annotator=request.user)
    if assignment is None:
        sampling.pairs_refill_request()
    return _render_annotate(request, _annotate_context(request, assignment))


class VoteForm(forms.Form):
    """A vote as the page posts it: the screen side, how strongly, why, and the key that makes a resend harmless."""

    choice = forms.ChoiceField(choices=[(choice, choice) for choice in services.SCREEN_CHOICES])
    strength = forms.TypedChoiceField(choices=Judgement.Strength.choices, coerce=int, required=False, empty_value=None)
    rationale = forms.CharField(required=False, max_length=settings.RATIONALE_MAX_LENGTH)
    idempotency_key = forms.UUIDField()
    # A better answer written with the vote (annotate/annotation/edits.py), and the side it started from.
    edit = forms.CharField(required=False, max_length=settings.EDIT_MAX_LENGTH, strip=False)
    edit_from = forms.ChoiceField(choices=[(side, side) for side in edits.EDIT_FROM_CHOICES], required=False)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("choice") not in ("left", "right"):
            cleaned["strength"] = None  # the page always sends its strength radio; it only counts with a winner
        return cleaned

    def errors_by_field(self) -> dict[str, str]:
        return {name: " ".join(str(message) for message in messages) for name, messages in self.errors.items()}


def _after_answer(request: AppRequest, **extra: Any) -> HttpResponse:
    if not request.htmx:
        return HttpResponseRedirect(reverse("annotate"))
    assignment = services.assignment_lease_next(annotator=request.user)
    if assignment is None:
        sampling.pairs_refill_request()
    return _render_annotate(request, _annotate_context(request, assignment, **extra))


def _answer_failed(request: AppRequest, pair_id: int, error: Invalid | Conflict, edit_draft: str = "") -> HttpResponse:
    """Show the error with the pair still in place (or the next one when this pair is no longer theirs), and the
    answer they were writing for it, if any."""
    status = 409 if isinstance(error, Conflict) else 400
    assignment = services.assignment_current(annotator=request.user)
    if assignment is None or assignment.pair_id != pair_id:
        assignment = services.assignment_lease_next(annotator=request.user)
    same_pair = assignment is not None and assignment.pair_id == pair_id
    extra = {"edit_draft": edit_draft} if same_pair and len(edit_draft) <= settings.EDIT_MAX_LENGTH else {}
    return _render_annotate(request, _annotate_context(request, assignment, error=str(error), **extra), status=status)


@require_POST
@login_required
def judge(request: AppRequest, pair_id: int) -> HttpResponse:
    return vote_form_record(request, pair_id, VoteForm(request.POST))


def vote_form_record(request: AppRequest, pair_id: int, form: VoteForm) -> HttpResponse:
    """Record what a vote form posted (a vote, or a ranking: annotate/annotation/rank_views.py) and answer with the
    next pair, or with the error and the pair still in place."""
    draft = request.POST.get("edit", "").replace("\x00", "")
    if not form.is_valid():
        return _answer_failed(request, pair_id, Invalid(form.errors_by_field()), draft)
    try:
        recorded = edits.judgement_record_with_edit(
            annotator=request.user,
            pair_id=pair_id,
            choice=form.cleaned_data["choice"],
            strength=form.cleaned_data.get("strength"),
            rationale=form.cleaned_data["rationale"],
            idempotency_key=form.cleaned_data["idempotency_key"],
            edit=form.cleaned_data.get("edit") or "",
            edit_from=form.cleaned_data.get("edit_from") or "",
            ranks=form.cleaned_data.get("ranks"),
        )
    except (Invalid, Conflict) as error:
        return _answer_failed(request, pair_id, error, draft)
    judging.judge_hint_record(judgement=recorded.judgement, verdict_id=request.POST.get("judge_verdict"))
    return _after_answer(request, saved=recorded.judgement)


@require_POST
@login_required
def skip(request: AppRequest, pair_id: int) -> HttpResponse:
    try:
        services.assignment_skip(annotator=request.user, pair_id=pair_id)
    except Conflict as error:
        return _answer_failed(request, pair_id, error)
    return _after_answer(request, skipped=True)


class UndoForm(forms.Form):
    """The vote the page offered to undo: the service undoes it only while it is still the annotator's last."""

    judgement = forms.IntegerField(min_value=1)


@require_POST
@login_required
def undo(request: AppRequest) -> HttpResponse:
    """Take back the annotator's last vote; the pair comes back to them, with what they said filled in."""
    form = UndoForm(request.POST)
    try:
        if not form.is_valid():
            raise Invalid({"judgement": "say which vote to undo (the page sends it)"})
        assignment = services.judgement_undo(annotator=request.user, judgement_id=form.cleaned_data["judgement"])
    except (Invalid, Conflict) as error:
        status = 409 if isinstance(error, Conflict) else 400
        current = services.assignment_lease_next(annotator=request.user)
        return _render_annotate(request, _annotate_context(request, current, error=str(error)), status=status)
    if not request.htmx:
        return HttpResponseRedirect(reverse("annotate"))
    return _render_annotate(request, _annotate_context(request, assignment, undone=True))


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and readiness: 200 when the database answers, with the state of each part beside it.

    A broken broker or model server is reported in the body ("degraded"), never as an error of this page.
    """
    report: dict[str, Any] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        report["database"] = "ok"
    except Exception as error:
        logger.exception("health check: database")
        report["database"] = f"error: {error}"
    report["broker"] = _broker_state()
    served, report["vllm"] = _model_server_state()
    if report["database"] == "ok":
        serving = ModelVersion.objects.serving()
        report["serving_model_version"] = serving.name if serving else None
        report["serving_model_loaded"] = bool(serving and served and serving.name in served)
        report["ready_pairs"] = sampling.pairs_ready_count()
        last_round = TrainingRound.objects.order_by("-id").first()
        report["last_round"] = {"id": last_round.pk, "status": last_round.status} if last_round else None
    report["status"] = "ok" if all(report[part] == "ok" for part in ("database", "broker", "vllm")) else "degraded"
    return JsonResponse(report, status=200 if report["database"] == "ok" else 503)


def _model_server_state() -> tuple[list[str] | None, str]:
    """The models the server lists and "ok"; or None and why not (unreachable, or an answer that makes no sense)."""
    try:
        with client_from_settings(timeout=3) as client:
            return client.served_models(), "ok"
    except (ModelServerUnavailable, httpx.TransportError):
        return None, "unreachable"
    except Exception as error:  # an HTTP error status, or a body that is not a model list
        logger.warning("health check: the model server answered badly: %r", error)
        return None, f"error: {type(error).__name__}"


def _broker_state() -> str:
    from annotate.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as error:
        return f"unreachable: {error}"
