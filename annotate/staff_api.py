"""The staff API: prompts, pairs, votes, model versions and training rounds; imports; exports with their cards.

It calls the same services as the staff pages. Every endpoint here is staff only (IsAdminUser): annotator tokens
get 403 and can only use the annotation endpoints of annotate/api.py. Lists are paginated (?page=, ?page_size=).
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.files.uploadedfile import UploadedFile
from django.db.models import QuerySet
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes, permission_classes
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate import canary, exports, imports, quality_views, rounds, services
from annotate.errors import Conflict, Invalid
from annotate.exports import ExportFilters
from annotate.generation import ModelServerRefused, ModelServerUnavailable, client_from_settings
from annotate.models import AnnotatorAction, Campaign, Export, Judgement, ModelVersion, Pair, Prompt, TrainingRound
from training.config import WEIGHTINGS, FieldSpec

ROLES = ("system", "user", "assistant")


class DataPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 1000

    def __init__(self) -> None:
        self.page_size = settings.API_PAGE_SIZE


def _page_of(item: type[serializers.Serializer[Any]]) -> serializers.Serializer[Any]:
    """The schema of a paginated list of `item`."""
    return inline_serializer(
        name=f"{item.__name__}Page",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item(many=True),
        },
    )


def _paginated(request: Request, queryset: QuerySet[Any], item: type[serializers.Serializer[Any]]) -> Response:
    paginator = DataPagination()
    page = paginator.paginate_queryset(queryset, request)
    return paginator.get_paginated_response(item(page, many=True, context={"request": request}).data)


def _query(request: Request, filter_class: type[serializers.Serializer[Any]]) -> dict[str, Any]:
    query = filter_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return {name: value for name, value in query.validated_data.items() if value not in (None, "")}


def _staff(request: Request) -> User:
    return cast(User, request.user)  # IsAdminUser let only staff through


def _upload_text(upload: UploadedFile) -> str:
    imports.check_size(upload.size or 0)
    return imports.decode(upload.read())


def _rejected(error: imports.ImportRejected) -> ValidationError:
    return ValidationError({"file": error.details()})


NOT_STAFF = OpenApiResponse(description="Not logged in (401) or not staff (403).")
BAD_FILTERS = OpenApiResponse(description="Bad filters, named in `errors`.")


# --- Prompts ---------------------------------------------------------------------------------------------------


class MessageItem(serializers.Serializer[Any]):
    role = serializers.ChoiceField(choices=ROLES)
    content = serializers.CharField(trim_whitespace=False)


class PromptItem(serializers.ModelSerializer[Prompt]):
    messages = MessageItem(many=True)

    class Meta:
        model = Prompt
        fields = ["id", "messages", "prompt_set", "tags", "source", "is_active", "created_at"]


class PromptFilter(serializers.Serializer[Any]):
    prompt_set = serializers.CharField(required=False)
    active = serializers.BooleanField(required=False, allow_null=True, default=None)


class PromptCreateInput(serializers.Serializer[Any]):
    prompt = serializers.CharField(required=False, help_text="One user message (or give `messages`).")
    system = serializers.CharField(required=False, help_text="A system message before `prompt`.")
    messages = MessageItem(many=True, required=False, help_text="A conversation ending with a user message.")
    prompt_set = serializers.CharField(max_length=100, default="default")
    tags = serializers.ListField(child=serializers.CharField(max_length=100), default=list)


def _prompts_list(request: Request) -> Response:
    query = _query(request, PromptFilter)
    prompts = Prompt.objects.order_by("id")
    if "prompt_set" in query:
        prompts = prompts.filter(prompt_set=query["prompt_set"])
    if "active" in query:
        prompts = prompts.filter(is_active=query["active"])
    return _paginated(request, prompts, PromptItem)


def _prompts_create(request: Request) -> Response:
    data = PromptCreateInput(data=request.data)
    data.is_valid(raise_exception=True)
    fields = {key: value for key, value in data.validated_data.items() if key in ("prompt", "system", "messages")}
    try:
        row = imports.prompt_row_from({**fields, "tags": data.validated_data["tags"]})
    except ValueError as error:
        raise ValidationError({next(iter(fields), "prompt"): [str(error)]}) from None
    try:
        prompt = imports.prompt_create(row=row, prompt_set=data.validated_data["prompt_set"], source="api")
    except imports.PromptExists as exists:
        body = {"detail": str(exists), "code": "duplicate", "prompt": exists.prompt.pk}
        return Response(body, status=status.HTTP_409_CONFLICT)
    return Response(PromptItem(prompt).data, status=status.HTTP_201_CREATED)


@extend_schema(
    methods=["GET"],
    parameters=[PromptFilter],
    responses={200: _page_of(PromptItem), 400: BAD_FILTERS, 403: NOT_STAFF},
    operation_id="prompts_list",
    summary="List prompts",
)
@extend_schema(
    methods=["POST"],
    request=PromptCreateInput,
    responses={
        201: PromptItem,
        400: OpenApiResponse(description="Invalid fields, named in `errors`."),
        409: OpenApiResponse(description="The same conversation is stored already (its id in `prompt`)."),
    },
    summary="Add one prompt",
)
@api_view(["GET", "POST"])
@permission_classes([IsAdminUser])
def prompts(request: Request) -> Response:
    return _prompts_list(request) if request.method == "GET" else _prompts_create(request)


class PromptImportInput(serializers.Serializer[Any]):
    file = serializers.FileField(help_text="JSON Lines, CSV with a `prompt` column, or text with one prompt a line.")
    format = serializers.ChoiceField(
        choices=imports.PROMPT_FILE_FORMATS, required=False, help_text="Default: from the file name."
    )
    prompt_set = serializers.CharField(max_length=100, default="default")


class PromptImportResult(serializers.Serializer[Any]):
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField(help_text="Already stored, or repeated in the file: skipped.")
    prompt_set = serializers.CharField()


@extend_schema(
    request={"multipart/form-data": PromptImportInput},
    responses={
        201: PromptImportResult,
        400: OpenApiResponse(description="The file was rejected whole: reasons and bad lines in `errors.file`."),
    },
    summary="Import a file of prompts (all or nothing)",
)
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
@permission_classes([IsAdminUser])
def prompts_import(request: Request) -> Response:
    data = PromptImportInput(data=request.data)
    data.is_valid(raise_exception=True)
    upload = data.validated_data["file"]
    try:
        file_format = imports.prompt_file_format(upload.name, data.validated_data.get("format"))
        rows = imports.parse_prompts(_upload_text(upload), file_format=file_format)
        result = imports.prompts_import(rows=rows, prompt_set=data.validated_data["prompt_set"], source=upload.name)
    except imports.ImportRejected as rejected:
        raise _rejected(rejected) from None
    return Response(PromptImportResult(result).data, status=status.HTTP_201_CREATED)


# --- Preference data -------------------------------------------------------------------------------------------


class PreferenceImportInput(serializers.Serializer[Any]):
    file = serializers.FileField(help_text="JSON Lines.")
    format = serializers.ChoiceField(choices=imports.PREFERENCE_FORMATS)
    skip_bad = serializers.BooleanField(default=False, help_text="Import the good rows and list the bad ones.")
    prompt_set = serializers.CharField(max_length=100, default="imported", help_text="For prompts not stored yet.")


class LineErrorItem(serializers.Serializer[Any]):
    line = serializers.IntegerField()
    reason = serializers.CharField()


class PreferenceImportResult(serializers.Serializer[Any]):
    imported = serializers.IntegerField(help_text="Pairs stored, each with one imported vote.")
    duplicates = serializers.IntegerField(help_text="The same preference imported before: skipped.")
    new_prompts = serializers.IntegerField()
    model_version = serializers.CharField(help_text="The external version the imported answers belong to.")
    skipped = LineErrorItem(many=True, help_text="Bad rows left out (with skip_bad).")


@extend_schema(
    request={"multipart/form-data": PreferenceImportInput},
    responses={
        201: PreferenceImportResult,
        400: OpenApiResponse(description="Rejected: reasons and bad lines in `errors.file`; nothing was stored."),
    },
    summary="Import preference data (TRL, HH-RLHF or UltraFeedback) as imported votes",
)
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
@permission_classes([IsAdminUser])
def preferences_import(request: Request) -> Response:
    data = PreferenceImportInput(data=request.data)
    data.is_valid(raise_exception=True)
    upload, dataset_format = data.validated_data["file"], data.validated_data["format"]
    try:
        parsed = imports.parse_preferences(
            _upload_text(upload), dataset_format=dataset_format, skip_bad=data.validated_data["skip_bad"]
        )
        result = imports.preferences_import(
            preference_file=parsed,
            dataset_format=dataset_format,
            file_name=upload.name or "upload",
            prompt_set=data.validated_data["prompt_set"],
        )
    except imports.ImportRejected as rejected:
        raise _rejected(rejected) from None
    return Response(PreferenceImportResult(result).data, status=status.HTTP_201_CREATED)


# --- Pairs, votes, model versions ------------------------------------------------------------------------------


class CompletionItem(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    text = serializers.CharField()
    model_version = serializers.CharField(source="model_version.name")
    seed = serializers.IntegerField(allow_null=True)
    sampling = serializers.DictField()
    finish_reason = serializers.CharField()


class PairItem(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    prompt = serializers.IntegerField(source="prompt_id")
    messages = MessageItem(many=True, source="prompt.messages")
    completion_a = CompletionItem()
    completion_b = CompletionItem()
    sampled_from = serializers.CharField(source="sampled_from.name")
    judgements_required = serializers.IntegerField()
    judgement_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class PairFilter(serializers.Serializer[Any]):
    prompt_set = serializers.CharField(required=False)
    model_version = serializers.CharField(required=False, help_text="Pairs sampled from this version (its name).")
    complete = serializers.BooleanField(required=False, allow_null=True, default=None, help_text="Has all its votes.")


@extend_schema(
    parameters=[PairFilter],
    responses={200: _page_of(PairItem), 400: BAD_FILTERS, 403: NOT_STAFF},
    operation_id="pairs_list",
    summary="List pairs with their answers",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def pairs_list(request: Request) -> Response:
    query = _query(request, PairFilter)
    pairs = Pair.objects.select_related(
        "prompt", "completion_a__model_version", "completion_b__model_version", "sampled_from"
    ).order_by("id")
    if "prompt_set" in query:
        pairs = pairs.filter(prompt__prompt_set=query["prompt_set"])
    if "model_version" in query:
        pairs = pairs.filter(sampled_from__name=query["model_version"])
    if query.get("complete") is True:
        pairs = pairs.exclude(pk__in=Pair.objects.needing_judgements().values("pk"))
    elif query.get("complete") is False:
        pairs = pairs.needing_judgements()
    return _paginated(request, pairs, PairItem)


class JudgementItem(serializers.ModelSerializer[Judgement]):
    """A vote, its choice relative to the pair (a, b, tie or both_bad); imported votes have no annotator."""

    annotator = serializers.CharField(source="annotator.username", allow_null=True, default=None)

    class Meta:
        model = Judgement
        fields = [
            "id", "pair", "choice", "strength", "rationale", "annotator", "source", "source_detail", "a_on_left",
            "time_spent_ms", "created_at",
        ]  # fmt: skip


class JudgementFilter(serializers.Serializer[Any]):
    pair = serializers.IntegerField(required=False, min_value=1, max_value=2**63 - 1)
    annotator = serializers.CharField(required=False, help_text="Username.")
    # The stubs type Field.source (a field's attribute path) and so object to a field named "source"; DRF does not.
    source = serializers.ChoiceField(choices=exports.SOURCES, required=False)  # type: ignore[assignment]
    choice = serializers.ChoiceField(choices=Judgement.Choice.values, required=False)
    date_from = serializers.DateField(required=False, help_text="Cast on or after this day (UTC).")
    date_to = serializers.DateField(required=False, help_text="Cast on or before this day (UTC).")


@extend_schema(
    parameters=[JudgementFilter],
    responses={200: _page_of(JudgementItem), 400: BAD_FILTERS, 403: NOT_STAFF},
    operation_id="judgements_list",
    summary="List votes (every source, with who cast them)",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def judgements_list(request: Request) -> Response:
    query = _query(request, JudgementFilter)
    bad_dates = exports.date_errors(query.get("date_from"), query.get("date_to"))
    if bad_dates:
        raise ValidationError({name: [message] for name, message in bad_dates.items()})
    filters = ExportFilters(date_from=query.get("date_from"), date_to=query.get("date_to"))
    judgements = exports.judgements_matching(filters).select_related("annotator").order_by("id")
    if "pair" in query:
        judgements = judgements.filter(pair_id=query["pair"])
    if "annotator" in query:
        judgements = judgements.filter(annotator__username=query["annotator"])
    if "source" in query:
        judgements = judgements.filter(source=query["source"])
    if "choice" in query:
        judgements = judgements.filter(choice=query["choice"])
    return _paginated(request, judgements, JudgementItem)


class ModelVersionItem(serializers.ModelSerializer[ModelVersion]):
    parent_version = serializers.CharField(source="parent.name", read_only=True, allow_null=True)

    class Meta:
        model = ModelVersion
        fields = ["id", "name", "status", "base_model", "adapter_path", "parent_version", "created_at", "serving_since"]


class ModelVersionFilter(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=ModelVersion.Status.choices, required=False)


@extend_schema(
    parameters=[ModelVersionFilter],
    responses={200: _page_of(ModelVersionItem), 400: BAD_FILTERS, 403: NOT_STAFF},
    operation_id="model_versions_list",
    summary="List model versions (imported answers belong to external ones)",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def model_versions_list(request: Request) -> Response:
    query = _query(request, ModelVersionFilter)
    versions = ModelVersion.objects.select_related("parent").order_by("id")
    if "status" in query:
        versions = versions.filter(status=query["status"])
    return _paginated(request, versions, ModelVersionItem)


# --- Exports ---------------------------------------------------------------------------------------------------


class ExportInput(serializers.Serializer[Any]):
    dataset_format = serializers.ChoiceField(choices=exports.DATASET_FORMATS)
    file_format = serializers.ChoiceField(choices=exports.FILE_FORMATS, default="jsonl")
    date_from = serializers.DateField(required=False, allow_null=True, default=None)
    date_to = serializers.DateField(required=False, allow_null=True, default=None)
    prompt_sets = serializers.ListField(child=serializers.CharField(), default=list)
    model_versions = serializers.ListField(
        child=serializers.CharField(), default=list, help_text="Pairs sampled from these versions (names)."
    )
    annotators = serializers.ListField(child=serializers.CharField(), default=list, help_text="Usernames.")
    sources = serializers.ListField(child=serializers.ChoiceField(choices=exports.SOURCES), default=list)
    on_policy = serializers.BooleanField(default=False)
    combine = serializers.ChoiceField(choices=("majority", "all", "unanimous"), default="majority")
    include_ties = serializers.BooleanField(default=False)
    include_both_bad = serializers.BooleanField(default=False)
    include_gold = serializers.BooleanField(default=False, help_text="Votes on gold pairs (left out by default).")
    include_repeats = serializers.BooleanField(default=False, help_text="Repeat votes (left out by default).")
    include_excluded_annotators = serializers.BooleanField(
        default=False, help_text="Votes of annotators staff excluded (left out by default)."
    )
    exclude_head_to_head = serializers.BooleanField(
        default=False, help_text="Leave out votes on head-to-head pairs (answers from two model versions)."
    )
    min_competence = serializers.FloatField(
        default=0.0, min_value=0.0, max_value=1.0, help_text="Leave out annotators whose MACE competence is lower."
    )
    min_agreement = serializers.FloatField(default=0.0, min_value=0.0, max_value=1.0)
    weighting = serializers.ChoiceField(
        choices=WEIGHTINGS,
        default="none",
        help_text="trl-preference only: a weight column from the votes' strength and/or their voters' competence.",
    )
    license = serializers.CharField(default="", allow_blank=True, max_length=100, help_text="Stated on the card.")

    def to_filters(self) -> ExportFilters:
        return ExportFilters.from_values(self.validated_data)


class ExportItem(serializers.ModelSerializer[Export]):
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)
    progress_percent = serializers.IntegerField(read_only=True, allow_null=True)
    download = serializers.SerializerMethodField()
    card = serializers.SerializerMethodField()

    class Meta:
        model = Export
        fields = [
            "id", "dataset_format", "file_format", "filters", "status", "votes_total", "votes_read",
            "progress_percent", "row_count", "error", "created_by", "created_at", "finished_at", "download", "card",
        ]  # fmt: skip
        extra_kwargs = {
            "votes_total": {"help_text": "Votes matching the filters (known once the export runs)."},
            "votes_read": {"help_text": "Votes read so far; poll this endpoint while status is queued or running."},
            "error": {"help_text": "Why it failed, or why a queued export has not started (task queue down)."},
        }

    def _url(self, export: Export, which: str) -> str | None:
        if which not in exports.export_files(export):
            return None
        url = reverse("api-export-download", args=[export.pk]) + f"?file={which}"
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url

    @extend_schema_field(serializers.URLField(allow_null=True))  # null until the export is done
    def get_download(self, export: Export) -> str | None:
        return self._url(export, "data")

    @extend_schema_field(serializers.URLField(allow_null=True))  # null until the export is done
    def get_card(self, export: Export) -> str | None:
        return self._url(export, "card")


def _exports_list(request: Request) -> Response:
    return _paginated(request, Export.objects.select_related("created_by").order_by("-id"), ExportItem)


def _exports_create(request: Request) -> Response:
    data = ExportInput(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        export = exports.export_request(
            created_by=_staff(request),
            dataset_format=data.validated_data["dataset_format"],
            file_format=data.validated_data["file_format"],
            filters=data.to_filters(),
        )
    except exports.InvalidExport as invalid:
        raise ValidationError(invalid.errors) from None
    return Response(ExportItem(export, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    methods=["GET"],
    responses={200: _page_of(ExportItem), 403: NOT_STAFF},
    operation_id="exports_list",
    summary="List exports",
)
@extend_schema(
    methods=["POST"],
    request=ExportInput,
    responses={
        202: OpenApiResponse(
            ExportItem,
            description="Recorded (status queued) and handed to a worker; poll the export's own URL for progress. "
            "If the task queue is down it stays queued and `error` says so.",
        ),
        400: OpenApiResponse(description="Invalid fields or unknown names, in `errors`; nothing was recorded."),
        403: NOT_STAFF,
    },
    summary="Export votes as a dataset with its card (written in the background by a worker)",
)
@api_view(["GET", "POST"])
@permission_classes([IsAdminUser])
def exports_collection(request: Request) -> Response:
    return _exports_list(request) if request.method == "GET" else _exports_create(request)


@extend_schema(responses={200: ExportItem, 403: NOT_STAFF, 404: OpenApiResponse(description="No such export.")},
               summary="An export's status, progress (votes read), filters and links")  # fmt: skip
@api_view(["GET"])
@permission_classes([IsAdminUser])
def exports_detail(request: Request, export_id: int) -> Response:
    export = get_object_or_404(Export.objects.select_related("created_by"), pk=export_id)
    return Response(ExportItem(export, context={"request": request}).data)


@extend_schema(
    parameters=[OpenApiParameter("file", enum=["data", "card"], default="data", description="The data or its card.")],
    responses={
        (200, "application/octet-stream"): OpenApiTypes.BINARY,
        403: NOT_STAFF,
        404: OpenApiResponse(description="No such export, not finished, or its file is gone."),
    },
    summary="Download an export's data file or its dataset card",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def exports_download(request: Request, export_id: int) -> FileResponse | Response:
    export = get_object_or_404(Export, pk=export_id)
    which = request.query_params.get("file", "data")
    if which not in ("data", "card"):
        raise ValidationError({"file": ["must be data or card"]})
    path = exports.export_files(export).get(which)
    if path is None:
        return Response({"detail": f"export {export.pk} has no {which} file (status {export.status})"}, status=404)
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)


# --- Training rounds and model versions ------------------------------------------------------------------


def _config_field(spec: FieldSpec) -> serializers.Field[Any, Any, Any, Any]:
    """A serializer field with exactly the spec's bounds (training.config, capped by the model server's LoRA limit)."""
    if spec.choices:
        return serializers.ChoiceField(choices=spec.choices, required=False, help_text=spec.help)
    lowest = min([spec.minimum, *spec.allowed_values]) if spec.minimum is not None else None
    if spec.kind is int:
        top = int(spec.maximum) if spec.maximum is not None else None
        return serializers.IntegerField(required=False, min_value=lowest, max_value=top, help_text=spec.help)
    return serializers.FloatField(required=False, min_value=lowest, max_value=spec.maximum, help_text=spec.help)


class RoundInput(serializers.Serializer[Any]):
    """Config overrides; anything left out takes the defaults in settings (ROUND_*). Fields and bounds come from
    training.config's field spec, as the Start round form's do."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields: dict[str, serializers.Field[Any, Any, Any, Any]] = {
            spec.name: _config_field(spec) for spec in rounds.round_config_fields()
        }
        fields["gate_mode"] = serializers.ChoiceField(
            choices=TrainingRound.GateMode.choices,
            required=False,
            help_text="offline, human (a canary of head-to-head votes) or both; ROUND_GATE_MODE when left out",
        )
        return fields

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors = rounds.round_config_errors({name: value for name, value in attrs.items() if name != "gate_mode"})
        if errors:
            raise ValidationError(errors)
        return attrs


class RoundOutput(serializers.ModelSerializer[TrainingRound]):
    parent_version = serializers.CharField(source="parent_version.name", read_only=True)
    result_version = serializers.CharField(source="result_version.name", read_only=True, allow_null=True)
    progress_percent = serializers.IntegerField(read_only=True)
    metrics = serializers.ListField(child=serializers.DictField(), read_only=True, help_text="One entry per step.")

    class Meta:
        model = TrainingRound
        fields = [
            "id", "status", "trigger", "parent_version", "result_version", "config", "rules", "votes_read",
            "last_judgement_id", "holdout_fraction", "train_pairs", "heldout_pairs", "progress_percent", "metrics",
            "evaluation", "phase_seconds", "override_reason", "error", "log_tail", "created_at", "started_at",
            "finished_at", "revision", "gate_mode", "canary_started_at", "canary_decision",
        ]  # fmt: skip


def _app_error(error: Conflict | Invalid) -> Response:
    if isinstance(error, Invalid):
        return Response({"errors": error.errors}, status=status.HTTP_400_BAD_REQUEST)
    return Response({"detail": str(error), "code": error.code}, status=status.HTTP_409_CONFLICT)


@extend_schema(
    request=RoundInput,
    responses={201: RoundOutput, 400: OpenApiResponse(description="Invalid config fields, named in `errors`."),
               409: OpenApiResponse(description="A round is running, or there are too few votes (`detail`).")},
    summary="Start a training round",
)  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def rounds_create(request: Request) -> Response:
    data = RoundInput(data=request.data)
    data.is_valid(raise_exception=True)
    overrides = dict(data.validated_data)
    gate_mode = overrides.pop("gate_mode", None)
    try:
        training_round = rounds.round_start(
            trigger=TrainingRound.Trigger.API, started_by=_staff(request), overrides=overrides, gate_mode=gate_mode
        )
    except (Conflict, Invalid) as error:
        return _app_error(error)
    return Response(RoundOutput(training_round).data, status=status.HTTP_201_CREATED)


@extend_schema(responses={200: RoundOutput}, summary="A training round, with its live metrics and evaluation")
@api_view(["GET"])
@permission_classes([IsAdminUser])
def rounds_detail(request: Request, round_id: int) -> Response:
    return Response(RoundOutput(get_object_or_404(TrainingRound, pk=round_id)).data)


@extend_schema(request=None, responses={202: RoundOutput, 409: OpenApiResponse(description="Not running.")},
               summary="Cancel a running round")  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def rounds_cancel(request: Request, round_id: int) -> Response:
    training_round = get_object_or_404(TrainingRound, pk=round_id)
    try:
        rounds.round_cancel(training_round=training_round)
    except (Conflict, Invalid) as error:
        return _app_error(error)
    training_round.refresh_from_db()
    return Response(RoundOutput(training_round).data, status=status.HTTP_202_ACCEPTED)


class PromoteInput(serializers.Serializer[Any]):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


@extend_schema(
    request=PromoteInput,
    responses={202: RoundOutput, 409: OpenApiResponse(description="Nothing to promote, or a reason is missing.")},
    summary="Deploy a round the eval gate rejected (with a reason), or retry a deploy",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def rounds_promote(request: Request, round_id: int) -> Response:
    training_round = get_object_or_404(TrainingRound, pk=round_id)
    data = PromoteInput(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        rounds.round_promote(training_round=training_round, by=_staff(request), reason=data.validated_data["reason"])
    except (Conflict, Invalid) as error:
        return _app_error(error)
    return Response(RoundOutput(training_round).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    request=None,
    responses={200: ModelVersionItem, 409: OpenApiResponse(description="It cannot serve (rejected or imported)."),
               503: OpenApiResponse(description="The model server could not load it; nothing changed.")},
    summary="Make a model version serve new pairs (roll back or forward)",
)  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def model_versions_serve(request: Request, version_id: int) -> Response:
    version = get_object_or_404(ModelVersion, pk=version_id)
    try:
        with client_from_settings() as client:
            version.serve(client)
    except ModelServerUnavailable as error:
        return Response({"detail": str(error), "code": "unavailable"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    except (Conflict, ModelServerRefused) as error:
        return Response({"detail": str(error), "code": "conflict"}, status=status.HTTP_409_CONFLICT)
    return Response(ModelVersionItem(version).data)


# --- Campaigns, gold pairs, decisions about annotators --------------------------------------------------------


class CampaignItem(serializers.ModelSerializer[Campaign]):
    groups = serializers.SlugRelatedField(
        many=True, slug_field="name", queryset=Group.objects.all(), required=False, help_text="Empty: everyone."
    )
    votes_per_pair = serializers.IntegerField(min_value=1, max_value=50, default=1)
    gold_rate = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.0)
    repeat_rate = serializers.FloatField(min_value=0.0, max_value=1.0, default=0.0)

    class Meta:
        model = Campaign
        fields = [
            "id", "name", "title", "guidelines", "votes_per_pair", "gold_rate", "repeat_rate", "groups", "is_active",
            "created_at",
        ]  # fmt: skip

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        gold = attrs.get("gold_rate", getattr(self.instance, "gold_rate", 0.0))
        repeat = attrs.get("repeat_rate", getattr(self.instance, "repeat_rate", 0.0))
        if gold + repeat > 1:
            raise ValidationError({"repeat_rate": ["gold and repeat rates together must not exceed 1"]})
        return attrs


@extend_schema(methods=["GET"], responses={200: _page_of(CampaignItem), 403: NOT_STAFF}, operation_id="campaigns_list",
               summary="List campaigns")  # fmt: skip
@extend_schema(
    methods=["POST"],
    request=CampaignItem,
    responses={201: CampaignItem, 400: OpenApiResponse(description="Invalid fields, named in `errors`.")},
    summary="Create a campaign (its name is the prompt set its prompts name)",
)
@api_view(["GET", "POST"])
@permission_classes([IsAdminUser])
def campaigns(request: Request) -> Response:
    if request.method == "GET":
        return _paginated(request, Campaign.objects.prefetch_related("groups").order_by("name"), CampaignItem)
    data = CampaignItem(data=request.data)
    data.is_valid(raise_exception=True)
    return Response(CampaignItem(data.save()).data, status=status.HTTP_201_CREATED)


@extend_schema(methods=["GET"], responses={200: CampaignItem, 404: OpenApiResponse(description="No such campaign.")},
               summary="A campaign")  # fmt: skip
@extend_schema(methods=["PATCH"], request=CampaignItem, responses={200: CampaignItem},
               summary="Change a campaign (new pairs take its overlap; older ones keep theirs)")  # fmt: skip
@api_view(["GET", "PATCH"])
@permission_classes([IsAdminUser])
def campaign_detail(request: Request, campaign_id: int) -> Response:
    campaign = get_object_or_404(Campaign, pk=campaign_id)
    if request.method == "GET":
        return Response(CampaignItem(campaign).data)
    data = CampaignItem(campaign, data=request.data, partial=True)
    data.is_valid(raise_exception=True)
    return Response(CampaignItem(data.save()).data)


class GoldInput(serializers.Serializer[Any]):
    expected = serializers.ChoiceField(
        choices=["", *Judgement.Choice.values], allow_blank=True, help_text="a, b, tie or both_bad; empty: not gold."
    )


@extend_schema(request=GoldInput, responses={200: PairItem, 404: OpenApiResponse(description="No such pair.")},
               summary="Mark a pair as gold with its expected answer (or unmark it)")  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAdminUser])
def pairs_gold(request: Request, pair_id: int) -> Response:
    pair = get_object_or_404(Pair, pk=pair_id)
    data = GoldInput(data=request.data)
    data.is_valid(raise_exception=True)
    pair = services.pair_mark_gold(pair=pair, expected=data.validated_data["expected"])
    return Response(PairItem(pair).data)


class AnnotatorActionInput(serializers.Serializer[Any]):
    action = serializers.ChoiceField(choices=AnnotatorAction.Action.choices)
    reason = serializers.CharField(max_length=2000)


class AnnotatorStandingItem(serializers.Serializer[Any]):
    annotator = serializers.CharField(source="annotator.username")
    paused = serializers.BooleanField()
    votes_excluded = serializers.BooleanField()


@extend_schema(
    request=AnnotatorActionInput,
    responses={200: AnnotatorStandingItem, 404: OpenApiResponse(description="No such user.")},
    summary="Pause or resume an annotator, or exclude or include their votes (recorded with the reason)",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def annotators_act(request: Request, username: str) -> Response:
    annotator = get_object_or_404(User, username=username)
    data = AnnotatorActionInput(data=request.data)
    data.is_valid(raise_exception=True)
    standing = services.annotator_act(
        annotator=annotator, action=data.validated_data["action"], by=_staff(request),
        reason=data.validated_data["reason"],
    )  # fmt: skip
    return Response(AnnotatorStandingItem(standing).data)


class CanaryDecisionInput(serializers.Serializer[Any]):
    decision = serializers.ChoiceField(choices=[canary.PROMOTE, canary.REJECT])
    reason = serializers.CharField(max_length=2000, help_text="Why decide before the votes do (required).")


@extend_schema(
    request=CanaryDecisionInput,
    responses={
        202: RoundOutput,
        400: OpenApiResponse(description="No reason, or an unknown decision."),
        409: OpenApiResponse(description="The round is not a canary (any more)."),
    },
    summary="Decide a round's canary early: promote (it deploys) or reject (its adapter is unloaded)",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def rounds_canary_decide(request: Request, round_id: int) -> Response:
    training_round = get_object_or_404(TrainingRound, pk=round_id)
    data = CanaryDecisionInput(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        canary.canary_decide_early(
            training_round=training_round,
            by=_staff(request),
            decision=data.validated_data["decision"],
            reason=data.validated_data["reason"],
        )
    except (Conflict, Invalid) as error:
        return _app_error(error)
    training_round.refresh_from_db()
    return Response(RoundOutput(training_round).data, status=status.HTTP_202_ACCEPTED)


# --- Vote quality ----------------------------------------------------------------------------------------------


class QualityAgreementItem(serializers.Serializer[Any]):
    alpha_nominal = serializers.FloatField(
        allow_null=True,
        help_text="Krippendorff's alpha over a/b/tie/both_bad; null (undefined) with fewer than two annotators or "
        "pairable pairs.",
    )
    alpha_ordinal = serializers.FloatField(allow_null=True, help_text="On the signed strength scale -3..+3 (tie 0).")
    annotators = serializers.IntegerField()
    units = serializers.IntegerField(source="items", help_text="Pairs with votes.")
    pairable_units = serializers.IntegerField(source="pairable_items", help_text="Pairs with two annotators or more.")
    votes = serializers.IntegerField(help_text="First votes (repeats left out).")


class QualityFlagItem(serializers.Serializer[Any]):
    code = serializers.CharField(help_text="position_bias, fast, low_competence, gold or inconsistent")
    reason = serializers.CharField()


class QualityAnnotatorItem(serializers.Serializer[Any]):
    username = serializers.CharField()
    votes = serializers.IntegerField()
    left_share = serializers.FloatField(allow_null=True, help_text="Share of decisive votes for the left answer.")
    left_decisive = serializers.IntegerField(help_text="Decisive votes whose screen side is known.")
    position_p_value = serializers.FloatField(allow_null=True, help_text="Two-sided binomial test against 50 %.")
    median_seconds = serializers.FloatField(allow_null=True)
    share_under_floor = serializers.FloatField(allow_null=True, help_text="Share of votes under the speed floor.")
    longer_share = serializers.FloatField(allow_null=True, help_text="Share of decisive votes for the longer answer.")
    longer_decisive = serializers.IntegerField()
    campaign_longer_share = serializers.FloatField(allow_null=True, help_text="The same share over every annotator.")
    tie_rate = serializers.FloatField(allow_null=True)
    both_bad_rate = serializers.FloatField(allow_null=True)
    gold_accuracy = serializers.FloatField(allow_null=True)
    gold_answered = serializers.IntegerField()
    self_consistency = serializers.FloatField(allow_null=True)
    repeats = serializers.IntegerField()
    majority_agreement = serializers.FloatField(allow_null=True, help_text="With the leave-one-out majority.")
    majority_compared = serializers.IntegerField()
    competence = serializers.FloatField(allow_null=True, help_text="MACE: 1 - the probability of guessing.")
    flags = QualityFlagItem(many=True)
    paused = serializers.BooleanField()
    votes_excluded = serializers.BooleanField()


class QualityKappaItem(serializers.Serializer[Any]):
    annotator = serializers.CharField()
    other = serializers.CharField()
    shared_pairs = serializers.IntegerField()
    kappa = serializers.FloatField(allow_null=True, help_text="Cohen's kappa; null when undefined.")


class QualityOutput(serializers.Serializer[Any]):
    agreement = QualityAgreementItem()
    annotators = QualityAnnotatorItem(many=True, help_text="In the order asked for by `sort`.")
    kappas = QualityKappaItem(many=True)


QUALITY_PARAMETERS = [
    OpenApiParameter("campaign", OpenApiTypes.INT, description="A campaign's id."),
    OpenApiParameter("date_from", OpenApiTypes.DATE, description="Votes cast on or after this day (UTC)."),
    OpenApiParameter("date_to", OpenApiTypes.DATE, description="Votes cast on or before this day (UTC)."),
    OpenApiParameter("round", OpenApiTypes.INT, description="A training round's id: only the votes it read."),
    OpenApiParameter(
        "sort",
        OpenApiTypes.STR,
        enum=[value for value, _ in quality_views.SORT_CHOICES],
        description="A column of the annotator table; a leading '-' sorts high first.",
    ),
]


@extend_schema(
    parameters=QUALITY_PARAMETERS,
    responses={200: QualityOutput, 400: BAD_FILTERS, 403: NOT_STAFF},
    summary="Agreement between annotators and each annotator's signals and flags, for a campaign, days or a round",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def quality(request: Request) -> Response:
    filters = quality_views.QualityFilters(request.query_params)
    if not filters.is_valid():
        raise ValidationError({field: [str(error) for error in errors] for field, errors in filters.errors.items()})
    report, rows = quality_views.quality_rows(filters)
    return Response(
        QualityOutput(
            {
                "agreement": report.agreement,
                "annotators": [
                    {**vars(row), "flags": [{"code": flag.code, "reason": flag.reason} for flag in row.flags]}
                    for row in rows
                ],
                "kappas": report.kappas,
            }
        ).data
    )
