"""Several replicas of the model server behind VLLM_BASE_URL: answers spread over them and record which one made
them, a replica that cannot be reached is set aside, and every replica serves every adapter, including one that
restarted without it."""

from __future__ import annotations

import json
import socket
from contextlib import ExitStack

import pytest

from annotate.models import Completion, ModelVersion, Prompt
from annotate.sampling import generation
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerRefused, SamplingParams, client_from_settings
from tests.annotate.model_server_stub import ModelServerStub

from .edges import ChattingModelServer, fake_model_server

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def nothing_set_aside():
    generation._set_aside_until.clear()
    yield
    generation._set_aside_until.clear()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once the socket is closed


def prompts(count: int) -> None:
    for number in range(count):
        Prompt.objects.create(messages=[{"role": "user", "content": f"Question {number}?"}], source="test")


def test_answers_spread_over_the_replicas_and_record_the_one_that_made_them(serving_version, settings):
    settings.PAIR_BUFFER_TARGET = settings.PAIR_REFILL_BATCH = 8
    prompts(16)
    with ExitStack() as stack:
        stubs = [stack.enter_context(ModelServerStub(served_models=(serving_version.name,)).running()) for _ in "ab"]
        settings.VLLM_BASE_URL = ",".join(stub.url for stub in stubs)
        assert sampling.pairs_refill() == 8
        seeds_by_server = {stub.url: {body["seed"] for body in stub.requests} for stub in stubs}
    assert all(seeds for seeds in seeds_by_server.values())  # both replicas answered
    completions = Completion.objects.all()
    assert completions.count() == 16
    for completion in completions:
        assert completion.seed in seeds_by_server[completion.server]


def test_a_replica_that_cannot_be_reached_is_set_aside_and_the_others_fill_the_buffer(serving_version, settings):
    settings.PAIR_BUFFER_TARGET = settings.PAIR_REFILL_BATCH = 6
    prompts(12)
    down = closed_port_url()
    with ModelServerStub(served_models=(serving_version.name,)).running() as stub:
        settings.VLLM_BASE_URL = f"{down},{stub.url}"
        assert sampling.pairs_refill() == 6
        assert set(Completion.objects.values_list("server", flat=True)) == {stub.url}
        assert generation._is_set_aside(down) and not generation._is_set_aside(stub.url)


def test_with_every_replica_down_the_refill_fails_for_a_retry(serving_version, settings):
    settings.VLLM_BASE_URL = f"{closed_port_url()},{closed_port_url()}"
    prompts(2)
    with pytest.raises(generation.ModelServerUnavailable):
        sampling.pairs_refill()


def test_an_answer_from_another_model_than_the_one_asked_for_is_refused(serving_version, settings):
    with ModelServerStub(served_models=(serving_version.name,)).running() as stub:
        stub.answer_as = "some-other-adapter"
        with generation.ModelServerClient(stub.url) as client, pytest.raises(ModelServerRefused, match="answered as"):
            client.chat(model=serving_version.name, messages=[{"role": "user", "content": "Hi?"}],
                        params=SamplingParams(temperature=1.0, top_p=1.0, max_tokens=8, seed=1))  # fmt: skip


def test_every_replica_serves_the_adapter_and_a_restarted_one_gets_it_back(serving_version, settings, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    # What a round leaves behind: a candidate version whose adapter is on a disk every replica reads.
    candidate = ModelVersion.objects.create(
        name="policy-round-1", base_model="/models/base", adapter_path=str(adapter), parent=serving_version
    )
    replicas = [ChattingModelServer(), ChattingModelServer()]
    for replica in replicas:
        replica.models = [serving_version.name]
    prompts(8)
    with ExitStack() as stack:
        settings.VLLM_BASE_URL = ",".join(stack.enter_context(fake_model_server(replica)) for replica in replicas)
        with client_from_settings() as pool:
            candidate.serve(pool)
        assert all(candidate.name in replica.models for replica in replicas)

        replicas[1].models = [serving_version.name]  # it restarted: vLLM forgets run-time adapters
        settings.PAIR_BUFFER_TARGET = settings.PAIR_REFILL_BATCH = 4
        settings.HEAD_TO_HEAD_PAIR_SHARE = 0  # every pair from the new version, none against the old one
        assert sampling.pairs_refill() == 4
        assert all(candidate.name in replica.models for replica in replicas)
        answered = {
            url for url, replica in zip(settings.VLLM_BASE_URL.split(","), replicas, strict=True)
            if any(path == "/v1/chat/completions" for path, _ in replica.requests)
        }  # fmt: skip
    assert answered == set(settings.VLLM_BASE_URL.split(","))
    assert set(Completion.objects.values_list("model_version__name", flat=True)) == {candidate.name}
