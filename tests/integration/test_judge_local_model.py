"""The local vLLM server's default model (135M parameters) as a campaign's AI judge, asked by a real Celery worker:
its verdicts are recorded with their lineage, its trust is measured and shown, and that trust keeps routing off."""

from __future__ import annotations

import pytest
from django.conf import settings

from annotate.annotation import services as annotation
from annotate.judging import services as judging
from annotate.judging.selectors import judge_trust
from annotate.models import Campaign, Judge, JudgeVerdict
from tests.annotate.test_judging import BAD, CAMPAIGN, GOOD, people_vote_on_all
from tests.integration.conftest import wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_default_model_as_judge_is_measured_and_routing_stays_off(
    vllm_server, celery_worker, make_pair, annotator, client, staff
):
    for index in range(8):
        texts = (GOOD, BAD) if index % 2 == 0 else (BAD, GOOD)
        pair = make_pair(texts=texts, prompt_set=CAMPAIGN)
        if index < 4:
            annotation.pair_mark_gold(pair=pair, expected="a" if texts[0] == GOOD else "b")
    people_vote_on_all(annotator, 4)
    untouched = [make_pair(texts=(GOOD, BAD), prompt_set=CAMPAIGN) for _ in range(2)]
    values = {"url": f"{vllm_server}/v1", "model": settings.SERVED_MODEL_NAME, "allow_private": True,
              "enabled": True, "routing_allowed": True, "min_evidence": 4}  # fmt: skip

    judge = judging.judge_configure(campaign=Campaign.objects.get(name=CAMPAIGN), values=values, app_hosts=[])

    def all_answered() -> bool:
        return JudgeVerdict.objects.exclude(status=JudgeVerdict.Status.ASKING).count() == 10

    wait_until(all_answered, 400, "the worker to ask the judge about 10 pairs", celery_worker, celery_worker.log_path)
    judge = Judge.objects.get(pk=judge.pk)
    trust = judge_trust(judge=judge)
    assert judge.routing_active is False and judge.routing_allowed is True
    assert trust.settled == 0 and all(pair.judgements.count() == 0 for pair in untouched)
    verdict = JudgeVerdict.objects.first()
    assert verdict.endpoint == f"{vllm_server}/v1" and verdict.model == settings.SERVED_MODEL_NAME
    client.force_login(staff)
    page = client.get("/quality/").content.decode()
    assert "AI judges" in page and "Routing off, not earned" in page
    print(f"default model as judge: {trust}")  # the numbers the issue note quotes
