"""The vLLM HTTP client against a local server that answers like vLLM (tests/annotate/model_server_stub.py)."""

import socket

import pytest

from annotate.sampling.generation import ModelServerClient, ModelServerRefused, ModelServerUnavailable, SamplingParams
from tests.annotate.model_server_stub import ModelServerStub

MODEL = "policy-v0"
PARAMS = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=64, seed=1234)


@pytest.fixture
def stub():
    with ModelServerStub(served_models=(MODEL,), max_prompt_characters=1000).running() as server:
        yield server


def ask(client, content, model=MODEL, params=PARAMS):
    return client.chat(model=model, messages=[{"role": "user", "content": content}], params=params)


def test_chat_sends_the_sampling_it_records(stub):
    with ModelServerClient(stub.url) as client:
        sample = ask(client, "Name a colour.")

    sent = stub.requests[-1]
    assert {key: sent[key] for key in ("model", "temperature", "top_p", "max_tokens", "seed", "n")} == {
        "model": MODEL,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 1234,
        "n": 1,
    }
    # What is recorded is exactly what was sent: the answer can be sampled again from its lineage.
    assert sample.sampling == {key: sent[key] for key in ("temperature", "top_p", "max_tokens", "seed", "n")}
    assert sample.text == "Answer to 'Name a colour.' with seed 1234."
    assert (sample.finish_reason, sample.response_id) == ("stop", "chatcmpl-1234")
    assert sample.prompt_tokens is not None and sample.completion_tokens is not None
    assert sample.latency_ms >= 0


def test_a_prompt_too_long_is_refused_and_blames_the_prompt(stub):
    with ModelServerClient(stub.url) as client, pytest.raises(ModelServerRefused) as caught:
        ask(client, "x" * 5000)
    assert caught.value.status_code == 400
    assert caught.value.blames_the_request_body
    assert "maximum context length" in str(caught.value)


def test_an_unknown_model_is_refused_without_blaming_the_prompt(stub):
    with ModelServerClient(stub.url) as client, pytest.raises(ModelServerRefused) as caught:
        ask(client, "Hello", model="no-such-adapter")
    assert caught.value.status_code == 404
    assert not caught.value.blames_the_request_body


def test_a_server_error_is_worth_retrying(stub):
    stub.failing_prompts.add("Hello")
    with ModelServerClient(stub.url) as client, pytest.raises(ModelServerUnavailable, match="HTTP 500"):
        ask(client, "Hello")


def test_a_request_that_takes_too_long_is_worth_retrying(stub):
    stub.slow_prompts["Hello"] = 1.0
    with ModelServerClient(stub.url, timeout=0.2) as client, pytest.raises(ModelServerUnavailable):
        ask(client, "Hello")


def test_an_answer_longer_in_the_writing_than_the_timeout_is_kept_while_the_server_keeps_writing(stub):
    """The timeout measures the server's silence, not the answer's length: on a slow CPU a batch of 32 answers of 256
    tokens takes minutes, each gaining a token every second or so. Asked for whole (as before), this answer, written
    over about 1.8 s, timed out at 1 s; streamed, no gap between its words comes near the timeout."""
    stub.stream_piece_seconds = 0.3
    with ModelServerClient(stub.url, timeout=1.0) as client:
        sample = ask(client, "Hello")
    assert sample.text == "Answer to 'Hello' with seed 1234."
    assert sample.finish_reason == "stop"
    assert sample.latency_ms > 1000  # longer than the timeout, all told
    assert stub.requests[-1]["stream"] is True


def test_a_server_that_goes_silent_mid_answer_is_worth_retrying(stub):
    stub.stream_piece_seconds = 1.5
    with ModelServerClient(stub.url, timeout=0.5) as client, pytest.raises(ModelServerUnavailable, match="timed out"):
        ask(client, "Hello")


def test_an_error_the_server_sends_mid_answer_is_worth_retrying_and_named(stub):
    stub.stream_cut_after, stub.stream_error = 2, "EngineCore encountered an issue."
    with ModelServerClient(stub.url) as client, pytest.raises(ModelServerUnavailable, match="EngineCore encountered"):
        ask(client, "Hello")


def test_a_server_that_ignores_stream_and_answers_whole_is_understood(stub):
    """Some OpenAI-compatible servers answer a streamed request whole, in JSON: the answer is taken as it is."""
    stub.ignore_stream = True
    with ModelServerClient(stub.url) as client:
        sample = ask(client, "Hello")
    assert (sample.text, sample.finish_reason, sample.response_id) == (
        "Answer to 'Hello' with seed 1234.",
        "stop",
        "chatcmpl-1234",
    )
    assert sample.completion_tokens is not None


def test_nothing_listening_is_worth_retrying():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with ModelServerClient(f"http://127.0.0.1:{closed_port}") as client, pytest.raises(ModelServerUnavailable):
        ask(client, "Hello")
    with ModelServerClient(f"http://127.0.0.1:{closed_port}") as client:
        assert client.is_healthy() is False


def test_every_client_of_a_process_shares_one_tls_context(settings):
    """Building TLS settings parses the whole CA bundle (about 27 ms of CPU); a refill builds a client for every
    replica, so a context built per client cost about 7 ms of CPU a pair with four replicas (bench.scale)."""
    from annotate.sampling.generation import client_from_settings

    settings.VLLM_BASE_URL = "https://replica-1.example:8000,https://replica-2.example:8000"
    with client_from_settings() as first_refill, client_from_settings() as second_refill:
        # httpx keeps the context on the client's connection pool; nothing public exposes it.
        contexts = {
            id(client._http._transport._pool._ssl_context)  # type: ignore[attr-defined]
            for pool in (first_refill, second_refill)
            for client in pool.clients
        }
    assert len(contexts) == 1
