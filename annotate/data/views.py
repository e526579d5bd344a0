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
from annotate.models import DataImport, Export, ModelVersion, Prompt
from annotate.web.pages import AppRequest, render_page, staff_required
from training.config import WEIGHTINGS

EXPORTS_SHOWN = 50
IMPORTS_SHOWN = 10


def _render(request: AppRequest, template_name: str, context: dict[str, Any], status: int = 200) -> HttpResponse:
    return render_page(request, template_name, "panel", context, status=status)


# --- Imports ---------------------------------------------------------------------------------------------------


class PromptUploadForm(forms.Form):
    file = forms.FileField(help_text="JSON Lines, CSV with a prompt column, or text with one prompt a line.")
    format = forms.ChoiceField(
        choices=[("", "from the file name"), *((name, name) for name in imports.PROMPT_FILE_FORMATS)], required=False
    )
    prompt_set = forms.CharField(max_length=100, initial="default", required=False, help_text="Empty: default.")


class PreferenceUploadForm(forms.Form):
    file = forms.FileField(help_text="JSON Lines.")
    format = forms.ChoiceField(choices=[(name, name) for name in imports.PREFERENCE_FORMATS])
    skip_bad = forms.BooleanField(required=False, label="Skip bad rows (import the good ones and list the others)")
    prompt_set = forms.CharField(
        max_length=100, initial="imported", required=False, help_text="For prompts not stored yet. Empty: imported."
    )


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
    options = {"prompt_set": form.cleaned_data["prompt_set"] or "default"}
    return _import_request(request, form, kind, form.cleaned_data["format"] or None, options)


@require_http_methods(["GET", "POST"])
@staff_required
def preferences_import(request: AppRequest) -> HttpResponse:
    form = PreferenceUploadForm(request.POST or None, request.FILES or None)
    kind = DataImport.Kind.PREFERENCES
    if request.method == "GET" or not form.is_valid():
        status = 400 if request.method == "POST" else 200
        return _render(request, "data/preferences_import.html", _imports_context(form, kind), status=status)
    options = {"prompt_set": form.cleaned_data["prompt_set"] or "imported", "skip_bad": form.cleaned_data["skip_bad"]}
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
    exclude_head_to_head = forms.BooleanField(
        required=False, label="Leave out head-to-head votes", help_text="Pairs whose answers come from two versions."
    )
    min_competence = forms.FloatField(min_value=0.0, max_value=1.0, initial=0.0, required=False)
    min_agreement = forms.FloatField(min_value=0.0, max_value=1.0, initial=0.0)
    weighting = forms.ChoiceField(
        choices=[(name, name) for name in WEIGHTINGS], required=False, initial="none", label="Weights",
        help_text="trl-preference only: a weight column from the votes' strength and/or their voters' competence.",
    )  # fmt: skip
    license = forms.CharField(required=False, max_length=100, help_text="Stated on the dataset card.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        prompt_sets = Prompt.objects.order_by("prompt_set").values_list("prompt_set", flat=True).distinct()
        self.fields["prompt_sets"].choices = [(name, name) for name in prompt_sets]  # type: ignore[attr-defined]

    def to_filters(self) -> ExportFilters:
        data = self.cleaned_data
        return ExportFilters.from_values(
            {
                **data,
                "model_versions": [version.name for version in data["model_versions"]],
                "annotators": [user.username for user in data["annotators"]],
            }
        )


def _exports_context(form: ExportForm, **extra: Any) -> dict[str, Any]:
    recent = list(Export.objects.select_related("created_by").order_by("-id")[:EXPORTS_SHOWN])
    return {"form": form, "exports": recent, "any_active": any(export.is_active for export in recent), **extra}


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
    context = {"export": export, "files": files, "card_front_matter": shown, "card_body": body}
    return render(request, "data/export_detail.html", context)


@require_GET
@staff_required
def export_download(request: AppRequest, export_id: int) -> FileResponse:
    export = get_object_or_404(Export, pk=export_id)
    path = exports.export_files(export).get(request.GET.get("file", "data"))
    if path is None:
        raise Http404("no such file for this export")
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)
