"""Ranking with real parts (issue 19 part 2): vLLM samples three answers per pair for a campaign that ranks them, a
Celery worker stores them, and a ranking through the API lands with each answer's lineage."""

import uuid

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from annotate import tasks
from annotate.annotation import rankings
from annotate.models import Assignment, Campaign, Judgement, ModelVersion, Pair, Prompt
from tests.integration.conftest import wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_three_answers_from_vllm_through_the_worker_to_a_ranking(vllm_server, celery_worker, annotator):
    version = ModelVersion.objects.ensure_base(name=settings.SERVED_MODEL_NAME, base_model="default")
    Campaign.objects.create(name="ranked", answers_per_pair=3)
    for question in ("Name two uses for a paper clip.", "Describe a pear in one sentence."):
        Prompt.objects.create(messages=[{"role": "user", "content": question}], prompt_set="ranked", source="test")

    tasks.pairs_refill.delay()
    wait_until(lambda: Pair.objects.count() >= 2, 300, "the worker to store two ranking pairs", celery_worker,
               celery_worker.log_path)  # fmt: skip

    api = APIClient()
    api.force_authenticate(annotator)
    shown = api.get("/api/pairs/next/").json()
    pair = Pair.objects.get(pk=shown["pair"])
    assert pair.answer_count == 3 and len(shown["answers"]) == 3
    answers = pair.answers()
    assignment = Assignment.objects.get(pair=pair, annotator=annotator)
    assert [item["text"] for item in shown["answers"]] == [answers[p].text for p in assignment.answer_order]
    for answer in answers:
        assert answer.model_version == version and answer.prompt == pair.prompt and answer.text.strip()
        assert answer.sampling["seed"] == answer.seed and answer.sampling["max_tokens"] == 48
        assert answer.finish_reason in ("stop", "length") and answer.response_id
    assert len({answer.seed for answer in answers}) == 3 and len({answer.text for answer in answers}) == 3

    body = {"pair": pair.pk, "choice": "rank", "ranks": [2, 1, 3], "idempotency_key": str(uuid.uuid4())}
    assert api.post("/api/judgements/", body, format="json").status_code == 201
    judgement = Judgement.objects.get()
    assert judgement.ranking == rankings.ranking_by_position([2, 1, 3], assignment.answer_order)
    assert judgement.choice == rankings.choice_of_ranking(judgement.ranking)
