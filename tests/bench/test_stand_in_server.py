"""The stand-in model server of bench.scale, through the project's own client: it must answer as vLLM does, or the
bench would measure something else than the sampling workers do against vLLM."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from annotate.sampling.generation import ModelServerClient, ModelServerPool, SamplingParams
from bench.stand_in_server import StandInServer

MODEL = "stand-in-base"


@pytest.fixture
def stand_in() -> Iterator[StandInServer]:
    server = StandInServer(0, token_seconds=0.01, tokens=10, max_sequences=2, model=MODEL)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def client_of(server: StandInServer) -> ModelServerPool:
    return ModelServerPool([ModelServerClient(f"http://127.0.0.1:{server.server_address[1]}")])


def ask(client: ModelServerPool, seed: int, model: str = MODEL) -> str:
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=64, seed=seed)
    return client.chat(model=model, messages=[{"role": "user", "content": "Hello?"}], params=params).text


def test_answers_follow_the_seed_and_adapters_load_as_on_vllm(stand_in):
    with client_of(stand_in) as client:
        assert ask(client, 1) == ask(client, 1) != ask(client, 2)  # twins differ; a seed repeats its answer
        client.load_lora_adapter(name="round-1", path="/adapters/round-1")
        client.load_lora_adapter(name="round-1", path="/adapters/round-1")  # "already been loaded" is no error
        assert client.served_models() == ["round-1", MODEL]
        assert ask(client, 3, model="round-1")
        client.unload_lora_adapter(name="round-1")
        assert client.served_models() == [MODEL]


def test_at_most_max_sequences_answers_are_generated_at_once(stand_in):
    """Two slots and six answers of at least 5 tokens x 10 ms: three waves, so at least 150 ms (a lower bound
    only: a loaded machine may take longer, never shorter)."""
    with client_of(stand_in) as client, ThreadPoolExecutor(max_workers=6) as pool:
        started = time.monotonic()
        assert len(set(pool.map(lambda seed: ask(client, seed), range(6)))) == 6
        assert time.monotonic() - started >= 0.15
    assert stand_in.answers == 6
    assert stand_in.waiting_seconds > 0  # some waited for a free slot
