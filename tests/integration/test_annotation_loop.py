"""The annotation half of the loop with real parts: vLLM samples, a Celery worker stores pairs, a vote lands."""

import uuid

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from annotate import tasks
from annotate.models import Assignment, Judgement, ModelVersion, Pair, Prompt
from annotate.sampling.generation import client_from_settings
from tests.integration.conftest import wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_pairs_from_vllm_through_the_worker_to_a_vote_with_full_lineage(vllm_server, celery_worker, annotator):
    version = ModelVersion.objects.ensure_base(name=settings.SERVED_MODEL_NAME, base_model="default")
    Prompt.objects.create(messages=[{"role": "user", "content": "Name two uses for a paper clip."}], source="test")
    Prompt.objects.create(
        messages=[
            {"role": "user", "content": "Pick a fruit."},
            {"role": "assistant", "content": "A pear."},
            {"role": "user", "content": "Describe its taste in one sentence."},
        ],
        source="test",
    )
    with client_from_settings() as client:
        assert settings.SERVED_MODEL_NAME in client.served_models()

    tasks.pairs_refill.delay()
    wait_until(
        lambda: Pair.objects.count() >= 2, 300, "the worker to store two pairs", celery_worker, celery_worker.log_path
    )

    api = APIClient()
    api.force_authenticate(annotator)
    shown = api.get("/api/pairs/next/")
    assert shown.status_code == 200
    pair = Pair.objects.get(pk=shown.json()["pair"])
    assignment = Assignment.objects.get(pair=pair, annotator=annotator)
    assert shown.json()["left"]["text"] == assignment.left.text
    assert shown.json()["prompt"] == pair.prompt.messages

    answer = api.post(
        "/api/judgements/",
        {"pair": pair.pk, "choice": "left", "strength": 3, "rationale": "more specific",
         "idempotency_key": str(uuid.uuid4())},
        format="json",
    )  # fmt: skip
    assert answer.status_code == 201

    judgement = Judgement.objects.select_related("pair__completion_a", "pair__completion_b").get()
    assert judgement.choice == ("a" if assignment.a_on_left else "b")
    assert judgement.a_on_left == assignment.a_on_left
    assert judgement.pair.sampled_from == version
    for completion in (judgement.pair.completion_a, judgement.pair.completion_b):
        assert completion.model_version == version
        assert completion.prompt == pair.prompt
        assert completion.text.strip()
        assert completion.sampling["temperature"] == settings.SAMPLING_TEMPERATURE
        assert completion.sampling["top_p"] == settings.SAMPLING_TOP_P
        assert completion.sampling["max_tokens"] == 48  # the worker's setting, recorded as sent
        assert completion.sampling["seed"] == completion.seed
        assert completion.finish_reason in ("stop", "length")
        assert 0 < completion.completion_tokens <= 48
        assert completion.prompt_tokens > 0 and completion.latency_ms > 0
        assert completion.response_id
    assert judgement.pair.completion_a.seed != judgement.pair.completion_b.seed
    assert judgement.pair.completion_a.text != judgement.pair.completion_b.text
