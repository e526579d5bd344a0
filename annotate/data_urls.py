"""URLs of data in and out: the staff pages (/data/...) and the data API (/api/...)."""

from django.urls import path

from annotate import data_api, data_views

urlpatterns = [
    path("data/prompts/import/", data_views.prompts_import, name="data-prompts-import"),
    path("data/preferences/import/", data_views.preferences_import, name="data-preferences-import"),
    path("data/exports/", data_views.exports_page, name="data-exports"),
    path("data/exports/<int:export_id>/", data_views.export_detail, name="data-export"),
    path("data/exports/<int:export_id>/download/", data_views.export_download, name="data-export-download"),
    path("api/prompts/", data_api.prompts, name="api-prompts"),
    path("api/prompts/import/", data_api.prompts_import, name="api-prompts-import"),
    path("api/preferences/import/", data_api.preferences_import, name="api-preferences-import"),
    path("api/pairs/", data_api.pairs_list, name="api-pairs"),
    path("api/judgements/list/", data_api.judgements_list, name="api-judgements-list"),
    path("api/model-versions/", data_api.model_versions_list, name="api-model-versions"),
    path("api/exports/", data_api.exports_collection, name="api-exports"),
    path("api/exports/<int:export_id>/", data_api.exports_detail, name="api-export"),
    path("api/exports/<int:export_id>/download/", data_api.exports_download, name="api-export-download"),
]
