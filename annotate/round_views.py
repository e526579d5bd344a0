"""Staff pages for training rounds and model versions: start, watch live, promote, cancel, roll back."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotate import rounds, sampling
from annotate.generation import ModelServerRefused, ModelServerUnavailable, client_from_settings
from annotate.models import Conflict, ModelVersion, TrainingRound
from annotate.web import AppRequest, render_page, staff_required
from training.config import SUPPORTED_LOSS_TYPES


class RoundStartForm(forms.Form):
    beta = forms.FloatField(min_value=0.001, max_value=10)
    learning_rate = forms.FloatField(min_value=1e-8, max_value=1e-2)
    epochs = forms.IntegerField(min_value=1, max_value=20)
    batch_size = forms.IntegerField(min_value=1, max_value=512)
    max_length = forms.IntegerField(min_value=32, max_value=8192)
    max_steps = forms.IntegerField(min_value=-1, help_text="-1: run the epochs in full")
    lora_rank = forms.IntegerField(min_value=1, max_value=256)
    loss_type = forms.ChoiceField(choices=[(loss, loss) for loss in SUPPORTED_LOSS_TYPES])


def _sparkline(values: list[float], width: int = 320, height: int = 80) -> str:
    """SVG polyline points for a small chart of `values` (oldest first)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = width / max(1, len(values) - 1)
    return " ".join(
        f"{index * step:.1f},{height - (value - low) / span * height:.1f}" for index, value in enumerate(values)
    )


def _charts(training_round: TrainingRound) -> list[dict[str, Any]]:
    charts = []
    for key, title in (("loss", "Loss"), ("rewards/accuracies", "Reward accuracy (training batches)")):
        values = [float(row[key]) for row in training_round.metrics if row.get(key) is not None]
        if values:
            charts.append({"title": title, "points": _sparkline(values), "last": values[-1], "low": min(values),
                           "high": max(values)})  # fmt: skip
    return charts


@require_GET
@staff_required
def rounds_list(request: AppRequest) -> HttpResponse:
    return _render_list(request, RoundStartForm(initial=rounds.round_config_defaults()))


def _render_list(request: AppRequest, form: RoundStartForm, status: int = 200) -> HttpResponse:
    context = {
        "rounds": TrainingRound.objects.select_related("parent_version", "result_version", "started_by")[:50],
        "versions": ModelVersion.objects.exclude(status=ModelVersion.Status.EXTERNAL).select_related("parent"),
        "form": form,
        "rules": rounds.round_rules(),
        "ready_pairs": sampling.pairs_ready_count(),
    }
    return render_page(request, "rounds/list.html", "rounds", context, status=status)


@require_POST
@staff_required
def round_start(request: AppRequest) -> HttpResponse:
    form = RoundStartForm(request.POST)
    if not form.is_valid():
        return _render_list(request, form, status=400)
    try:
        training_round = rounds.round_start(
            trigger=TrainingRound.Trigger.PAGE, started_by=request.user, overrides=form.cleaned_data
        )
    except rounds.RoundError as error:
        form.add_error(None, str(error))
        return _render_list(request, form, status=409)
    return HttpResponseRedirect(reverse("round-detail", args=[training_round.pk]))


def _get_round(request: AppRequest, round_id: int) -> TrainingRound:
    return get_object_or_404(
        TrainingRound.objects.select_related("parent_version", "result_version", "started_by"), pk=round_id
    )


@require_GET
@staff_required
def round_detail(request: AppRequest, round_id: int) -> HttpResponse:
    training_round = _get_round(request, round_id)
    context = {"round": training_round, "charts": _charts(training_round), "last": training_round.last_metrics}
    return render_page(request, "rounds/detail.html", "round", context)


@require_POST
@staff_required
def round_cancel(request: AppRequest, round_id: int) -> HttpResponse:
    training_round = _get_round(request, round_id)
    try:
        rounds.round_cancel(training_round=training_round)
        messages.info(request, f"Round {round_id} is being cancelled.")
    except rounds.RoundError as error:
        messages.error(request, str(error))
    return HttpResponseRedirect(reverse("round-detail", args=[round_id]))


@require_POST
@staff_required
def round_promote(request: AppRequest, round_id: int) -> HttpResponse:
    training_round = _get_round(request, round_id)
    try:
        rounds.round_promote(training_round=training_round, by=request.user, reason=request.POST.get("reason", ""))
        messages.info(request, f"Round {round_id} is being deployed.")
    except rounds.RoundError as error:
        messages.error(request, str(error))
    return HttpResponseRedirect(reverse("round-detail", args=[round_id]))


@require_POST
@staff_required
def version_serve(request: AppRequest, version_id: int) -> HttpResponse:
    """Roll back (or forward) to any earlier version: it serves new pairs from now on."""
    version = get_object_or_404(ModelVersion, pk=version_id)
    try:
        with client_from_settings() as client:
            version.serve(client)
        messages.info(request, f"{version.name} now serves new pairs.")
    except ModelServerUnavailable as error:
        messages.error(request, f"The model server could not load {version.name}: {error}. Nothing changed.")
    except (Conflict, ModelServerRefused) as error:
        messages.error(request, f"{version.name} cannot serve: {error}. Nothing changed.")
    return HttpResponseRedirect(reverse("rounds"))
