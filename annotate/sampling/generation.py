"""The only way pairloop talks to the model server: vLLM's OpenAI-compatible HTTP API."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from django.conf import settings

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


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_tokens: int
    seed: int

    @classmethod
    def from_settings(cls, seed: int) -> SamplingParams:
        return cls(
            temperature=settings.SAMPLING_TEMPERATURE,
            top_p=settings.SAMPLING_TOP_P,
            max_tokens=settings.SAMPLING_MAX_TOKENS,
            seed=seed,
        )


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int
    response_id: str
    sampling: dict[str, Any]


def model_server_url() -> str:
    return (settings.VLLM_BASE_URL or f"http://{settings.VLLM_HOST}:{settings.VLLM_PORT}").rstrip("/")


class ModelServerClient:
    """A thread-safe client: one connection pool shared by concurrent requests, so vLLM can batch them."""

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

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
        """One answer to a conversation, sampled with the model's chat template."""
        request = {"model": model, "messages": messages, "n": 1, **asdict(params)}
        started = time.monotonic()
        response = self._request("POST", "/v1/chat/completions", json=request)
        latency_ms = int((time.monotonic() - started) * 1000)
        if response.status_code != 200:
            # A 4xx means the request itself is wrong (unknown model, prompt too long): retrying will not help.
            raise ModelServerRefused(f"HTTP {response.status_code}: {response.text[:500]}", response.status_code)
        body = response.json()
        choice = body["choices"][0]
        usage = body.get("usage") or {}
        return Sample(
            text=choice["message"]["content"] or "",
            finish_reason=choice.get("finish_reason") or "",
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            latency_ms=latency_ms,
            response_id=body.get("id", ""),
            sampling={**asdict(params), "n": 1},
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


def client_from_settings(timeout: float | None = None) -> ModelServerClient:
    return ModelServerClient(
        model_server_url(), settings.VLLM_API_KEY, settings.VLLM_TIMEOUT if timeout is None else timeout
    )
