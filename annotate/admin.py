from django.contrib import admin

from annotate.annotation.campaign_views import CampaignForm
from annotate.models import (
    AnnotatorAction,
    AnnotatorStanding,
    Assignment,
    Campaign,
    Completion,
    Judgement,
    ModelVersion,
    Pair,
    Prompt,
)


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "__str__",
        "prompt_set",
        "source",
        "is_active",
        "refusal_count",
        "last_refused_at",
        "created_at",
    ]
    list_filter = ["prompt_set", "is_active", "source"]
    search_fields = ["messages"]
    readonly_fields = ["last_refusal", "last_refused_at"]


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "parent", "adapter_path", "serving_since", "created_at"]
    list_filter = ["status"]


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "model_version", "seed", "finish_reason", "completion_tokens", "latency_ms"]
    list_filter = ["model_version", "finish_reason"]
    readonly_fields = [field.name for field in Completion._meta.fields]


@admin.register(Pair)
class PairAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "sampled_from", "judgement_count", "judgements_required", "created_at"]
    list_filter = ["sampled_from"]
    raw_id_fields = ["prompt", "completion_a", "completion_b"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "pair", "annotator", "status", "a_on_left", "leased_at", "expires_at"]
    list_filter = ["status"]
    raw_id_fields = ["pair"]


@admin.register(Judgement)
class JudgementAdmin(admin.ModelAdmin):
    list_display = ["id", "pair", "annotator", "choice", "strength", "source", "created_at"]
    list_filter = ["choice", "source"]
    raw_id_fields = ["pair", "assignment"]
    # Votes are evidence: they are looked at here, never edited.
    readonly_fields = [field.name for field in Judgement._meta.fields]


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm  # the same bounds as the Campaigns page and the API
    list_display = ["name", "title", "votes_per_pair", "gold_rate", "repeat_rate", "sides", "is_active"]
    list_filter = ["is_active"]
    filter_horizontal = ["groups"]


@admin.register(AnnotatorStanding)
class AnnotatorStandingAdmin(admin.ModelAdmin):
    list_display = ["annotator", "paused", "votes_excluded"]
    # Changed through the quality page or the API, which record who and why; here it is only read.
    readonly_fields = ["annotator", "paused", "votes_excluded"]


@admin.register(AnnotatorAction)
class AnnotatorActionAdmin(admin.ModelAdmin):
    list_display = ["annotator", "action", "by", "created_at", "reason"]
    list_filter = ["action"]
    readonly_fields = [field.name for field in AnnotatorAction._meta.fields]
