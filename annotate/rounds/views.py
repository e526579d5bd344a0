"""Staff pages for training rounds and model versions: start, watch live, promote, cancel, roll back."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate.errors import Conflict, Invalid
from annotate.models import ModelVersion, TrainingRound
from annotate.quality.judge_rule import judge_rule_described, judge_rule_stored
from annotate.quality.preferences import WEIGHTS_RULE
from annotate.rounds import canary
from annotate.rounds import services as rounds
from annotate.rounds.selectors import round_votes_preview
from annotate.rounds.status import round_phase, round_state
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerRefused, ModelServerUnavailable, client_from_settings
from annotate.web.pages import AppRequest, render_page, staff_required
from training.config import FieldSpec


def config_form_field(spec: FieldSpec) -> forms.Field:
    """A form field with exactly the spec's bounds (training.config, capped by the model server's LoRA limit).
    Left empty, the deployment's default (ROUND_*) applies."""
    if spec.choices:
        choices = [("", "default"), *((choice, choice) for choice in spec.choices)]
        return forms.ChoiceField(choices=choices, help_text=spec.help, required=False)
    field_class = forms.IntegerField if spec.kind is int else forms.FloatField
    return field_class(**spec.input_bounds(), help_text=spec.help, required=False)


class RoundStartForm(forms.Form):
    """One field per tunable config field, built from the spec so the bounds are never written twice; the gate mode
    first, as the one choice most rounds make (the hyperparameters sit under "Advanced" on the page)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["gate_mode"] = forms.ChoiceField(
            choices=TrainingRound.GateMode.choices,
            required=False,  # left out: ROUND_GATE_MODE
            initial=settings.ROUND_GATE_MODE,
            help_text="What decides whether the trained model serves.",
        )
        self.specs = {spec.name: spec for spec in rounds.round_config_fields()}
        for name, spec in self.specs.items():
            self.fields[name] = config_form_field(spec)

    def advanced_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.specs]

    def advanced_errors(self) -> bool:
        """Whether an Advanced field has an error: the page then opens that section."""
        return any(self[name].errors for name in self.specs)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        present = {name: value for name, value in cleaned.items() if name in self.specs and value not in (None, "")}
        for name, message in rounds.round_config_errors(present).items():
            self.add_error(name, message)
        return cleaned


class ReasonForm(forms.Form):
    reason = forms.CharField(required=False, max_length=2000)


class CanaryDecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[(canary.PROMOTE, "Promote"), (canary.REJECT, "Reject")])
    reason = forms.CharField(max_length=2000, strip=True)
    # Rejecting throws the candidate away: the first post asks again on a page of its own (no JavaScript needed).
    confirmed = forms.BooleanField(required=False)


# What the round page charts from each logged step: the metric's key, the chart's title, the id of its data block
# (no id on the canvas itself: see templates/leaderboard/leaderboard.html), and fixed y limits where the metric has
# them (an accuracy lies in 0 to 1).
ROUND_CHARTS: tuple[tuple[str, str, str, dict[str, float]], ...] = (
    ("loss", "Loss", "round-loss-chart", {}),
    ("rewards/accuracies", "Reward accuracy (training batches)", "round-reward-accuracy-chart", {"min": 0, "max": 1}),
)


def _charts(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One chart per metric the steps logged, as the spec static/pairloop/charts.js draws, with its points as text."""
    charts = []
    for key, title, element_id, limits in ROUND_CHARTS:
        points = [
            (int(row.get("step", number)), float(row[key]))
            for number, row in enumerate(metrics, start=1)
            if row.get(key) is not None
        ]
        if not points:
            continue
        values = [value for _, value in points]
        spec = {  # no title: the figure's caption carries it, with the last value and the range
            "x": {"label": "Step", "values": [step for step, _ in points]},
            "y": {"label": title, **limits},
            "series": [{"label": title, "values": values}],
        }
        charts.append({"title": title, "element_id": element_id, "spec": spec, "points": points,
                       "last": values[-1], "low": min(values), "high": max(values)})  # fmt: skip
    return charts


@require_GET
@staff_required
def rounds_list(request: AppRequest) -> HttpResponse:
    return _render_list(request, RoundStartForm(initial=rounds.round_config_defaults()))


def _render_list(request: AppRequest, form: RoundStartForm, status: int = 200) -> HttpResponse:
    listed = list(TrainingRound.objects.select_related("parent_version", "result_version", "started_by")[:50])
    context = {
        "rounds": [(training_round, round_state(training_round)) for training_round in listed],
        "running": next((training_round for training_round in listed if training_round.is_active), None),
        "versions": ModelVersion.objects.exclude(status=ModelVersion.Status.EXTERNAL).select_related(
            "parent", "training_round"
        ),
        "form": form,
        "rules": rounds.round_rules(),
        "ready_pairs": sampling.pairs_ready_count(),
        # The poll swaps the rounds table alone: what a round would train on is counted for the full page only.
        "preview": None if request.htmx else round_votes_preview(),
        "min_train_pairs": settings.ROUND_MIN_TRAIN_PAIRS,
    }
    return render_page(request, "rounds/list.html", "rounds", context, status=status)


@require_POST
@staff_required
def round_start(request: AppRequest) -> HttpResponse:
    form = RoundStartForm(request.POST)
    if not form.is_valid():
        return _render_list(request, form, status=400)
    try:
        overrides = {
            name: value for name, value in form.cleaned_data.items() if name != "gate_mode" and value not in (None, "")
        }
        training_round = rounds.round_start(
            trigger=TrainingRound.Trigger.PAGE,
            started_by=request.user,
            overrides=overrides,
            gate_mode=form.cleaned_data.get("gate_mode") or None,
        )
    except Invalid as invalid:
        for name, message in invalid.errors.items():
            form.add_error(name if name in form.fields else None, message)
        return _render_list(request, form, status=400)
    except Conflict as error:
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
    # The page polls while the round runs, sending the revision it shows: nothing changed, nothing to send (htmx
    # leaves the page as it is on a 204).
    # A canary's votes come in without touching the round, so its page is always sent while it waits.
    unchanged = request.GET.get("revision") == str(training_round.revision)
    if request.htmx and unchanged and training_round.status != TrainingRound.Status.CANARY:
        return HttpResponse(status=204)
    return _render_detail(request, training_round)


def _render_detail(
    request: AppRequest, training_round: TrainingRound, canary_form: CanaryDecisionForm | None = None, status: int = 200
) -> HttpResponse:
    metrics = training_round.metrics
    last = metrics[-1] if metrics else {}
    context = {
        "round": training_round,
        "state": round_state(training_round),
        "phase": round_phase(training_round, last=last),
        "charts": _charts(metrics),
        "last": last,
        "canary": canary.canary_summary(training_round),
        "canary_form": canary_form or CanaryDecisionForm(),
        "weights_rule": WEIGHTS_RULE if training_round.config.get("weighting", "none") != "none" else "",
        # Rules stored before the judge rule had three values read as in / out (judge_rule_stored).
        "judge_rule": judge_rule_described(*judge_rule_stored(training_round.rules)),
    }
    return render_page(request, "rounds/detail.html", "round", context, status=status)


@require_http_methods(["GET", "POST"])
@staff_required
def round_cancel(request: AppRequest, round_id: int) -> HttpResponse:
    """GET: a page that asks before cancelling (the round page links here; no JavaScript needed). POST: cancel."""
    training_round = _get_round(request, round_id)
    if request.method == "GET":
        context = {"round": training_round, "state": round_state(training_round)}
        return render_page(request, "rounds/confirm_cancel.html", "confirm", context)
    try:
        rounds.round_cancel(training_round=training_round)
        messages.info(request, f"Round {round_id} is being cancelled.")
    except Conflict as error:
        messages.error(request, str(error))
    return HttpResponseRedirect(reverse("round-detail", args=[round_id]))


@require_POST
@staff_required
def round_promote(request: AppRequest, round_id: int) -> HttpResponse:
    training_round = _get_round(request, round_id)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(" ".join(str(e) for e in errors) for errors in form.errors.values()))
        return HttpResponseRedirect(reverse("round-detail", args=[round_id]))
    try:
        rounds.round_promote(training_round=training_round, by=request.user, reason=form.cleaned_data["reason"])
        messages.info(request, f"Round {round_id} is being deployed.")
    except (Conflict, Invalid) as error:
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
        sampling.pairs_refill_request(throttle=False)
        messages.info(request, f"{version.name} now serves new pairs.")
    except ModelServerUnavailable as error:
        messages.error(request, f"The model server could not load {version.name}: {error}. Nothing changed.")
    except (Conflict, ModelServerRefused) as error:
        messages.error(request, f"{version.name} cannot serve: {error}. Nothing changed.")
    return HttpResponseRedirect(reverse("rounds"))


@require_POST
@staff_required
def round_canary_decide(request: AppRequest, round_id: int) -> HttpResponse:
    """Staff decide a canary before its votes do, with a reason; the page again with the errors when refused."""
    training_round = _get_round(request, round_id)
    form = CanaryDecisionForm(request.POST)
    if not form.is_valid():
        return _render_detail(request, training_round, form, status=400)
    data = form.cleaned_data
    if (
        data["decision"] == canary.REJECT
        and not data["confirmed"]
        and training_round.status == TrainingRound.Status.CANARY
    ):
        context = {"round": training_round, "state": round_state(training_round), "reason": data["reason"]}
        return render_page(request, "rounds/confirm_reject.html", "confirm", context)
    try:
        canary.canary_decide_early(
            training_round=training_round,
            by=request.user,
            decision=form.cleaned_data["decision"],
            reason=form.cleaned_data["reason"],
        )
    except Invalid as invalid:
        for name, message in invalid.errors.items():
            form.add_error(name if name in form.fields else None, message)
        return _render_detail(request, training_round, form, status=400)
    except Conflict as error:
        form.add_error(None, str(error))
        training_round.refresh_from_db()
        return _render_detail(request, training_round, form, status=409)
    messages.info(request, f"Round {round_id}: canary decided ({form.cleaned_data['decision']}).")
    return HttpResponseRedirect(reverse("round-detail", args=[round_id]))
