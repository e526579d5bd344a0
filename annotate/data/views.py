"""Staff pages for data in and out: upload prompts, upload preference data, export datasets and read their cards.

Each page serves the full page, or only its `panel` fragment when htmx posts the form; every form works without JS.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseClientRedirect

from annotate.data import exports, import_jobs, imports
from annotate.data.exports import ExportFilters
from annotate.errors import Invalid
from annotate.models import DataImport, Export, Judgement, ModelVersion, Prompt
from annotate.quality.judge_rule import JUDGE_RULES, JUDGE_WEIGHT_DEFAULT, JUDGE_WEIGHT_HELP, judge_rule_errors
from annotate.quality.preferences import EDITS_RULES
from annotate.web.pages import AppRequest, render_page, staff_required
from training.config import WEIGHTINGS

EXPORTS_SHOWN = 50
IMPORTS_SHOWN = 10


def _render(request: AppRequest, template_name: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    return render_page(request, template_name, "panel", context, status=status)


# --- Imports ---------------------------------------------------------------------------------------------------


class PromptSetForm(forms.Form):
    """Which prompt set an upload goes into: an existing one, or a new one only when that is said (new_set), so a
    typo in a name never quietly starts an empty set (and with it an empty campaign)."""

    default_set = "default"
    # The page lists the stored sets in a datalist of this id (data/_prompt_sets.html).
    prompt_set = forms.CharField(
        max_length=100, required=False, widget=forms.TextInput(attrs={"list": "prompt-sets", "autocomplete": "off"})
    )
    new_set = forms.BooleanField(
        required=False,
        label="Start a new set with this name",
        help_text="Without it, a name that is not in the list is refused: a typo never starts an empty set.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.existing_sets = sorted(
            set(Prompt.objects.order_by().values_list("prompt_set", flat=True).distinct()) | {self.default_set}
        )
        field = self.fields["prompt_set"]
        field.initial = self.default_set
        field.help_text = f"One of the sets stored already ({len(self.existing_sets)}); empty: {self.default_set}."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        name = cleaned.get("prompt_set") or self.default_set
        known = name in self.existing_sets
        if cleaned.get("new_set") and known:
            self.add_error("new_set", f"There is a set named “{name}” already: untick this to add to it.")
        elif not cleaned.get("new_set") and not known:
            self.add_error(
                "prompt_set", f"No prompt set is named “{name}”: choose one from the list, or tick “Start a new set”."
            )
        cleaned["prompt_set"] = name
        return cleaned


class PromptUploadForm(PromptSetForm):
    file = forms.FileField(help_text="JSON Lines, CSV with a prompt column, or text with one prompt a line.")
    format = forms.ChoiceField(
        choices=[("", "from the file name"), *((name, name) for name in imports.PROMPT_FILE_FORMATS)], required=False
    )
    field_order = ["file", "format", "prompt_set", "new_set"]


class PreferenceUploadForm(PromptSetForm):
    default_set = "imported"
    file = forms.FileField(help_text="JSON Lines.")
    format = forms.ChoiceField(choices=[(name, name) for name in imports.PREFERENCE_FORMATS])
    skip_bad = forms.BooleanField(required=False, label="Skip bad rows (import the good ones and list the others)")
    field_order = ["file", "format", "skip_bad", "prompt_set", "new_set"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["prompt_set"].help_text += " Only for prompts not stored yet."


def _imports_context(form: forms.Form, kind: str, **extra: Any) -> dict[str, Any]:
    recent = DataImport.objects.filter(kind=kind).select_related("created_by")[:IMPORTS_SHOWN]
    return {"form": form, "imports": recent, **extra}


def _import_request(
    request: AppRequest, form: forms.Form, kind: str, file_format: str | None, options: dict[str, Any]
) -> HttpResponse:
    """Record the upload and go to its page, which follows the worker; or say at once why it was refused."""
    try:
        data_import, _ = import_jobs.data_import_request(
            created_by=request.user, kind=kind, upload=form.cleaned_data["file"], file_format=file_format,
            options=options,
        )  # fmt: skip
    except imports.ImportRejected as rejected:
        context = _imports_context(form, kind, rejected=rejected.details())
        return _render(request, f"data/{kind}_import.html", context, status=400)
    url = reverse("data-import", args=[data_import.pk])
    return HttpResponseClientRedirect(url) if request.htmx else HttpResponseRedirect(url, status=303)


@require_http_methods(["GET", "POST"])
@staff_required
def prompts_import(request: AppRequest) -> HttpResponse:
    form = PromptUploadForm(request.POST or None, request.FILES or None)
    kind = DataImport.Kind.PROMPTS
    if request.method == "GET" or not form.is_valid():
        status = 400 if request.method == "POST" else 200
        return _render(request, "data/prompts_import.html", _imports_context(form, kind), status=status)
    options = {"prompt_set": form.cleaned_data["prompt_set"]}
    return _import_request(request, form, kind, form.cleaned_data["format"] or None, options)


@require_http_methods(["GET", "POST"])
@staff_required
def preferences_import(request: AppRequest) -> HttpResponse:
    form = PreferenceUploadForm(request.POST or None, request.FILES or None)
    kind = DataImport.Kind.PREFERENCES
    if request.method == "GET" or not form.is_valid():
        status = 400 if request.method == "POST" else 200
        return _render(request, "data/preferences_import.html", _imports_context(form, kind), status=status)
    options = {"prompt_set": form.cleaned_data["prompt_set"], "skip_bad": form.cleaned_data["skip_bad"]}
    return _import_request(request, form, kind, form.cleaned_data["format"], options)


@require_http_methods(["GET", "POST"])
@staff_required
def import_detail(request: AppRequest, import_id: int) -> HttpResponse:
    """The import, its progress (the page polls itself while it is queued or running) and its outcome; a POST hands
    a queued import to a worker again (after the task queue was unreachable)."""
    data_import = get_object_or_404(DataImport.objects.select_related("created_by"), pk=import_id)
    if request.method == "POST":
        if data_import.status == DataImport.Status.QUEUED:
            import_jobs.data_import_enqueue(data_import=data_import)
        return HttpResponseRedirect(reverse("data-import", args=[data_import.pk]), status=303)
    shown = data_import.line_errors[: imports.MAX_ERRORS_SHOWN]
    context = {
        "data_import": data_import,
        "line_errors": shown,
        "more_errors": data_import.line_error_count - len(shown),
    }
    return render(request, "data/import_detail.html", context)


# --- Exports ---------------------------------------------------------------------------------------------------


class ExportForm(forms.Form):
    dataset_format = forms.ChoiceField(choices=[(name, name) for name in exports.DATASET_FORMATS], label="Format")
    file_format = forms.ChoiceField(choices=[("jsonl", "JSON Lines"), ("parquet", "Parquet")], label="File")
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Votes from")
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="Votes until")
    prompt_sets = forms.MultipleChoiceField(required=False, help_text="None selected: all.")
    model_versions = forms.ModelMultipleChoiceField(
        queryset=ModelVersion.objects.order_by("id"), to_field_name="name", required=False,
        label="Pairs sampled from", help_text="None selected: all.",
    )  # fmt: skip
    annotators = forms.ModelMultipleChoiceField(
        queryset=User.objects.order_by("username"), to_field_name="username", required=False,
        help_text="None selected: all.",
    )  # fmt: skip
    sources = forms.MultipleChoiceField(
        choices=[(name, name) for name in exports.SOURCES], required=False, help_text="None selected: all."
    )
    on_policy = forms.BooleanField(required=False, label="On-policy pairs only")
    combine = forms.ChoiceField(
        choices=[("majority", "majority"), ("all", "all votes"), ("unanimous", "unanimous only")],
        label="Several votes on a pair",
    )
    include_ties = forms.BooleanField(required=False)
    include_both_bad = forms.BooleanField(required=False)
    include_gold = forms.BooleanField(required=False, label="Include votes on gold pairs")
    include_repeats = forms.BooleanField(required=False, label="Include repeat votes")
    include_excluded_annotators = forms.BooleanField(required=False, label="Include excluded annotators' votes")
    judge = forms.ChoiceField(
        choices=[(rule, rule) for rule in JUDGE_RULES], required=False, initial="out", label="The AI judge's votes",
        help_text="out: left out; weight (trl-preference only): each counts the weight below, a person's vote 1; in.",
    )  # fmt: skip
    judge_weight = forms.FloatField(
        initial=JUDGE_WEIGHT_DEFAULT, required=False, label="Weight of a judge vote", help_text=JUDGE_WEIGHT_HELP
    )
    exclude_head_to_head = forms.BooleanField(
        required=False, label="Leave out head-to-head votes", help_text="Pairs whose answers come from two versions."
    )
    min_competence = forms.FloatField(min_value=0.0, max_value=1.0, initial=0.0, required=False)
    min_agreement = forms.FloatField(min_value=0.0, max_value=1.0, initial=0.0)
    edits = forms.ChoiceField(
        choices=[(name, name.replace("_", " ")) for name in EDITS_RULES], required=False,
        initial="edits_and_choices", label="Written answers",
        help_text="trl-preference only: annotators' written answers as chosen over each sampled answer.",
    )  # fmt: skip
    weighting = forms.ChoiceField(
        choices=[(name, name) for name in WEIGHTINGS], required=False, initial="none", label="Weights",
        help_text="trl-preference only: a weight column from the votes' strength and/or their voters' competence.",
    )  # fmt: skip
    license = forms.CharField(required=False, max_length=100, help_text="Stated on the dataset card.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        prompt_sets = Prompt.objects.order_by("prompt_set").values_list("prompt_set", flat=True).distinct()
        self.fields["prompt_sets"].choices = [(name, name) for name in prompt_sets]  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        weight = data.get("judge_weight")
        for name, problem in judge_rule_errors(
            data.get("judge") or "out", JUDGE_WEIGHT_DEFAULT if weight is None else weight
        ).items():
            self.add_error(name, problem)
        return data

    def to_filters(self) -> ExportFilters:
        data = self.cleaned_data
        return ExportFilters.from_values(
            {
                **data,
                "model_versions": [version.name for version in data["model_versions"]],
                "annotators": [user.username for user in data["annotators"]],
            }
        )


# What most exports set; the other fields wait under "More options" with their defaults.
EXPORT_FIELDS_FIRST = ("dataset_format", "file_format", "prompt_sets", "date_from", "date_to", "license")


def _exports_context(form: ExportForm, **extra: Any) -> dict[str, Any]:
    recent = list(Export.objects.select_related("created_by").order_by("-id")[:EXPORTS_SHOWN])
    first = [form[name] for name in EXPORT_FIELDS_FIRST]
    more = [field for field in form if field.name not in EXPORT_FIELDS_FIRST]
    return {
        "form": form,
        "fields_first": first,
        "fields_more": more,
        "more_has_errors": any(field.errors for field in more),
        "exports": recent,
        "any_active": any(export.is_active for export in recent),
        **extra,
    }


def _export_outcome(export: Export) -> dict[str, Any]:
    """Of the votes matching the filters, how many the export's rules left out, and why: each rule with the votes it
    leaves out as the votes stand now (they may have changed since the export), a minimum competence named only
    (counting it would mean running MACE again)."""
    if export.status != Export.Status.DONE or export.votes_total is None:
        return {"left_out": None, "left_out_rules": []}
    filters = ExportFilters.from_dict(export.filters)
    conditions = filters.rules.left_out_conditions(Judgement.objects.none(), competence={})
    by_competence = [reason for reason in conditions if reason.startswith("votes of annotators with competence")]
    counted = {reason: q for reason, q in conditions.items() if reason not in by_competence}
    counts = filters.rules.left_out(exports.judgements_matching(filters), counted)
    reasons = [f"{count} {reason}" for reason, count in counts.items() if count] + by_competence
    return {"left_out": max(0, export.votes_total - export.votes_read), "left_out_rules": reasons}


@require_http_methods(["GET", "POST"])
@staff_required
def exports_page(request: AppRequest) -> HttpResponse:
    form = ExportForm(request.POST or None)
    if request.method == "GET":
        return _render(request, "data/exports.html", _exports_context(form))
    if form.is_valid():
        try:
            export = exports.export_request(
                created_by=request.user,
                dataset_format=form.cleaned_data["dataset_format"],
                file_format=form.cleaned_data["file_format"],
                filters=form.to_filters(),
            )
        except Invalid as invalid:
            for name, message in invalid.errors.items():
                form.add_error(name if name in form.fields else None, message)
        else:
            if not request.htmx:
                return HttpResponseRedirect(reverse("data-export", args=[export.pk]), status=303)
            return _render(request, "data/exports.html", _exports_context(ExportForm(), requested=export))
    return _render(request, "data/exports.html", _exports_context(form), status=400)


@require_http_methods(["GET", "POST"])
@staff_required
def export_detail(request: AppRequest, export_id: int) -> HttpResponse:
    """The export, its progress (the page polls itself while it is queued or running) and its card; a POST hands
    a queued export to a worker again (after the task queue was unreachable)."""
    export = get_object_or_404(Export.objects.select_related("created_by"), pk=export_id)
    if request.method == "POST":
        if export.status == Export.Status.QUEUED:
            exports.export_enqueue(export=export)
        return HttpResponseRedirect(reverse("data-export", args=[export.pk]), status=303)
    files = exports.export_files(export)
    front, body = exports.card_read(files["card"].read_text(encoding="utf-8")) if "card" in files else ({}, "")
    shown = [(key, ", ".join(map(str, value)) if isinstance(value, list) else value) for key, value in front.items()]
    context = {
        "export": export,
        "files": files,
        "card_front_matter": shown,
        "card_body": body,
        **_export_outcome(export),
    }
    return render(request, "data/export_detail.html", context)


@require_GET
@staff_required
def export_download(request: AppRequest, export_id: int) -> FileResponse:
    export = get_object_or_404(Export, pk=export_id)
    path = exports.export_files(export).get(request.GET.get("file", "data"))
    if path is None:
        raise Http404("no such file for this export")
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)
