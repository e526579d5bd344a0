"""Keep talking against the real vLLM server: a continued conversation's two answers stream through the page's
server-sent events as vLLM writes them, and the pair stored is exactly what was streamed, with vLLM's usage."""

import json
import uuid

import pytest
from django.conf import settings
from django.urls import reverse

from annotate.annotation import services as annotation
from annotate.models import Assignment, Campaign, Continuation, ModelVersion, Prompt
from annotate.sampling.generation import client_from_settings
from annotate.sampling.services import pairs_sample
from annotate.turns import services as turns

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_continued_conversation_streams_from_vllm_into_a_stored_pair(vllm_server, annotator, client):
    version = ModelVersion.objects.ensure_base(name=settings.SERVED_MODEL_NAME, base_model="default")
    Campaign.objects.create(name="talk", continuation_allowed=True, max_tokens=32)
    prompt = Prompt.objects.create(
        messages=[{"role": "user", "content": "Name a fruit."}], prompt_set="talk", source="test"
    )
    with client_from_settings() as model_server:
        assert pairs_sample(version=version, prompts=[prompt], client=model_server)
    assignment = annotation.assignment_lease_next(annotator=annotator)
    annotation.judgement_record(
        annotator=annotator, pair_id=assignment.pair_id, choice="left", strength=2, rationale="",
        idempotency_key=uuid.uuid4(),
    )  # fmt: skip
    started = turns.continuation_start(
        annotator=annotator, pair_id=assignment.pair_id, message="What colour is it?", idempotency_key=uuid.uuid4()
    )

    client.force_login(annotator)
    response = client.get(reverse("continuation-stream", args=[started.continuation.pk]))
    events = [
        (block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:]))
        for block in b"".join(response.streaming_content).decode().split("\n\n")
        if block.startswith("event: ")
    ]

    assert events[-1][0] == "ready", events[-3:]
    continuation = Continuation.objects.select_related("pair__completion_a", "pair__completion_b").get()
    pair = continuation.pair
    for side, completion in enumerate((pair.completion_a, pair.completion_b)):
        streamed = "".join(data["text"] for name, data in events if name == "text" and data["side"] == side)
        assert streamed == completion.text and streamed.strip()
        assert completion.completion_tokens and completion.completion_tokens <= 32  # vLLM's usage, streamed last
        assert completion.prompt.messages[-1] == {"role": "user", "content": "What colour is it?"}
        assert completion.finish_reason in ("stop", "length")
    assert Assignment.objects.get(pair=pair).annotator == annotator
