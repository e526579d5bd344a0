"""The only way pairloop talks to the model servers: vLLM's OpenAI-compatible HTTP API, one replica or several.

VLLM_BASE_URL names one server or several replicas of it (comma-separated). With several, `ModelServerPool` sends
each answer to the replica with the fewest requests in flight, sets aside one that cannot be reached for
VLLM_SERVER_RETRY_SECONDS, loads every adapter on each replica, and each answer records the replica that made it.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from django.conf import settings

from training.config import FieldSpec

logger = logging.getLogger(__name__)


class ModelServerUnavailable(Exception):
    """The model server could not be reached or answered with an error; worth retrying later."""


class ModelServerRefused(Exception):
    """The model server answered that this request is wrong (HTTP 4xx: prompt too long, unknown model, adapter rank
    above its limit...): sending it again will not help."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def blames_the_request_body(self) -> bool:
        """True when the content sent was refused (400, 413, 422: a prompt too long for the model...); False when the
        server refused the caller or the model name (401, 403, 404), which no single prompt can be blamed for."""
        return self.status_code in (400, 413, 422)


class ReaderGone(Exception):
    """A streamed answer's reader stopped listening (the page was closed): the stream is dropped, nothing is kept."""


# A campaign's system prompt: long enough for detailed instructions, short enough to leave the model room to answer.
SYSTEM_PROMPT_MAX_CHARACTERS = 20_000


def sampling_field_specs() -> dict[str, FieldSpec]:
    """The bounds of the sampling settings a campaign may set: the one spec its form, its API serializer and the
    sampler read. max_tokens is capped by SAMPLING_MAX_TOKENS_CAP, read when asked so a deployment may change it.
    top_p 0 would keep no token at all (vLLM refuses it), hence its small positive minimum."""
    return {
        "temperature": FieldSpec(
            "temperature", float, None, "sampling temperature; 0 always picks the likeliest", 0, 2
        ),
        "top_p": FieldSpec("top_p", float, None, "nucleus sampling: the share of probability mass kept", 0.01, 1),
        "max_tokens": FieldSpec(
            "max_tokens", int, None, "longest answer, in tokens", 1, settings.SAMPLING_MAX_TOKENS_CAP
        ),
    }


# A campaign's sampling fields and the spec each is bounded by (the second side's settings share the first's).
SAMPLING_SPEC_OF_FIELD = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "second_temperature": "temperature",
    "second_top_p": "top_p",
}


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_tokens: int
    seed: int

    @classmethod
    def from_settings(
        cls,
        seed: int,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
    ) -> SamplingParams:
        """The deployment's SAMPLING_* defaults, with whatever a campaign sets in their place."""
        return cls(
            temperature=settings.SAMPLING_TEMPERATURE if temperature is None else temperature,
            top_p=settings.SAMPLING_TOP_P if top_p is None else top_p,
            max_tokens=settings.SAMPLING_MAX_TOKENS if max_tokens is None else max_tokens,
            seed=seed,
        )


def messages_with_system_prompt(messages: list[dict[str, Any]], system_prompt: str) -> list[dict[str, Any]]:
    """The conversation sent for a prompt under a campaign's system prompt: the campaign's goes first, unless the
    prompt brings its own system message (more specific to it), or the campaign has none."""
    if not system_prompt or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int
    response_id: str
    sampling: dict[str, Any]
    server: str = ""  # the replica that made it


def model_server_urls() -> list[str]:
    """The model server's replicas: VLLM_BASE_URL's comma-separated URLs, or the local server `make run` starts."""
    urls = [url.strip().rstrip("/") for url in settings.VLLM_BASE_URL.split(",") if url.strip()]
    return urls or [f"http://{settings.VLLM_HOST}:{settings.VLLM_PORT}"]


def model_server_url() -> str:
    """The first replica (the local server, when `make run` starts one)."""
    return model_server_urls()[0]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The TLS settings every client of this process uses (httpx's defaults: certifi's CAs, or SSL_CERT_FILE).

    Made once: building one reads and parses the whole CA bundle, about 27 ms of CPU, and every refill builds a client
    for each replica; with four replicas that was about 7 ms of CPU a pair (bench.scale)."""
    return httpx.create_ssl_context()


class ModelServerClient:
    """A thread-safe client: one connection pool shared by concurrent requests, so vLLM can batch them."""

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        # One more try when a connection cannot be opened (nothing was sent, so a POST is safe to send again): a
        # server whose listen queue overflowed for a moment is not set aside for VLLM_SERVER_RETRY_SECONDS.
        transport = httpx.HTTPTransport(verify=_tls_context(), retries=1)
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ModelServerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ModelServerUnavailable(f"{method} {self.base_url}{path}: {error}") from error
        if response.status_code >= 500:
            raise ModelServerUnavailable(f"{method} {self.base_url}{path}: HTTP {response.status_code}")
        return response

    def chat(self, *, model: str, messages: list[dict[str, Any]], params: SamplingParams) -> Sample:
        """One answer to a conversation, sampled with the model's chat template.

        Asked for as a stream and read whole, so the client's timeout measures the server's silence, not the answer's
        length: on a slow CPU a batch of 32 answers of 256 tokens can take minutes to finish while every one of them
        gains a token every second or so, and read whole those requests all timed out together (and their replica
        was set aside) although the server was working."""
        return self.chat_stream(model=model, messages=messages, params=params, on_text=_keep_listening)

    def chat_stream(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        params: SamplingParams,
        on_text: Callable[[str], bool],
    ) -> Sample:
        """One answer streamed as it is written (the server's server-sent events): `on_text` gets each new piece and
        returns False to stop listening (ReaderGone is raised). Raises ModelServerUnavailable when the server goes away
        or the stream ends before the answer does: a half answer is never returned."""
        request = {
            "model": model,
            "messages": messages,
            "n": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
            **asdict(params),
        }
        started = time.monotonic()
        pieces: list[str] = []
        finish_reason, response_id = "", ""
        usage: dict[str, Any] = {}
        where = f"POST {self.base_url}/v1/chat/completions (stream)"
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=request) as response:
                if response.status_code >= 500:
                    raise ModelServerUnavailable(f"{where}: HTTP {response.status_code}")
                if response.status_code != 200:
                    # A 4xx means the request itself is wrong (unknown model, prompt too long): retrying will not help.
                    response.read()
                    raise ModelServerRefused(
                        f"HTTP {response.status_code}: {response.text[:500]}", response.status_code
                    )
                for event in _events(response, model):
                    if "error" in event:  # vLLM's word for a failure after the stream began
                        error = event["error"] if isinstance(event["error"], dict) else {"message": event["error"]}
                        code = error.get("code")
                        message = f"{where}: {str(error.get('message'))[:500]}"
                        if isinstance(code, int) and 400 <= code < 500:
                            raise ModelServerRefused(message, code)
                        raise ModelServerUnavailable(message)
                    if event.get("model", model) != model:
                        # Never store an answer under a version that did not make it.
                        raise ModelServerRefused(
                            f"{self.base_url} answered as {event.get('model')!r}, not {model!r}", 409
                        )
                    response_id = event.get("id", response_id)
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            pieces.append(piece)
                            if not on_text(piece):
                                raise ReaderGone
                        finish_reason = choice.get("finish_reason") or finish_reason
        except httpx.HTTPError as error:
            raise ModelServerUnavailable(f"{where}: {error}") from error
        except ValueError as error:  # a line that is not JSON: a broken stream
            raise ModelServerUnavailable(f"{where}: {error}") from error
        if not finish_reason:
            raise ModelServerUnavailable(f"{where}: the stream ended before the answer did")
        return Sample(
            text="".join(pieces),
            finish_reason=finish_reason,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=int((time.monotonic() - started) * 1000),
            response_id=response_id,
            sampling={**asdict(params), "n": 1},
            server=self.base_url,
        )

    def is_healthy(self) -> bool:
        try:
            return self._request("GET", "/health").status_code == 200
        except ModelServerUnavailable:
            return False

    def served_models(self) -> list[str]:
        response = self._request("GET", "/v1/models")
        response.raise_for_status()
        return [entry["id"] for entry in response.json().get("data", [])]

    def load_lora_adapter(self, *, name: str, path: str) -> None:
        """Serve a LoRA adapter under `name` (needs --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)."""
        response = self._request("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise ModelServerRefused(
                f"adapter {name}: HTTP {response.status_code}: {response.text[:500]}", response.status_code
            )

    def unload_lora_adapter(self, *, name: str) -> None:
        response = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code not in (200, 404):
            raise ModelServerRefused(
                f"unloading {name}: HTTP {response.status_code}: {response.text[:500]}", response.status_code
            )


def _keep_listening(piece: str) -> bool:
    """`chat`'s reader of a streamed answer: it wants the whole answer and never stops early."""
    return True


def _events(response: httpx.Response, model: str) -> Iterator[dict[str, Any]]:
    """An answer's server-sent events up to [DONE], as dicts. A server that ignores `stream` (some OpenAI-compatible
    ones do) answers whole, in JSON: that answer is given as the one event it would have streamed."""
    if response.headers.get("content-type", "").startswith("application/json"):
        response.read()
        body = response.json()
        choices = body.get("choices") or [{}]
        delta = {"content": (choices[0].get("message") or {}).get("content")}
        choice = {"delta": delta, "finish_reason": choices[0].get("finish_reason")}
        usage = body.get("usage")
        yield {"id": body.get("id", ""), "model": body.get("model", model), "usage": usage, "choices": [choice]}
        return
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


# Replicas that could not be reached, and until when each is left out (shared by the pools of one process).
_set_aside_until: dict[str, float] = {}
_set_aside_lock = threading.Lock()


def _set_aside(url: str, error: Exception) -> None:
    with _set_aside_lock:
        _set_aside_until[url] = time.monotonic() + settings.VLLM_SERVER_RETRY_SECONDS
    logger.warning("model server %s set aside for %.0f s: %s", url, settings.VLLM_SERVER_RETRY_SECONDS, error)


def _is_set_aside(url: str) -> bool:
    with _set_aside_lock:
        return _set_aside_until.get(url, 0.0) > time.monotonic()


class ModelServerPool:
    """Replicas of one model server used as one: the same methods as ModelServerClient.

    An answer goes to the replica with the fewest requests in flight from this pool among those not set aside; one
    that cannot be reached is set aside for VLLM_SERVER_RETRY_SECONDS and the request goes to the next. Adapters are
    loaded on, and unloaded from, every replica that answers; `served_models` lists what every such replica serves,
    so a replica that restarted without an adapter makes the adapter look missing and `ensure_loaded` puts it back.
    When every replica is set aside the least busy one is tried: a pool never refuses without asking.
    """

    def __init__(self, clients: list[ModelServerClient]) -> None:
        if not clients:
            raise ValueError("a pool needs at least one model server")
        self.clients = clients
        self.base_url = ",".join(client.base_url for client in clients)
        self._in_flight = dict.fromkeys(range(len(clients)), 0)
        self._lock = threading.Lock()

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> ModelServerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _reachable(self) -> list[ModelServerClient]:
        return [client for client in self.clients if not _is_set_aside(client.base_url)] or list(self.clients)

    def chat(self, *, model: str, messages: list[dict[str, Any]], params: SamplingParams) -> Sample:
        tried: set[int] = set()
        while True:
            index = self._next(tried)
            client = self.clients[index]
            try:
                return client.chat(model=model, messages=messages, params=params)
            except ModelServerUnavailable as error:
                _set_aside(client.base_url, error)
                tried.add(index)
                if len(tried) == len(self.clients) or all(
                    _is_set_aside(other.base_url) for number, other in enumerate(self.clients) if number not in tried
                ):
                    raise
            finally:
                with self._lock:
                    self._in_flight[index] -= 1

    def chat_stream(self, **request: Any) -> Sample:
        """ModelServerClient.chat_stream on the least busy replica. Not tried again elsewhere: the reader has seen
        part of it. A replica that went away is set aside like any other."""
        index = self._next(set())
        client = self.clients[index]
        try:
            return client.chat_stream(**request)
        except ModelServerUnavailable as error:
            _set_aside(client.base_url, error)
            raise
        finally:
            with self._lock:
                self._in_flight[index] -= 1

    def _next(self, tried: set[int]) -> int:
        """The replica for the next try: of those not tried yet, the least busy one not set aside (all of them when
        every one is set aside), counted as busy from now on."""
        with self._lock:
            untried = [index for index in range(len(self.clients)) if index not in tried]
            usable = [index for index in untried if not _is_set_aside(self.clients[index].base_url)] or untried
            index = min(usable, key=lambda candidate: self._in_flight[candidate])
            self._in_flight[index] += 1
            return index

    def _on_each(self, call: Callable[[ModelServerClient], Any]) -> list[Any]:
        """`call` on every reachable replica; the results of those that answered. Raises when none answered."""
        results, errors = [], []
        for client in self._reachable():
            try:
                results.append(call(client))
            except ModelServerUnavailable as error:
                _set_aside(client.base_url, error)
                errors.append(error)
        if not results:
            raise errors[0]
        return results

    def is_healthy(self) -> bool:
        return any(client.is_healthy() for client in self.clients)

    def served_models(self) -> list[str]:
        served = self._on_each(lambda client: client.served_models())
        return [name for name in served[0] if all(name in other for other in served[1:])]

    def load_lora_adapter(self, *, name: str, path: str) -> None:
        self._on_each(lambda client: client.load_lora_adapter(name=name, path=path))

    def unload_lora_adapter(self, *, name: str) -> None:
        self._on_each(lambda client: client.unload_lora_adapter(name=name))


def client_from_settings(timeout: float | None = None) -> ModelServerPool:
    """The model server as the settings name it: a pool of its replicas (often just one)."""
    seconds = settings.VLLM_TIMEOUT if timeout is None else timeout
    return ModelServerPool([ModelServerClient(url, settings.VLLM_API_KEY, seconds) for url in model_server_urls()])
