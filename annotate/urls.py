from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from annotate import api, views

urlpatterns = [
    path("", views.annotate, name="annotate"),
    path("pairs/<int:pair_id>/judge/", views.judge, name="judge"),
    path("pairs/<int:pair_id>/skip/", views.skip, name="skip"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/pairs/next/", api.pairs_next, name="api-pairs-next"),
    path("api/pairs/skip/", api.pairs_skip, name="api-pairs-skip"),
    path("api/judgements/", api.judgements_create, name="api-judgements"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
