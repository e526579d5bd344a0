"""A user's errors (annotate/errors.py): every service says "wrong request" with an Invalid and "not now" with a
Conflict (or a subclass that says more), and the API answers each kind one way (annotate/web/api_errors.py)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from annotate.data import exports, imports
from annotate.errors import Conflict, Invalid
from annotate.models import DataImport, Export, Prompt, TrainingRound

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_api(staff):
    api = APIClient()
    api.force_authenticate(staff)
    return api


def test_a_file_that_cannot_be_imported_is_invalid_naming_the_file(staff_api):
    with pytest.raises(Invalid) as raised:
        imports.parse_prompts("\n \n", file_format="text")
    assert raised.value.errors == {"file": ["the file holds no prompts"]}

    # What a request can check before a worker reads the file is refused at once, in the same shape.
    upload = SimpleUploadedFile("prompts.txt", b"\xff\n")
    response = staff_api.post("/api/prompts/import/", {"file": upload}, format="multipart")

    assert response.status_code == 400
    assert response.json() == {"errors": {"file": ["the file is not UTF-8 text (byte 0 cannot be read)"]}}
    assert not Prompt.objects.exists() and not DataImport.objects.exists()


def test_a_prompt_stored_already_is_a_conflict_naming_it(staff_api):
    row = imports.prompt_row_from({"prompt": "What is DPO?"})
    stored = imports.prompt_create(row=row, prompt_set="default", source="test")
    with pytest.raises(Conflict) as raised:
        imports.prompt_create(row=row, prompt_set="default", source="test")
    assert raised.value.code == "duplicate"

    response = staff_api.post("/api/prompts/", {"prompt": "What is DPO?"}, format="json")

    assert response.status_code == 409
    assert response.json() == {
        "detail": f"this conversation is already stored as prompt {stored.pk}",
        "code": "duplicate",
        "prompt": stored.pk,
    }
    assert Prompt.objects.count() == 1


def test_an_export_that_cannot_run_is_invalid_naming_the_fields(staff_api, staff):
    filters = exports.ExportFilters(weighting="strength")
    with pytest.raises(Invalid) as raised:
        exports.export_create(created_by=staff, dataset_format="arena", file_format="jsonl", filters=filters)
    assert raised.value.errors == {"weighting": "only trl-preference rows carry a weight"}

    response = staff_api.post("/api/exports/", {"dataset_format": "arena", "weighting": "strength"}, format="json")

    assert response.status_code == 400
    assert response.json() == {"errors": {"weighting": "only trl-preference rows carry a weight"}}
    assert not Export.objects.exists()


def test_a_round_that_cannot_be_cancelled_is_a_conflict(staff_api, loop):
    created = staff_api.post("/api/rounds/", {}, format="json")
    assert created.status_code == 201
    cancel = f"/api/rounds/{created.json()['id']}/cancel/"
    assert staff_api.post(cancel).status_code == 202

    again = staff_api.post(cancel)

    assert again.status_code == 409 and again.json()["code"] == "conflict" and "cancelled" in again.json()["detail"]
    assert TrainingRound.objects.get().status == TrainingRound.Status.CANCELLED
