from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from annotate import api, round_views, views

urlpatterns = [
    path("", views.annotate, name="annotate"),
    path("pairs/<int:pair_id>/judge/", views.judge, name="judge"),
    path("pairs/<int:pair_id>/skip/", views.skip, name="skip"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("rounds/", round_views.rounds_list, name="rounds"),
    path("rounds/start/", round_views.round_start, name="round-start"),
    path("rounds/<int:round_id>/", round_views.round_detail, name="round-detail"),
    path("rounds/<int:round_id>/cancel/", round_views.round_cancel, name="round-cancel"),
    path("rounds/<int:round_id>/promote/", round_views.round_promote, name="round-promote"),
    path("versions/<int:version_id>/serve/", round_views.version_serve, name="version-serve"),
    path("admin/", admin.site.urls),
    path("api/pairs/next/", api.pairs_next, name="api-pairs-next"),
    path("api/pairs/skip/", api.pairs_skip, name="api-pairs-skip"),
    path("api/judgements/", api.judgements_create, name="api-judgements"),
    path("api/rounds/", api.rounds_create, name="api-rounds"),
    path("api/rounds/<int:round_id>/", api.rounds_detail, name="api-round-detail"),
    path("api/rounds/<int:round_id>/cancel/", api.rounds_cancel, name="api-round-cancel"),
    path("api/rounds/<int:round_id>/promote/", api.rounds_promote, name="api-round-promote"),
    path("api/model-versions/<int:version_id>/serve/", api.model_versions_serve, name="api-version-serve"),
    path("", include("annotate.data_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
