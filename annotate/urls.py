"""Every URL, grouped by who calls it: annotators' pages and API, staff pages and API."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from annotate.annotation import api, campaign_views, edit_api, edit_views, rank_views, views
from annotate.annotation import staff_api as campaign_api
from annotate.dashboard import api as dashboard_api
from annotate.dashboard import views as dashboard_views
from annotate.data import api as data_api
from annotate.data import views as data_views
from annotate.hooks import api as hooks_api
from annotate.hooks import views as hooks_views
from annotate.judging import api as judging_api
from annotate.judging import views as judging_views
from annotate.leaderboard import api as leaderboard_api
from annotate.leaderboard import views as leaderboard_views
from annotate.quality import api as quality_api
from annotate.quality import views as quality_views
from annotate.rounds import api as rounds_api
from annotate.rounds import views as round_views
from annotate.turns import api as turns_api
from annotate.turns import views as turns_views
from annotate.web import sso


class DatabaseIdConverter:
    """A row id: digits that fit a 64-bit integer column, so a huge number is a 404, not a database overflow."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(DatabaseIdConverter, "id")

annotator_pages = [
    path("", views.annotate, name="annotate"),
    path("pairs/<id:pair_id>/judge/", views.judge, name="judge"),
    path("pairs/<id:pair_id>/skip/", views.skip, name="skip"),
    path("pairs/<id:pair_id>/rank/", rank_views.rank, name="rank"),
    path("votes/undo/", views.undo, name="undo"),
    path("pairs/<id:pair_id>/continue/", turns_views.next_turn, name="next-turn"),
    path("conversations/<id:continuation_id>/stream/", turns_views.stream, name="continuation-stream"),
    path("conversations/<id:continuation_id>/later/", turns_views.stop_waiting, name="continuation-later"),
    path("conversations/<id:continuation_id>/retry/", turns_views.retry, name="continuation-retry"),
    path("accounts/login/", sso.LoginView.as_view(), name="login"),
    path("accounts/sso/login/", sso.sso_login, name="sso-login"),
    path("accounts/sso/callback/", sso.sso_callback, name="sso-callback"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]

annotator_api = [
    path("api/pairs/next/", api.pairs_next, name="api-pairs-next"),
    path("api/pairs/skip/", api.pairs_skip, name="api-pairs-skip"),
    path("api/judgements/", api.judgements_create, name="api-judgements"),
    path("api/judgements/undo/", api.judgements_undo, name="api-judgements-undo"),
    path("api/conversations/", turns_api.conversations_create, name="api-conversations"),
    path("api/conversations/<id:continuation_id>/", turns_api.conversation_detail, name="api-conversation"),
]

staff_pages = [
    path("campaigns/", campaign_views.campaigns, name="campaigns"),
    path("campaigns/<id:campaign_id>/", campaign_views.campaign_edit, name="campaign-edit"),
    path("campaigns/<id:campaign_id>/judge/", judging_views.judge_page, name="campaign-judge"),
    path("campaigns/<id:campaign_id>/judge/run/", judging_views.judge_run, name="campaign-judge-run"),
    path("pairs/<id:pair_id>/", campaign_views.pair_detail, name="pair-detail"),
    path("pairs/<id:pair_id>/gold/", campaign_views.pair_gold, name="pair-gold"),
    path("edits/<id:answer_id>/review/", edit_views.edit_review, name="edit-review"),
    path("rounds/", round_views.rounds_list, name="rounds"),
    path("rounds/start/", round_views.round_start, name="round-start"),
    path("rounds/<id:round_id>/", round_views.round_detail, name="round-detail"),
    path("rounds/<id:round_id>/cancel/", round_views.round_cancel, name="round-cancel"),
    path("rounds/<id:round_id>/promote/", round_views.round_promote, name="round-promote"),
    path("rounds/<id:round_id>/canary/", round_views.round_canary_decide, name="round-canary-decide"),
    path("versions/<id:version_id>/serve/", round_views.version_serve, name="version-serve"),
    path("data/prompts/import/", data_views.prompts_import, name="data-prompts-import"),
    path("data/preferences/import/", data_views.preferences_import, name="data-preferences-import"),
    path("data/imports/<id:import_id>/", data_views.import_detail, name="data-import"),
    path("data/exports/", data_views.exports_page, name="data-exports"),
    path("data/exports/<id:export_id>/", data_views.export_detail, name="data-export"),
    path("data/exports/<id:export_id>/download/", data_views.export_download, name="data-export-download"),
    path("admin/", admin.site.urls),
    path("leaderboard/", leaderboard_views.leaderboard, name="leaderboard"),
    path("quality/", quality_views.quality, name="quality"),
    path("quality/annotators/<str:username>/", quality_views.annotator_quality, name="quality-annotator"),
    path("quality/annotators/<str:username>/actions/", quality_views.annotator_act, name="quality-annotator-act"),
    path("dashboard/", dashboard_views.dashboard, name="dashboard"),
    path("webhooks/", hooks_views.webhooks_page, name="webhooks"),
    path("webhooks/<id:endpoint_id>/", hooks_views.webhook_detail, name="webhook"),
    path("webhooks/<id:endpoint_id>/test/", hooks_views.webhook_test, name="webhook-test"),
    path("webhooks/<id:endpoint_id>/active/", hooks_views.webhook_active, name="webhook-active"),
    path("webhooks/<id:endpoint_id>/delete/", hooks_views.webhook_delete, name="webhook-delete"),
    # Where a login lands (LOGIN_REDIRECT_URL): staff on the dashboard, everyone else on the annotate page.
    path("start/", dashboard_views.start, name="start"),
]

staff_api_urls = [
    path("api/campaigns/", campaign_api.campaigns, name="api-campaigns"),
    path("api/campaigns/<id:campaign_id>/", campaign_api.campaign_detail, name="api-campaign"),
    path("api/edits/<id:answer_id>/review/", edit_api.edits_review, name="api-edit-review"),
    path("api/campaigns/<id:campaign_id>/judge/", judging_api.judge_detail, name="api-campaign-judge"),
    path("api/campaigns/<id:campaign_id>/judge/verdicts/", judging_api.judge_verdicts, name="api-judge-verdicts"),
    path("api/campaigns/<id:campaign_id>/judge/run/", judging_api.judge_run, name="api-judge-run"),
    path("api/pairs/<id:pair_id>/gold/", data_api.pairs_gold, name="api-pair-gold"),
    path("api/annotators/<str:username>/", quality_api.annotators_detail, name="api-annotator"),
    path("api/annotators/<str:username>/actions/", quality_api.annotators_act, name="api-annotator-actions"),
    path("api/prompts/", data_api.prompts, name="api-prompts"),
    path("api/prompts/import/", data_api.prompts_import, name="api-prompts-import"),
    path("api/preferences/import/", data_api.preferences_import, name="api-preferences-import"),
    path("api/imports/<id:import_id>/", data_api.imports_detail, name="api-import"),
    path("api/imports/<id:import_id>/enqueue/", data_api.imports_enqueue, name="api-import-enqueue"),
    path("api/pairs/", data_api.pairs_list, name="api-pairs"),
    path("api/judgements/list/", data_api.judgements_list, name="api-judgements-list"),
    path("api/model-versions/", rounds_api.model_versions_list, name="api-model-versions"),
    path("api/model-versions/<id:version_id>/serve/", rounds_api.model_versions_serve, name="api-version-serve"),
    path("api/rounds/", rounds_api.rounds_collection, name="api-rounds"),
    path("api/rounds/<id:round_id>/", rounds_api.rounds_detail, name="api-round-detail"),
    path("api/rounds/<id:round_id>/cancel/", rounds_api.rounds_cancel, name="api-round-cancel"),
    path("api/rounds/<id:round_id>/promote/", rounds_api.rounds_promote, name="api-round-promote"),
    path("api/rounds/<id:round_id>/canary/", rounds_api.rounds_canary_decide, name="api-round-canary-decide"),
    path("api/exports/", data_api.exports_collection, name="api-exports"),
    path("api/exports/<id:export_id>/", data_api.exports_detail, name="api-export"),
    path("api/exports/<id:export_id>/enqueue/", data_api.exports_enqueue, name="api-export-enqueue"),
    path("api/exports/<id:export_id>/download/", data_api.exports_download, name="api-export-download"),
    path("api/dashboard/", dashboard_api.dashboard, name="api-dashboard"),
    path("api/leaderboard/", leaderboard_api.leaderboard, name="api-leaderboard"),
    path("api/quality/", quality_api.quality, name="api-quality"),
    path("api/staff/webhooks/", hooks_api.webhooks_collection, name="api-webhooks"),
    path("api/staff/webhooks/<id:endpoint_id>/", hooks_api.webhooks_detail, name="api-webhook"),
    path("api/staff/webhooks/<id:endpoint_id>/test/", hooks_api.webhooks_test, name="api-webhook-test"),
    path(
        "api/staff/webhooks/<id:endpoint_id>/deliveries/",
        hooks_api.webhooks_deliveries,
        name="api-webhook-deliveries",
    ),
]

urlpatterns = [
    *annotator_pages,
    *annotator_api,
    *staff_pages,
    *staff_api_urls,
    path("healthz", views.healthz, name="healthz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]

# Under /api/ Django's own errors are JSON too; every other address keeps Django's HTML error pages.
handler400 = "annotate.web.api_errors.bad_request"
handler403 = "annotate.web.api_errors.permission_denied"
handler404 = "annotate.web.api_errors.page_not_found"
handler500 = "annotate.web.api_errors.server_error"
