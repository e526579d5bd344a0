"""Every URL, grouped by who calls it: annotators' pages and API, staff pages and API."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from annotate import api, campaign_views, data_views, leaderboard_api, leaderboard_views, round_views, staff_api, views

annotator_pages = [
    path("", views.annotate, name="annotate"),
    path("pairs/<int:pair_id>/judge/", views.judge, name="judge"),
    path("pairs/<int:pair_id>/skip/", views.skip, name="skip"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]

annotator_api = [
    path("api/pairs/next/", api.pairs_next, name="api-pairs-next"),
    path("api/pairs/skip/", api.pairs_skip, name="api-pairs-skip"),
    path("api/judgements/", api.judgements_create, name="api-judgements"),
]

staff_pages = [
    path("campaigns/", campaign_views.campaigns, name="campaigns"),
    path("campaigns/<int:campaign_id>/", campaign_views.campaign_edit, name="campaign-edit"),
    path("pairs/<int:pair_id>/", campaign_views.pair_detail, name="pair-detail"),
    path("pairs/<int:pair_id>/gold/", campaign_views.pair_gold, name="pair-gold"),
    path("rounds/", round_views.rounds_list, name="rounds"),
    path("rounds/start/", round_views.round_start, name="round-start"),
    path("rounds/<int:round_id>/", round_views.round_detail, name="round-detail"),
    path("rounds/<int:round_id>/cancel/", round_views.round_cancel, name="round-cancel"),
    path("rounds/<int:round_id>/promote/", round_views.round_promote, name="round-promote"),
    path("rounds/<int:round_id>/canary/", round_views.round_canary_decide, name="round-canary-decide"),
    path("versions/<int:version_id>/serve/", round_views.version_serve, name="version-serve"),
    path("data/prompts/import/", data_views.prompts_import, name="data-prompts-import"),
    path("data/preferences/import/", data_views.preferences_import, name="data-preferences-import"),
    path("data/exports/", data_views.exports_page, name="data-exports"),
    path("data/exports/<int:export_id>/", data_views.export_detail, name="data-export"),
    path("data/exports/<int:export_id>/download/", data_views.export_download, name="data-export-download"),
    path("admin/", admin.site.urls),
    path("leaderboard/", leaderboard_views.leaderboard, name="leaderboard"),
]

staff_api_urls = [
    path("api/campaigns/", staff_api.campaigns, name="api-campaigns"),
    path("api/campaigns/<int:campaign_id>/", staff_api.campaign_detail, name="api-campaign"),
    path("api/pairs/<int:pair_id>/gold/", staff_api.pairs_gold, name="api-pair-gold"),
    path("api/annotators/<str:username>/actions/", staff_api.annotators_act, name="api-annotator-actions"),
    path("api/prompts/", staff_api.prompts, name="api-prompts"),
    path("api/prompts/import/", staff_api.prompts_import, name="api-prompts-import"),
    path("api/preferences/import/", staff_api.preferences_import, name="api-preferences-import"),
    path("api/pairs/", staff_api.pairs_list, name="api-pairs"),
    path("api/judgements/list/", staff_api.judgements_list, name="api-judgements-list"),
    path("api/model-versions/", staff_api.model_versions_list, name="api-model-versions"),
    path("api/model-versions/<int:version_id>/serve/", staff_api.model_versions_serve, name="api-version-serve"),
    path("api/rounds/", staff_api.rounds_create, name="api-rounds"),
    path("api/rounds/<int:round_id>/", staff_api.rounds_detail, name="api-round-detail"),
    path("api/rounds/<int:round_id>/cancel/", staff_api.rounds_cancel, name="api-round-cancel"),
    path("api/rounds/<int:round_id>/promote/", staff_api.rounds_promote, name="api-round-promote"),
    path("api/rounds/<int:round_id>/canary/", staff_api.rounds_canary_decide, name="api-round-canary-decide"),
    path("api/exports/", staff_api.exports_collection, name="api-exports"),
    path("api/exports/<int:export_id>/", staff_api.exports_detail, name="api-export"),
    path("api/exports/<int:export_id>/download/", staff_api.exports_download, name="api-export-download"),
    path("api/leaderboard/", leaderboard_api.leaderboard, name="api-leaderboard"),
]

urlpatterns = [
    *annotator_pages,
    *annotator_api,
    *staff_pages,
    *staff_api_urls,
    path("healthz", views.healthz, name="healthz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
