"""The staff API for data: prompts, pairs and votes, imports, exports with their cards, gold pairs."""

from typing import Any

from django.http import FileResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes, permission_classes
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from annotate.annotation import services
from annotate.data import exports, import_jobs, imports
from annotate.data.exports import ExportFilters
from annotate.models import DataImport, Export, Judgement, Pair, Prompt
from annotate.quality.judge_rule import JUDGE_RULES, JUDGE_WEIGHT_DEFAULT, JUDGE_WEIGHT_HELP, judge_rule_errors
from annotate.quality.preferences import EDITS_RULES
from annotate.web.staff_api import (
    BAD_FILTERS,
    NOT_STAFF,
    page_of,
    paginated,
    query_of,
    staff_of,
)
from training.config import WEIGHTINGS

ROLES = ("system", "user", "assistant")


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
    query = query_of(request, PromptFilter)
    prompts = Prompt.objects.order_by("id")
    if "prompt_set" in query:
        prompts = prompts.filter(prompt_set=query["prompt_set"])
    if "active" in query:
        prompts = prompts.filter(is_active=query["active"])
    return paginated(request, prompts, PromptItem)


def _prompts_create(request: Request) -> Response:
    data = PromptCreateInput(data=request.data)
    data.is_valid(raise_exception=True)
    fields = {key: value for key, value in data.validated_data.items() if key in ("prompt", "system", "messages")}
    try:
        row = imports.prompt_row_from({**fields, "tags": data.validated_data["tags"]})
    except ValueError as error:
        raise ValidationError({next(iter(fields), "prompt"): [str(error)]}) from None
    prompt = imports.prompt_create(row=row, prompt_set=data.validated_data["prompt_set"], source="api")
    return Response(PromptItem(prompt).data, status=status.HTTP_201_CREATED)


@extend_schema(
    methods=["GET"],
    parameters=[PromptFilter],
    responses={200: page_of(PromptItem), 400: BAD_FILTERS, 403: NOT_STAFF},
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


class PreferenceImportInput(serializers.Serializer[Any]):
    file = serializers.FileField(help_text="JSON Lines.")
    format = serializers.ChoiceField(choices=imports.PREFERENCE_FORMATS)
    skip_bad = serializers.BooleanField(default=False, help_text="Import the good rows and list the bad ones.")
    prompt_set = serializers.CharField(max_length=100, default="imported", help_text="For prompts not stored yet.")


class LineErrorItem(serializers.Serializer[Any]):
    line = serializers.IntegerField()
    reason = serializers.CharField()


class DataImportItem(serializers.ModelSerializer[DataImport]):
    url = serializers.SerializerMethodField(help_text="This import: poll it while status is queued or running.")
    created_by = serializers.CharField(source="created_by.username", read_only=True, allow_null=True)
    progress_percent = serializers.IntegerField(read_only=True, allow_null=True)
    result = serializers.DictField(
        help_text="Once done. Prompts: created, duplicates, prompt_set. Preference data: imported (pairs stored, "
        "each with one imported vote), duplicates (imported before: skipped), new_prompts, model_version (the "
        "external version the answers belong to), skipped (bad rows left out with skip_bad, listed in line_errors)."
    )
    line_errors = LineErrorItem(
        many=True,
        help_text=f"The bad lines: why it failed, or the rows skipped (the first {import_jobs.LINE_ERRORS_KEPT}).",
    )

    class Meta:
        model = DataImport
        fields = [
            "id", "url", "kind", "file_name", "file_format", "options", "size_bytes", "status", "rows_total",
            "rows_done", "progress_percent", "result", "error", "line_errors", "line_error_count", "created_by",
            "created_at", "finished_at",
        ]  # fmt: skip
        extra_kwargs = {
            "error": {"help_text": "Why it failed, or why a queued import has not started (task queue down)."}
        }

    @extend_schema_field(serializers.URLField())
    def get_url(self, data_import: DataImport) -> str:
        url = reverse("api-import", args=[data_import.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request is not None else url


IMPORT_ACCEPTED = OpenApiResponse(
    DataImportItem,
    description="Recorded (status queued) and handed to a worker: poll `url` for progress and the outcome (the "
    "file's bad lines, if any, come there). The same upload sent again while the first is queued or running "
    "answers with the first.",
)
IMPORT_REFUSED = OpenApiResponse(
    description="Refused at once, nothing recorded: a missing or unknown field, a file too large, in an unknown "
    "format, not UTF-8, or a CSV without a `prompt` column (reasons in `errors`)."
)


def _import_accepted(request: Request, **fields: Any) -> Response:
    try:
        data_import, _ = import_jobs.data_import_request(created_by=staff_of(request), **fields)
    except imports.ImportRejected as rejected:
        raise ValidationError({"file": rejected.details()}) from None
    body = DataImportItem(data_import, context={"request": request}).data
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


@extend_schema(
    request={"multipart/form-data": PromptImportInput},
    responses={202: IMPORT_ACCEPTED, 400: IMPORT_REFUSED, 403: NOT_STAFF},
    summary="Import a file of prompts (all or nothing; a worker imports it)",
)
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
@permission_classes([IsAdminUser])
def prompts_import(request: Request) -> Response:
    data = PromptImportInput(data=request.data)
    data.is_valid(raise_exception=True)
    return _import_accepted(
        request,
        kind=DataImport.Kind.PROMPTS,
        upload=data.validated_data["file"],
        file_format=data.validated_data.get("format"),
        options={"prompt_set": data.validated_data["prompt_set"]},
    )


@extend_schema(
    request={"multipart/form-data": PreferenceImportInput},
    responses={202: IMPORT_ACCEPTED, 400: IMPORT_REFUSED, 403: NOT_STAFF},
    summary="Import preference data (TRL, HH-RLHF or UltraFeedback) as imported votes (a worker imports it)",
)
@api_view(["POST"])
@parser_classes([MultiPartParser, FormParser])
@permission_classes([IsAdminUser])
def preferences_import(request: Request) -> Response:
    data = PreferenceImportInput(data=request.data)
    data.is_valid(raise_exception=True)
    return _import_accepted(
        request,
        kind=DataImport.Kind.PREFERENCES,
        upload=data.validated_data["file"],
        file_format=data.validated_data["format"],
        options={"prompt_set": data.validated_data["prompt_set"], "skip_bad": data.validated_data["skip_bad"]},
    )


@extend_schema(responses={200: DataImportItem, 403: NOT_STAFF, 404: OpenApiResponse(description="No such import.")},
               summary="An import's status, progress (rows written) and outcome")  # fmt: skip
@api_view(["GET"])
@permission_classes([IsAdminUser])
def imports_detail(request: Request, import_id: int) -> Response:
    data_import = get_object_or_404(DataImport.objects.select_related("created_by"), pk=import_id)
    return Response(DataImportItem(data_import, context={"request": request}).data)


NOT_QUEUED = OpenApiResponse(
    description="It is running or has ended already (its `status` in the answer): only a queued one is sent again."
)


@extend_schema(
    request=None,
    responses={
        202: OpenApiResponse(
            DataImportItem,
            description="Handed to a worker again (still queued). If the task queue is still down, `error` says so.",
        ),
        403: NOT_STAFF,
        404: OpenApiResponse(description="No such import."),
        409: NOT_QUEUED,
    },
    summary="Send a queued import to the workers again (after the task queue was unreachable)",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def imports_enqueue(request: Request, import_id: int) -> Response:
    data_import = get_object_or_404(DataImport.objects.select_related("created_by"), pk=import_id)
    data_import.require_queued()
    import_jobs.data_import_enqueue(data_import=data_import)
    body = DataImportItem(data_import, context={"request": request}).data
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


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
    responses={200: page_of(PairItem), 400: BAD_FILTERS, 403: NOT_STAFF},
    operation_id="pairs_list",
    summary="List pairs with their answers",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def pairs_list(request: Request) -> Response:
    query = query_of(request, PairFilter)
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
    return paginated(request, pairs, PairItem)


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
    responses={200: page_of(JudgementItem), 400: BAD_FILTERS, 403: NOT_STAFF},
    operation_id="judgements_list",
    summary="List votes (every source, with who cast them)",
)
@api_view(["GET"])
@permission_classes([IsAdminUser])
def judgements_list(request: Request) -> Response:
    query = query_of(request, JudgementFilter)
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
    return paginated(request, judgements, JudgementItem)


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
    judge = serializers.ChoiceField(
        choices=JUDGE_RULES,
        default="out",
        help_text="Votes of the AI judge on pairs it settled alone: out (the default), weight (trl-preference only: "
        "each counts judge_weight, a person's vote 1) or in.",
    )
    judge_weight = serializers.FloatField(default=JUDGE_WEIGHT_DEFAULT, help_text=JUDGE_WEIGHT_HELP)
    min_competence = serializers.FloatField(
        default=0.0, min_value=0.0, max_value=1.0, help_text="Leave out annotators whose MACE competence is lower."
    )
    min_agreement = serializers.FloatField(default=0.0, min_value=0.0, max_value=1.0)
    edits = serializers.ChoiceField(
        choices=EDITS_RULES,
        default="edits_and_choices",
        help_text="trl-preference only: rows of annotators' written answers (chosen over each sampled answer).",
    )
    weighting = serializers.ChoiceField(
        choices=WEIGHTINGS,
        default="none",
        help_text="trl-preference only: a weight column from the votes' strength and/or their voters' competence.",
    )
    license = serializers.CharField(default="", allow_blank=True, max_length=100, help_text="Stated on the card.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors = judge_rule_errors(attrs.get("judge", "out"), attrs.get("judge_weight", JUDGE_WEIGHT_DEFAULT))
        if errors:
            raise serializers.ValidationError(errors)
        return attrs

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
    return paginated(request, Export.objects.select_related("created_by").order_by("-id"), ExportItem)


def _exports_create(request: Request) -> Response:
    data = ExportInput(data=request.data)
    data.is_valid(raise_exception=True)
    export = exports.export_request(
        created_by=staff_of(request),
        dataset_format=data.validated_data["dataset_format"],
        file_format=data.validated_data["file_format"],
        filters=data.to_filters(),
    )
    return Response(ExportItem(export, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(
    methods=["GET"],
    responses={200: page_of(ExportItem), 403: NOT_STAFF},
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
    request=None,
    responses={
        202: OpenApiResponse(
            ExportItem,
            description="Handed to a worker again (still queued). If the task queue is still down, `error` says so.",
        ),
        403: NOT_STAFF,
        404: OpenApiResponse(description="No such export."),
        409: NOT_QUEUED,
    },
    summary="Send a queued export to the workers again (after the task queue was unreachable)",
)
@api_view(["POST"])
@permission_classes([IsAdminUser])
def exports_enqueue(request: Request, export_id: int) -> Response:
    export = get_object_or_404(Export.objects.select_related("created_by"), pk=export_id)
    export.require_queued()
    exports.export_enqueue(export=export)
    return Response(ExportItem(export, context={"request": request}).data, status=status.HTTP_202_ACCEPTED)


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
