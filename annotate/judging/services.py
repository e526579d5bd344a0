"""The AI judge's services: configuring a campaign's judge, asking it about pairs (claimed rows that name their
holder and expire), settling the pairs it earned the trust to settle, and the review that starts or stops routing.

Routing never over-votes: a judge settles only a pair nobody voted on or holds (a conditional update on the pair's
counts, the same the annotation queue uses), so a pair an annotator leased first stays theirs."""

from __future__ import annotations

import logging
import random
import re
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from annotate.broker import enqueue
from annotate.cache import cached_read
from annotate.errors import Invalid
from annotate.events import VOTE_RECORDED, webhook_events_emit
from annotate.hooks.transport import (
    AddressRefused,
    own_address_problem,
    webhook_address_resolve,
    webhook_url_problem,
)
from annotate.judging.client import both_orders, judge_ask, judge_prompt, template_problem
from annotate.judging.trust import Bars, Trust, routing_refusal
from annotate.models import Assignment, Campaign, Judge, JudgeHint, Judgement, JudgeVerdict, Pair
from annotate.owners import holder_name

logger = logging.getLogger(__name__)

RUN_TASK = "annotate.tasks.judge_run"
PROMPT_VERSION = re.compile(r"^[\w.\-]{1,50}$")
# Fields staff set (annotate.judging.api.JudgeSettings is their one spec: types and bounds).
SETTINGS_FIELDS = (
    "url", "model", "prompt_template", "prompt_version", "enabled", "allow_private", "show_to_annotators",
    "routing_allowed", "min_confidence", "min_gold_accuracy", "min_kappa", "min_evidence", "check_share",
)  # fmt: skip
VERDICT_NAMESPACE = uuid.UUID("5b0c6d3e-7f1a-4c55-9a59-1d2f1a0e2b7c")


# --- Configuring ---------------------------------------------------------------------------------------------------


def judge_url_problem(url: str, *, allow_private: bool, app_hosts: list[str]) -> str | None:
    """Why a judge may not be asked at `url` (the webhook area's rules: scheme, credentials, private addresses unless
    allowed, and never the app itself), or None."""
    problem = webhook_url_problem(url) or own_address_problem(url, app_hosts=app_hosts)
    if problem is None:
        try:
            webhook_address_resolve(url, allow_private=allow_private)
        except AddressRefused as refused:
            problem = str(refused)
    return problem


def judge_configure(*, campaign: Campaign, values: Mapping[str, Any], app_hosts: list[str]) -> Judge:
    """Create or change the campaign's judge from `values` (validated by JudgeSettings; `api_key` absent or None
    keeps the key, "" removes it). Invalid, with nothing changed, for a URL it may not ask or a bad template.
    Allowing routing again clears the reason it last stopped; forbidding it stops it at once."""
    judge = Judge.objects.filter(campaign=campaign).first() or Judge(campaign=campaign)
    fields = {name: values[name] for name in SETTINGS_FIELDS if name in values}
    for name, value in fields.items():
        setattr(judge, name, value.strip() if isinstance(value, str) and name != "prompt_template" else value)
    if values.get("api_key") is not None:
        judge.api_key = str(values["api_key"]).strip()
    errors: dict[str, str] = {}
    problem = judge_url_problem(judge.url, allow_private=judge.allow_private, app_hosts=app_hosts)
    if problem:
        errors["url"] = problem
    if not judge.model:
        errors["model"] = "name the model the endpoint serves"
    problem = template_problem(judge.prompt_template)
    if problem:
        errors["prompt_template"] = problem
    if not PROMPT_VERSION.match(judge.prompt_version):
        errors["prompt_version"] = "1 to 50 letters, digits, dots, dashes or underscores"
    if errors:
        raise Invalid(errors)
    if not judge.routing_allowed:
        judge.routing_active = False
    elif fields.get("routing_allowed"):
        judge.routing_stopped_reason = ""
    judge.save()
    if judge.enabled:
        judge_run_enqueue(judge=judge)
    return judge


def judge_run_enqueue(*, judge: Judge) -> bool:
    """Hand a batch of this judge's questions to a worker once the caller's transaction commits (best effort: the
    `judges-run` beat asks again)."""
    transaction.on_commit(lambda: enqueue(RUN_TASK, judge.pk))
    return True


def judges_run() -> int:
    """What the beat does: a batch for every enabled judge."""
    judges = list(Judge.objects.filter(enabled=True).values_list("pk", flat=True))
    for judge_id in judges:
        enqueue(RUN_TASK, judge_id)
    return len(judges)


# --- Asking --------------------------------------------------------------------------------------------------------


def _lease() -> Any:
    return timezone.now() + timedelta(seconds=settings.JUDGE_LEASE_SECONDS)


def _verdicts_claim(*, judge: Judge, holder: str, limit: int) -> list[JudgeVerdict]:
    """Up to `limit` verdicts for this holder to ask: ones abandoned by a worker whose lease ran out and failures due
    to be asked again (JUDGE_RETRY_SECONDS, at most JUDGE_MAX_ATTEMPTS asks), then new ones
    for pairs it has not judged under its prompt version (gold pairs and people-voted ones first: they measure
    it; then untouched pairs, which it may settle). A pair another worker claimed first is skipped."""
    now = timezone.now()
    claimed: list[JudgeVerdict] = []
    mine = JudgeVerdict.objects.filter(judge=judge, prompt_version=judge.prompt_version)
    abandoned = Q(status=JudgeVerdict.Status.ASKING, lease_expires_at__lt=now)
    retry = Q(
        status=JudgeVerdict.Status.FAILED,
        finished_at__lt=now - timedelta(seconds=settings.JUDGE_RETRY_SECONDS),
        attempts__lt=settings.JUDGE_MAX_ATTEMPTS,
    )
    for verdict_id in list(mine.filter(abandoned | retry).values_list("pk", flat=True)[:limit]):
        taken = mine.filter(abandoned | retry, pk=verdict_id).update(
            status=JudgeVerdict.Status.ASKING,
            holder=holder,
            lease_expires_at=_lease(),
            endpoint=judge.url,
            model=judge.model,
            attempts=F("attempts") + 1,
        )
        if taken:
            claimed.append(JudgeVerdict.objects.select_related("pair__prompt").get(pk=verdict_id))
    judged = JudgeVerdict.objects.filter(judge=judge, prompt_version=judge.prompt_version, pair=OuterRef("pk"))
    candidates = (
        Pair.objects.filter(campaign=judge.campaign_id)
        .filter(~Exists(judged))
        .order_by(F("gold_choice").desc(), F("judgement_count").desc(), "id")
        .values_list("pk", flat=True)
    )
    for pair_id in list(candidates[: max(0, limit - len(claimed))]):
        try:
            with transaction.atomic():
                verdict = JudgeVerdict.objects.create(
                    judge=judge,
                    pair_id=pair_id,
                    prompt_version=judge.prompt_version,
                    endpoint=judge.url,
                    model=judge.model,
                    holder=holder,
                    lease_expires_at=_lease(),
                )
        except IntegrityError:
            continue  # another worker claimed it first
        claimed.append(JudgeVerdict.objects.select_related("pair__prompt").get(pk=verdict.pk))
    return claimed


def judge_run(*, judge_id: int, limit: int | None = None) -> int:
    """Ask the judge about a batch of pairs and record each verdict (settling pairs while routing is on); returns
    how many verdicts this run recorded. A disabled or deleted judge does nothing."""
    judge = Judge.objects.select_related("campaign").filter(pk=judge_id, enabled=True).first()
    if judge is None:
        return 0
    holder = holder_name()
    judge_trust_review(judge=judge)
    recorded = unreviewed = 0
    for verdict in _verdicts_claim(judge=judge, holder=holder, limit=limit or settings.JUDGE_BATCH_PAIRS):
        pair = verdict.pair
        if unreviewed and not pair.gold_choice and pair.judgement_count == 0 and pair.lease_count == 0:
            judge_trust_review(judge=judge)  # what it just answered may earn (or end) routing for this pair
            unreviewed = 0
        done = _verdict_ask(judge=judge, verdict=verdict, holder=holder)
        recorded += done
        unreviewed += done
    if unreviewed:
        judge_trust_review(judge=judge)
    return recorded


def _verdict_ask(*, judge: Judge, verdict: JudgeVerdict, holder: str) -> int:
    pair = verdict.pair
    texts = {"a": pair.completion_a.text, "b": pair.completion_b.text}
    replies = []
    for first, second in (("a", "b"), ("b", "a")):
        content = judge_prompt(
            judge.prompt_template, messages=pair.prompt.messages, first=texts[first], second=texts[second]
        )
        replies.append(
            judge_ask(
                url=judge.url,
                api_key=judge.api_key,
                model=judge.model,
                allow_private=judge.allow_private,
                content=content,
            )
        )
        if replies[-1].error:
            break  # a judge that failed once is not asked the other way round
    fields: dict[str, Any] = {
        "first_reply": replies[0].raw,
        "second_reply": replies[1].raw if len(replies) > 1 else "",
        "finished_at": timezone.now(),
        "holder": "",
        "lease_expires_at": None,
    }
    failed = next((reply for reply in replies if reply.error), None)
    if failed is not None:
        fields.update(status=JudgeVerdict.Status.FAILED, error=failed.error[:300])
    else:
        choice, confidence, consistent, first_choice, second_choice = both_orders(replies[0], replies[1])
        fields.update(
            status=JudgeVerdict.Status.DONE,
            error="",
            choice=choice,
            confidence=confidence,
            consistent=consistent,
            first_choice=first_choice,
            second_choice=second_choice,
        )
    written = JudgeVerdict.objects.filter(pk=verdict.pk, holder=holder, status=JudgeVerdict.Status.ASKING).update(
        **fields
    )
    if not written:
        logger.warning("verdict %s was taken over while this worker asked; its answer is dropped", verdict.pk)
        return 0
    verdict.refresh_from_db()
    if verdict.status == JudgeVerdict.Status.DONE:
        _route(judge=judge, verdict=verdict)
    return 1


# --- Routing -------------------------------------------------------------------------------------------------------


def _route(*, judge: Judge, verdict: JudgeVerdict) -> None:
    """While routing is on, a confident, order-consistent A-or-B verdict on an untouched pair settles it, but for a
    `check_share` of them, which go to people as checks."""
    judge.refresh_from_db(fields=["routing_active", "routing_allowed"])
    eligible = (
        judge.routing_active
        and judge.routing_allowed
        and verdict.consistent
        and verdict.choice in (JudgeVerdict.Choice.A, JudgeVerdict.Choice.B)
        and verdict.confidence is not None
        and verdict.confidence >= judge.min_confidence
        and not verdict.pair.gold_choice
    )
    if not eligible:
        return
    if random.random() < judge.check_share:
        JudgeVerdict.objects.filter(pk=verdict.pk).update(is_check=True)
        return
    pair_settle(judge=judge, verdict=verdict)


def pair_settle(*, judge: Judge, verdict: JudgeVerdict) -> Judgement | None:
    """Record the judge's vote as the pair's verdict, filling its places, if nobody voted on it or holds it yet;
    None when someone did (the people keep it). Idempotent: the vote's key comes from the verdict."""
    with transaction.atomic():
        taken = Pair.objects.filter(pk=verdict.pair_id, judgement_count=0, lease_count=0, gold_choice="").update(
            judgement_count=F("judgements_required")
        )
        if taken != 1:
            return None
        judgement = Judgement.objects.create(
            pair_id=verdict.pair_id,
            annotator=None,
            choice=verdict.choice,
            idempotency_key=uuid.uuid5(VERDICT_NAMESPACE, f"verdict:{verdict.pk}"),
            source=Judgement.Source.JUDGE,
            source_detail=f"judge {judge.pk}: {judge.model} at {verdict.endpoint}, prompt {verdict.prompt_version}"[
                :300
            ],
        )
        JudgeVerdict.objects.filter(pk=verdict.pk).update(settled=True)
        webhook_events_emit(
            event=VOTE_RECORDED,
            payload={
                "judgement": judgement.pk,
                "pair": judgement.pair_id,
                "annotator": None,
                "choice": judgement.choice,
                "strength": None,
                "source": judgement.source,
                "is_repeat": False,
            },
        )
    return judgement


def judge_trust_review(*, judge: Judge) -> Trust:
    """Measure the judge (its current prompt version) and start or stop routing by it: on when staff allow it and
    the trust earns it; off by itself, staff told (the reason on the pages, a webhook event), when a routing judge
    falls below the bars."""
    from annotate.judging.selectors import judge_trust

    trust = judge_trust(judge=judge, prompt_version=judge.prompt_version)
    refusal = routing_refusal(trust, judge_bars(judge))
    if refusal is None and judge.routing_allowed and not judge.routing_active:
        judge.routing_start()
    elif (
        refusal is not None
        and judge.routing_active
        and judge.routing_stop(reason=f"Routing stopped by itself: {refusal}.")
    ):
        logger.warning("judge %s of campaign %s: routing stopped: %s", judge.pk, judge.campaign_id, refusal)
    judge.refresh_from_db()
    return trust


def judge_bars(judge: Judge) -> Bars:
    return Bars(min_gold_accuracy=judge.min_gold_accuracy, min_kappa=judge.min_kappa, min_evidence=judge.min_evidence)


# --- Showing the judge to annotators -------------------------------------------------------------------------------


def judge_hint_for(assignment: Assignment | None) -> JudgeVerdict | None:
    """The judge's verdict the annotate page shows beside a pair that needs votes, when its campaign asks for it
    (never on gold pairs or repeats: those measure the people themselves)."""
    from annotate.invalidation import JUDGE_HINTS
    from annotate.judging.selectors import verdict_for_pair

    if assignment is None or assignment.kind != Assignment.Kind.PAIR:
        return None
    # Asked on every pair dealt: the few campaigns that show a judge come from the cache (forgotten when a judge is
    # saved), so the annotator's cycle asks the database nothing more where no campaign shows one.
    showing = cached_read(JUDGE_HINTS, "campaigns", _campaigns_showing_judge)
    if assignment.pair.campaign_id not in showing:
        return None
    return verdict_for_pair(pair_id=assignment.pair_id)


def _campaigns_showing_judge() -> set[int]:
    return set(Judge.objects.filter(show_to_annotators=True, enabled=True).values_list("campaign_id", flat=True))


def judge_hint_record(*, judgement: Judgement, verdict_id: str | None) -> JudgeHint | None:
    """Note that the vote was cast with the judge's verdict on screen: only a verdict the page could show for this
    pair (verdict_for_pair) counts; anything else posted is ignored. Idempotent for a resent vote."""
    from annotate.judging.selectors import verdict_for_pair

    if not verdict_id or judgement.annotator_id is None or judgement.is_repeat or judgement.pair.gold_choice:
        return None
    shown = verdict_for_pair(pair_id=judgement.pair_id)
    if shown is None or str(shown.pk) != str(verdict_id).strip():
        return None
    hint, _ = JudgeHint.objects.get_or_create(judgement=judgement, defaults={"verdict": shown})
    return hint
