"""The lineage of every vote: prompt -> completions (model version, sampling) -> pair -> assignment -> judgement."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from annotate import events
from annotate.errors import Conflict
from annotate.events import webhook_events_emit
from annotate.owners import heartbeat


def conversation_hash(messages: list[dict[str, Any]]) -> str:
    """A stable digest of a conversation, so the same prompt is stored once."""
    canonical = json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# How many answers a pair may show: two are compared, more are ranked (annotate/annotation/rankings.py).
MIN_ANSWERS_PER_PAIR = 2
MAX_ANSWERS_PER_PAIR = 4


class CampaignQuerySet(models.QuerySet["Campaign"]):
    def open_to(self, user: Any) -> CampaignQuerySet:
        """Active campaigns this annotator may work on: those with no groups named, and those of their groups."""
        groups = user.groups.all()
        return self.filter(is_active=True).filter(Q(groups__isnull=True) | Q(groups__in=groups)).distinct()


class Campaign(models.Model):
    """A set of prompts annotated under one set of guidelines and rules. Prompts name it by `prompt_set`."""

    name = models.CharField(max_length=100, unique=True, help_text="The prompt set's name (prompts name it).")
    title = models.CharField(max_length=200, blank=True)
    guidelines = models.TextField(blank=True, help_text="Markdown, shown to annotators above every pair.")
    votes_per_pair = models.PositiveSmallIntegerField(
        default=1, help_text="Overlap k: annotators who vote on each pair (each new pair takes it from here)."
    )
    gold_rate = models.FloatField(default=0.0, help_text="Share of pairs served that are gold pairs (0 to 1).")
    repeat_rate = models.FloatField(
        default=0.0, help_text="Share of pairs served that repeat one the annotator judged earlier, sides swapped."
    )
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="campaigns", help_text="Who may work on it; none: every annotator."
    )
    is_active = models.BooleanField(default=True, help_text="Paused campaigns serve no pairs.")
    quota_per_annotator = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Votes each annotator is asked for in this campaign; empty: no quota.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Sides(models.TextChoices):
        SELF = "self", "Two answers of the serving version"
        VERSION = "version", "The serving version against a named earlier version"
        SETTINGS = "settings", "Two sampling settings of the serving version"

    # What its new pairs are sampled with (empty: the deployment's SAMPLING_* defaults); bounds in
    # annotate.sampling.generation.sampling_field_specs. Each answer records what made it, so a change applies to
    # new pairs only.
    system_prompt = models.TextField(blank=True, help_text="Sent as the system message before each prompt.")
    temperature = models.FloatField(null=True, blank=True, help_text="Empty: SAMPLING_TEMPERATURE.")
    top_p = models.FloatField(null=True, blank=True, help_text="Empty: SAMPLING_TOP_P.")
    max_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: SAMPLING_MAX_TOKENS.")
    sides = models.CharField(
        max_length=10, choices=Sides.choices, default=Sides.SELF, help_text="What the two answers of a pair are."
    )
    opponent_version = models.ForeignKey(
        "ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="With sides 'version': the earlier version that makes the second answer.",
    )
    second_temperature = models.FloatField(
        null=True, blank=True, help_text="With sides 'settings': the second answer's temperature (empty: the first's)."
    )
    second_top_p = models.FloatField(
        null=True, blank=True, help_text="With sides 'settings': the second answer's top_p (empty: the first's)."
    )
    edits_allowed = models.BooleanField(
        default=False, help_text="Annotators may write a better answer with their vote (annotate.annotation.edits)."
    )
    # Rank K answers (issue 19 part 2): more than 2 makes each new pair carry extra answers that annotators rank.
    answers_per_pair = models.PositiveSmallIntegerField(
        default=2,
        validators=[MinValueValidator(MIN_ANSWERS_PER_PAIR), MaxValueValidator(MAX_ANSWERS_PER_PAIR)],
        help_text=f"Answers each new pair shows ({MIN_ANSWERS_PER_PAIR}: compare two; up to {MAX_ANSWERS_PER_PAIR}: "
        "annotators rank them).",
    )
    # Multi-turn (annotate.turns): after a vote, the annotator may write the next user turn of the conversation.
    continuation_allowed = models.BooleanField(
        default=False,
        help_text="After choosing an answer, annotators may write the next user turn; its pair is sampled live.",
    )

    objects = CampaignQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(votes_per_pair__gte=1), name="campaign_at_least_one_vote"),
            models.CheckConstraint(condition=Q(gold_rate__gte=0, gold_rate__lte=1), name="campaign_gold_rate"),
            models.CheckConstraint(condition=Q(repeat_rate__gte=0, repeat_rate__lte=1), name="campaign_repeat_rate"),
            models.CheckConstraint(
                condition=Q(answers_per_pair__gte=MIN_ANSWERS_PER_PAIR, answers_per_pair__lte=MAX_ANSWERS_PER_PAIR),
                name="campaign_answers_per_pair",
            ),
        ]

    def __str__(self) -> str:
        return self.title or self.name

    def clean(self) -> None:
        """The rules between its sampling fields (each field's own bounds are in sampling_field_specs): what its sides
        compare must be named. The form runs this through full_clean, the API serializer on a copy."""
        problems = {}
        if self.sides == self.Sides.VERSION:
            opponent = self.opponent_version
            if opponent is None:
                problems["opponent_version"] = "name the earlier version to compare the serving one with"
            elif opponent.status not in (ModelVersion.Status.SERVING, ModelVersion.Status.RETIRED):
                problems["opponent_version"] = f"{opponent} has never served: choose a version that has"
        if self.sides == self.Sides.SETTINGS and self.second_temperature is None and self.second_top_p is None:
            problems["second_temperature"] = "set the second answer's temperature or top_p (or both)"
        if problems:
            raise ValidationError(problems)

    @classmethod
    def for_prompt_set(cls, name: str) -> Campaign:
        """The campaign of a prompt set, made with the deployment's defaults the first time a set is used."""
        campaign, _ = cls.objects.get_or_create(
            name=name, defaults={"title": name, "votes_per_pair": settings.JUDGEMENTS_PER_PAIR}
        )
        return campaign


class Prompt(models.Model):
    """A conversation to be answered: one or more messages, the last one from the user."""

    messages = models.JSONField(help_text='OpenAI-style messages: [{"role": "user", "content": "..."}, ...]')
    content_hash = models.CharField(max_length=64, unique=True, editable=False)
    prompt_set = models.CharField(max_length=100, default="default", db_index=True)
    tags = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=200, blank=True, help_text="Where it came from: a file, 'demo', 'api'...")
    is_active = models.BooleanField(default=True, help_text="Inactive prompts are not sampled for new pairs.")
    created_at = models.DateTimeField(auto_now_add=True)
    # The model server's refusals (HTTP 4xx: too long, ...): after PROMPT_MAX_REFUSALS the prompt is set aside
    # (not sampled) until staff fix it and set the count back to 0.
    refusal_count = models.PositiveIntegerField(
        default=0, help_text="Times the model server refused to answer it; set to 0 to sample it again."
    )
    last_refusal = models.TextField(blank=True, help_text="The model server's reason, the last time it refused.")
    last_refused_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Prompt {self.pk}: {self.last_user_message[:60]}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.content_hash = conversation_hash(self.messages)
        super().save(*args, **kwargs)

    @property
    def last_user_message(self) -> str:
        return str(self.messages[-1]["content"]) if self.messages else ""

    @property
    def earlier_messages(self) -> list[dict[str, Any]]:
        return list(self.messages[:-1])


class ModelServer(Protocol):
    """What model-version transitions need from the model server (annotate.sampling.generation.ModelServerPool)."""

    def served_models(self) -> list[str]: ...
    def load_lora_adapter(self, *, name: str, path: str) -> None: ...
    def unload_lora_adapter(self, *, name: str) -> None: ...


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def serving(self) -> ModelVersion | None:
        return self.filter(status=ModelVersion.Status.SERVING).first()

    def unloadable(self, loaded: Collection[str]) -> ModelVersionQuerySet:
        """Adapters among `loaded` (names the model server holds) that may be unloaded to make room, least recently
        used first: every one but the serving version and a running canary's candidate."""
        return (
            self.filter(name__in=loaded)
            .exclude(adapter_path="")
            .exclude(status=ModelVersion.Status.SERVING)
            .exclude(training_round__status=TrainingRound.Status.CANARY)
            .order_by(F("last_used_at").asc(nulls_first=True), "id")
        )

    def ensure_base(self, *, name: str, base_model: str) -> ModelVersion:
        """The base model's version, made the serving one when nothing serves yet."""
        version, _ = self.get_or_create(name=name, defaults={"base_model": base_model})
        with transaction.atomic():
            if not self.filter(status=ModelVersion.Status.SERVING).exists():
                self.filter(pk=version.pk).update(status=ModelVersion.Status.SERVING, serving_since=timezone.now())
        version.refresh_from_db()
        return version


class ModelVersion(models.Model):
    """The base model or a trained adapter, under the name the model server serves it as.

    Its status is a state machine owned here: candidate -> serving -> retired (-> serving again, a rollback),
    candidate -> rejected; external versions (imported answers) never change. Other modules call the methods.
    """

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        SERVING = "serving", "Serving"
        RETIRED = "retired", "Retired"
        REJECTED = "rejected", "Rejected"
        EXTERNAL = "external", "External (imported answers; never served)"

    name = models.CharField(max_length=200, unique=True, help_text="The model name as served by vLLM.")
    base_model = models.CharField(max_length=500, help_text="Base model directory or hub id.")
    adapter_path = models.CharField(max_length=500, blank=True, help_text="LoRA adapter directory; empty for a base.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CANDIDATE)
    created_at = models.DateTimeField(auto_now_add=True)
    serving_since = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was last made sure of on the model server, to sample from it."
    )

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="serving"), name="one_serving_model_version"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_adapter(self) -> bool:
        return bool(self.adapter_path)

    @property
    def can_serve(self) -> bool:
        return self.status in (self.Status.CANDIDATE, self.Status.SERVING, self.Status.RETIRED) and not self.is_deciding

    @property
    def is_deciding(self) -> bool:
        """A candidate whose round has not decided yet (evaluating it, or a canary waiting for votes): only that
        round's decision may make it serve, or staff deciding the canary early."""
        if self.status != self.Status.CANDIDATE:
            return False
        try:
            training_round = self.training_round
        except ObjectDoesNotExist:
            return False
        return training_round.status in (TrainingRound.Status.EVALUATING, TrainingRound.Status.CANARY)

    def ensure_loaded(self, server: ModelServer, *, only_with_room: bool = False) -> bool:
        """Make sure the model server has this version (vLLM forgets run-time adapters when it restarts), and note
        that it is about to be used. Returns whether it is loaded.

        The server holds at most VLLM_MAX_LORAS adapters: loading one more first unloads the least recently used
        adapters that may go (ModelVersionQuerySet.unloadable). When none may go, this version is loaded anyway
        (the serving version and a canary must be there), unless `only_with_room`, which leaves it unloaded and
        returns False. Raises ModelServerUnavailable when the server cannot be reached, ModelServerRefused when it
        refuses.
        """
        if not self.is_adapter:
            return True
        loaded = server.served_models()
        if self.name not in loaded:
            bases = {
                settings.SERVED_MODEL_NAME,
                *type(self).objects.filter(adapter_path="").values_list("name", flat=True),
            }
            adapters = [name for name in loaded if name not in bases]
            over = len(adapters) + 1 - settings.VLLM_MAX_LORAS
            if over > 0:
                unloadable = list(type(self).objects.unloadable(adapters).exclude(pk=self.pk)[:over])
                if len(unloadable) < over and only_with_room:
                    return False
                for version in unloadable:
                    server.unload_lora_adapter(name=version.name)
            server.load_lora_adapter(name=self.name, path=self.adapter_path)
        self.last_used_at = timezone.now()
        type(self).objects.filter(pk=self.pk).update(last_used_at=self.last_used_at)
        return True

    def unload(self, server: ModelServer) -> None:
        """Free the server's adapter slot (a no-op for a base model, or an adapter the server does not hold)."""
        if self.is_adapter and self.status != self.Status.SERVING:
            server.unload_lora_adapter(name=self.name)

    def serve(self, server: ModelServer) -> None:
        """Make this version the one new pairs are sampled from: a promotion or a rollback.

        Loads it first: when the server cannot load it, this raises and nothing changes. Conflict when its status
        does not allow serving (rejected, external).
        """
        if self.is_deciding:
            raise Conflict(
                f"{self.name} is the candidate of round {self.training_round.pk}, which is still deciding "
                "whether it serves: decide its canary (promote or reject) instead"
            )
        if not self.can_serve:
            raise Conflict(f"{self.name} is {self.get_status_display().lower()}; it cannot serve")
        self.ensure_loaded(server)
        now = timezone.now()
        was = self.status
        with transaction.atomic():
            type(self).objects.filter(status=self.Status.SERVING).exclude(pk=self.pk).update(status=self.Status.RETIRED)
            type(self).objects.filter(pk=self.pk).update(status=self.Status.SERVING, serving_since=now)
            if was != self.Status.SERVING:
                event = events.VERSION_ROLLED_BACK if was == self.Status.RETIRED else events.VERSION_SERVED
                webhook_events_emit(event=event, payload={"version": self.pk, "name": self.name, "was": was})
        self.refresh_from_db()

    def approve(self) -> None:
        """An admin overrides the gate: a rejected version becomes a candidate again, so it may be served."""
        if self.status == self.Status.CANDIDATE:
            return
        if self.status != self.Status.REJECTED:
            raise Conflict(f"{self.name} is {self.get_status_display().lower()}; only a rejected version is approved")
        type(self).objects.filter(pk=self.pk, status=self.Status.REJECTED).update(status=self.Status.CANDIDATE)
        self.refresh_from_db()

    def reject(self) -> None:
        """A candidate that must not serve (the gate, or an admin, said no)."""
        if self.status != self.Status.CANDIDATE:
            state = self.get_status_display().lower()
            raise Conflict(f"{self.name} is {state}, not a candidate; it cannot be rejected")
        type(self).objects.filter(pk=self.pk, status=self.Status.CANDIDATE).update(status=self.Status.REJECTED)
        self.refresh_from_db()


class Completion(models.Model):
    """One answer sampled from one model version, with everything needed to sample it again."""

    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="completions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="completions")
    text = models.TextField()
    # The exact request parameters: temperature, top_p, max_tokens, seed, and anything else sent.
    sampling = models.JSONField(default=dict, blank=True)
    seed = models.BigIntegerField(null=True, blank=True, help_text="Empty for imported answers.")
    finish_reason = models.CharField(max_length=30, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True)
    completion_tokens = models.PositiveIntegerField(null=True)
    latency_ms = models.PositiveIntegerField(null=True)
    response_id = models.CharField(max_length=200, blank=True, help_text="The id the model server gave the answer.")
    server = models.CharField(max_length=500, blank=True, help_text="The model server replica that made it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Completion {self.pk} ({self.model_version})"


class PairQuerySet(models.QuerySet["Pair"]):
    def needing_judgements(self) -> PairQuerySet:
        return self.filter(judgement_count__lt=F("judgements_required"))

    def open(self) -> PairQuerySet:
        """Pairs with a free place: fewer votes plus live leases than they need. Gold pairs are served apart."""
        return self.filter(gold_choice="", judgement_count__lt=F("judgements_required") - F("lease_count"))


class Pair(models.Model):
    """Two answers to one prompt, to be compared. "A" and "B" are the pair's own labels, not screen sides."""

    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="pairs")
    completion_a = models.ForeignKey(Completion, on_delete=models.PROTECT, related_name="+")
    completion_b = models.ForeignKey(Completion, on_delete=models.PROTECT, related_name="+")
    # The version that was serving when the pair was sampled: both answers coming from it makes the pair on-policy.
    sampled_from = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="pairs")
    campaign = models.ForeignKey(
        Campaign, null=True, blank=True, on_delete=models.PROTECT, related_name="pairs", help_text="Its prompt's."
    )
    # Empty when the campaign's votes_per_pair is to be used (see save).
    judgements_required = models.PositiveSmallIntegerField(default=None)
    # Kept in step with the judgements and the live leases inside the same transactions, so the annotation queue
    # finds a pair with a free place through an index instead of counting rows on every request.
    judgement_count = models.PositiveSmallIntegerField(default=0)
    lease_count = models.PositiveSmallIntegerField(default=0, help_text="Live leases (not gold, not repeats).")
    gold_choice = models.CharField(
        max_length=10,
        blank=True,
        default="",
        help_text="For a gold pair, the expected answer (a, b, tie or both_bad); its votes never train.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # A ranking pair (its campaign's answers_per_pair > 2) carries answers beyond A and B, in PairExtraAnswer rows;
    # the count is kept here so that a lease knows how to show the pair without reading them.
    answer_count = models.PositiveSmallIntegerField(default=2, help_text="Answers shown: A, B and the extra ones.")

    objects = PairQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["judgement_count", "judgements_required"], name="pair_open_idx"),
            # The annotation queue: open pairs, fewest votes first, oldest first; small because full pairs leave it.
            models.Index(
                fields=["judgement_count", "id"],
                name="pair_queue_idx",
                condition=Q(gold_choice="", judgement_count__lt=F("judgements_required") - F("lease_count")),
            ),
            models.Index(fields=["campaign", "gold_choice"], name="pair_gold_idx", condition=~Q(gold_choice="")),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(completion_a=F("completion_b")), name="pair_two_distinct_completions"),
            models.CheckConstraint(
                condition=Q(gold_choice__in=["", "a", "b", "tie", "both_bad"]), name="pair_gold_choice_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Pair {self.pk}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self._state.adding and self.campaign_id is None:
            self.campaign = Campaign.for_prompt_set(self.prompt.prompt_set)
        if self.judgements_required is None:
            self.judgements_required = self.campaign.votes_per_pair if self.campaign else 1
        super().save(*args, **kwargs)

    @property
    def is_complete(self) -> bool:
        return self.judgement_count >= self.judgements_required

    @property
    def is_gold(self) -> bool:
        return bool(self.gold_choice)

    @property
    def is_head_to_head(self) -> bool:
        return self.completion_a.model_version_id != self.completion_b.model_version_id

    @property
    def is_ranking(self) -> bool:
        return self.answer_count > 2

    def answers(self) -> list[Completion]:
        """Its answers by position: A (0), B (1), then the extra ones (2, 3) of a ranking pair."""
        if self.answer_count <= 2:
            return [self.completion_a, self.completion_b]  # nothing more to ask the database for
        extra = [row.completion for row in self.extra_answers.select_related("completion").order_by("position")]
        return [self.completion_a, self.completion_b, *extra]


class PairExtraAnswer(models.Model):
    """An answer of a ranking pair beyond A and B: its position (2, 3) in the pair's own order, not the screen's."""

    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="extra_answers")
    position = models.PositiveSmallIntegerField()
    completion = models.ForeignKey(Completion, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["pair", "position"]
        constraints = [
            models.UniqueConstraint(fields=["pair", "position"], name="pair_extra_answer_position_once"),
            models.UniqueConstraint(fields=["pair", "completion"], name="pair_extra_answer_completion_once"),
            models.CheckConstraint(
                condition=Q(position__gte=2, position__lt=MAX_ANSWERS_PER_PAIR), name="pair_extra_answer_position"
            ),
        ]

    def __str__(self) -> str:
        return f"Answer {self.position} of {self.pair}"


class Assignment(models.Model):
    """A pair shown to one annotator: the lease, and which answer was on which side of their screen."""

    class Status(models.TextChoices):
        LEASED = "leased", "Leased"
        JUDGED = "judged", "Judged"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    a_on_left = models.BooleanField(help_text="True when completion A was shown on the left.")

    class Kind(models.TextChoices):
        PAIR = "pair", "A pair that needs votes"
        GOLD = "gold", "A gold pair (known answer)"
        REPEAT = "repeat", "A pair judged earlier, shown again with sides swapped"

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.LEASED)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.PAIR)
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # An annotator never sees the same pair twice, but for one deliberate repeat.
            models.UniqueConstraint(
                fields=["pair", "annotator"], condition=~Q(kind="repeat"), name="assignment_once_per_annotator"
            ),
            models.UniqueConstraint(
                fields=["pair", "annotator"], condition=Q(kind="repeat"), name="assignment_one_repeat_per_annotator"
            ),
        ]
        indexes = [
            models.Index(fields=["annotator", "status"], name="assignment_annotator_idx"),
            models.Index(fields=["expires_at"], name="assignment_lease_expiry_idx", condition=Q(status="leased")),
        ]

    def __str__(self) -> str:
        return f"Assignment {self.pk} of {self.pair} to {self.annotator}"

    @property
    def left(self) -> Completion:
        return self.pair.completion_a if self.a_on_left else self.pair.completion_b

    @property
    def right(self) -> Completion:
        return self.pair.completion_b if self.a_on_left else self.pair.completion_a

    @property
    def answer_order(self) -> list[int]:
        """The pair's answer positions in the order this annotator's screen shows them (left to right, top to
        bottom): A before B exactly when `a_on_left`, the rest shuffled once per assignment (seeded by its id, so a
        reload shows the same order without storing it)."""
        order = list(range(self.pair.answer_count))
        random.Random(f"answer-order:{self.pk}").shuffle(order)
        if (order.index(0) < order.index(1)) != self.a_on_left:
            first, second = order.index(0), order.index(1)
            order[first], order[second] = order[second], order[first]
        return order


class Judgement(models.Model):
    """One vote on a pair. The choice is stored relative to the pair (A/B), never to the screen."""

    class Choice(models.TextChoices):
        A = "a", "A is better"
        B = "b", "B is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"

    class Strength(models.IntegerChoices):
        SLIGHTLY = 1, "Slightly better"
        CLEARLY = 2, "Clearly better"
        MUCH = 3, "Much better"

    class Source(models.TextChoices):
        HUMAN = "human", "Human annotator"
        SIMULATED = "simulated", "Simulated annotator"
        IMPORTED = "imported", "Imported"
        JUDGE = "judge", "AI judge"

    pair = models.ForeignKey(Pair, on_delete=models.PROTECT, related_name="judgements")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="judgements"
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.PROTECT, related_name="judgement"
    )
    choice = models.CharField(max_length=10, choices=Choice.choices)
    strength = models.PositiveSmallIntegerField(choices=Strength.choices, null=True, blank=True)
    rationale = models.TextField(blank=True)
    a_on_left = models.BooleanField(null=True, help_text="Which side A was shown on; empty for imported votes.")
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.UUIDField(unique=True, default=uuid.uuid4)
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.HUMAN)
    source_detail = models.CharField(max_length=300, blank=True, help_text="For imported votes: file and format.")
    # A second vote on a pair the annotator judged before, shown again with sides swapped: it measures their
    # self-consistency and is never counted as a vote on the pair (not in training, exports or the pair's count).
    is_repeat = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # A ranking of a ranking pair's answers (annotate/annotation/rankings.py): each answer's rank by the pair's own
    # positions (A, B, extras), 1 the best, equal ranks a tie; `choice` then says what it says of A against B. All
    # bad: every rank 1 and the choice both_bad. Empty for a vote on two answers.
    ranking = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["pair", "annotator"], condition=Q(is_repeat=False), name="judgement_once_per_annotator"
            ),
            models.UniqueConstraint(
                fields=["pair", "annotator"], condition=Q(is_repeat=True), name="judgement_one_repeat_per_annotator"
            ),
            models.CheckConstraint(
                condition=Q(strength__isnull=True) | Q(choice__in=["a", "b"]), name="judgement_strength_only_for_a_b"
            ),
        ]

    def __str__(self) -> str:
        return f"Judgement {self.pk} on {self.pair}: {self.choice}"

    @property
    def choice_on_screen(self) -> str:
        """The choice as the annotator saw it: left, right, tie or both_bad."""
        if self.choice not in (self.Choice.A, self.Choice.B) or self.a_on_left is None:
            return str(self.choice)
        chose_a = self.choice == self.Choice.A
        return "left" if chose_a == self.a_on_left else "right"


class UndoneJudgement(models.Model):
    """A vote its annotator took back (undo) before any round read it: what it said, and its idempotency key, so
    that a late resend of the request that cast it is refused instead of casting it again."""

    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="+")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    idempotency_key = models.UUIDField(unique=True)
    choice = models.CharField(max_length=10, choices=Judgement.Choice.choices)
    strength = models.PositiveSmallIntegerField(choices=Judgement.Strength.choices, null=True, blank=True)
    rationale = models.TextField(blank=True)
    judged_at = models.DateTimeField()
    undone_at = models.DateTimeField(auto_now_add=True)
    edit = models.TextField(blank=True, help_text="The better answer written with the vote (offered again).")
    ranking = models.JSONField(null=True, blank=True, help_text="The ranking, when the vote was one.")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Undone vote on {self.pair} by {self.annotator}"


class AnnotatorStanding(models.Model):
    """What staff decided about one annotator: paused (no pairs served), votes excluded (from training and exports).

    Changed only through AnnotatorAction records (services.annotator_act), so every change says who and why."""

    annotator = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="standing")
    paused = models.BooleanField(default=False)
    votes_excluded = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"Standing of {self.annotator}"


class AnnotatorAction(models.Model):
    """One decision about an annotator, kept for the record; the opposite action reverses it."""

    class Action(models.TextChoices):
        PAUSE = "pause", "Paused"
        RESUME = "resume", "Resumed"
        EXCLUDE = "exclude", "Votes excluded from training and exports"
        INCLUDE = "include", "Votes included again"

    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="actions_about")
    action = models.CharField(max_length=10, choices=Action.choices)
    reason = models.TextField()
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()}: {self.annotator} by {self.by}"


class QueuedWork:
    """What an export and an import share while they wait for a worker (each has `status` with "queued", `error`,
    `heartbeat_at` and `created_at`). While queued, heartbeat_at is when it was last sent to the task queue again."""

    work_noun = "work"  # what the page and the API call it

    def _queued(self) -> models.QuerySet[Any]:
        return cast(Any, type(self))._default_manager.filter(pk=cast(Any, self).pk, status="queued")

    def note_waiting(self, *, reason: str) -> None:
        """It could not be handed to a worker: it says why (and stays queued)."""
        self._queued().update(error=reason)
        cast(Any, self).refresh_from_db()

    def require_queued(self) -> None:
        """Only a queued one is handed to the workers again: Conflict (with its status) for one running or ended."""
        work, noun = cast(Any, self), self.work_noun
        if work.status != "queued":
            raise Conflict(f"{noun} {work.pk} is {work.status}: only a queued {noun} is sent again", status=work.status)

    def note_sent_again(self) -> bool:
        """Handed to the task queue once more; False when a worker took it meanwhile."""
        return bool(self._queued().update(heartbeat_at=timezone.now()) == 1)

    @classmethod
    def unclaimed(cls, *, silent_since: datetime) -> models.QuerySet[Any]:
        """Still queued, neither asked for nor sent again since `silent_since`: its message may be gone with a broker
        that restarted without keeping it."""
        return (
            cast(Any, cls)
            ._default_manager.filter(status="queued")
            .filter(Q(heartbeat_at__lt=silent_since) | Q(heartbeat_at__isnull=True, created_at__lt=silent_since))
        )


class Export(QueuedWork, models.Model):
    """A preference dataset written to a file, with its dataset card beside it."""

    work_noun = "export"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    dataset_format = models.CharField(max_length=30, help_text="trl-preference, trl-unpaired, arena or hh-rlhf")
    file_format = models.CharField(max_length=10, default="jsonl", help_text="jsonl or parquet")
    filters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    row_count = models.PositiveIntegerField(null=True, blank=True)
    path = models.CharField(max_length=500, blank=True, help_text="The data file; the card is beside it.")
    error = models.TextField(blank=True)
    votes_total = models.PositiveIntegerField(null=True, blank=True, help_text="Votes matching the filters.")
    votes_read = models.PositiveIntegerField(default=0, help_text="Votes read so far (updated while running).")
    holder = models.CharField(max_length=200, blank=True, help_text="The worker process writing it (host:pid:token).")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life of its worker while running (renewed every few seconds)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Export {self.pk} ({self.dataset_format}, {self.file_format})"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def progress_percent(self) -> int | None:
        if not self.votes_total:
            return 100 if self.status == self.Status.DONE else None
        return min(100, 100 * self.votes_read // self.votes_total)

    # Transitions: conditional updates, so two workers given the same export never both run it.

    def start(self, *, path: str, votes_total: int, holder: str) -> bool:
        """queued -> running, held by `holder`; False (and nothing changed) when it started elsewhere or is over."""
        started = Export.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING,
            path=path,
            votes_total=votes_total,
            votes_read=0,
            error="",
            holder=holder,
            heartbeat_at=timezone.now(),
        )
        self.refresh_from_db()
        return started == 1

    def renew(self) -> bool:
        """Its holder's heartbeat; False when it is no longer running under this holder."""
        return (
            Export.objects.filter(pk=self.pk, status=self.Status.RUNNING, holder=self.holder).update(
                heartbeat_at=timezone.now()
            )
            == 1
        )

    def end_abandoned(self, *, reason: str) -> bool:
        """running -> failed because its worker is gone; only if nobody renewed it since it was looked at."""
        ended = Export.objects.filter(
            pk=self.pk, status=self.Status.RUNNING, holder=self.holder, heartbeat_at=self.heartbeat_at
        ).update(status=self.Status.FAILED, error=reason, finished_at=timezone.now())
        self.refresh_from_db()
        return ended == 1

    def record_progress(self, *, votes_read: int) -> None:
        Export.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(votes_read=votes_read)

    def finish(self, *, row_count: int, votes_read: int) -> None:
        """running -> done."""
        done = Export.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            status=self.Status.DONE, row_count=row_count, votes_read=votes_read, finished_at=timezone.now()
        )
        self.refresh_from_db()
        if done:
            webhook_events_emit(event=events.EXPORT_READY, payload=self.webhook_data)

    @property
    def webhook_data(self) -> dict[str, Any]:
        return {"export": self.pk, "dataset_format": self.dataset_format, "file_format": self.file_format,
                "row_count": self.row_count}  # fmt: skip

    def fail(self, *, error: str) -> None:
        """queued or running -> failed."""
        Export.objects.filter(pk=self.pk, status__in=(self.Status.QUEUED, self.Status.RUNNING)).update(
            status=self.Status.FAILED, error=error, finished_at=timezone.now()
        )
        self.refresh_from_db()


class DataImportManager(models.Manager["DataImport"]):
    def get_queryset(self) -> models.QuerySet[DataImport]:
        # The uploaded file (up to DATA_IMPORT_MAX_BYTES) is read once, by the worker: pages and the API, which poll
        # an import every second, never load it.
        return super().get_queryset().defer("content")


class DataImport(QueuedWork, models.Model):
    """A file of prompts or preference data uploaded on a page or through the API, imported by a worker.

    The file is kept in the row (not on a disk that the web and the worker hosts would both have to mount) until the
    import ends. The import writes in one transaction that also marks it done, so it is all or nothing: a worker
    killed midway leaves nothing behind, and `end_abandoned` says so.
    """

    work_noun = "import"

    class Kind(models.TextChoices):
        PROMPTS = "prompts", "Prompts"
        PREFERENCES = "preferences", "Preference data"

    class Status(models.TextChoices):  # labels other than Export's, so the API schema can name each enum
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Importing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=20, choices=Kind.choices)
    file_name = models.CharField(max_length=200)
    file_format = models.CharField(
        max_length=20, help_text="prompts: jsonl, csv or text; preferences: trl, hh-rlhf or ultrafeedback"
    )
    options = models.JSONField(default=dict, blank=True, help_text="prompt_set, and skip_bad for preference data.")
    content = models.BinaryField(blank=True, editable=False, help_text="The uploaded file; emptied when it ends.")
    size_bytes = models.PositiveBigIntegerField(default=0)
    fingerprint = models.CharField(
        max_length=64, help_text="SHA-256 of the kind, format, options and file: the same upload, sent again."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    rows_total = models.PositiveIntegerField(null=True, blank=True, help_text="Rows in the file (once it is read).")
    rows_done = models.PositiveIntegerField(default=0, help_text="Rows written so far (updated while running).")
    result = models.JSONField(default=dict, blank=True, help_text="What was stored and skipped, once done.")
    error = models.TextField(blank=True)
    line_errors = models.JSONField(
        default=list, blank=True, help_text="The first bad lines ({line, reason}): why it failed, or what was skipped."
    )
    line_error_count = models.PositiveIntegerField(default=0, help_text="All the bad lines, listed or not.")
    holder = models.CharField(max_length=200, blank=True, help_text="The worker process importing it (host:pid:token).")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life of its worker while running (renewed every second)."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = DataImportManager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            # A POST sent again (a retry, a double click) while the first is still queued or running finds it
            # instead of importing the same file twice at once.
            models.UniqueConstraint(
                fields=["fingerprint"],
                condition=Q(status__in=("queued", "running")),
                name="data_import_one_active_per_upload",
            )
        ]

    def __str__(self) -> str:
        return f"Import {self.pk} ({self.get_kind_display()}, {self.file_name})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def progress_percent(self) -> int | None:
        if not self.rows_total:
            return 100 if self.status == self.Status.DONE else None
        return min(100, 100 * self.rows_done // self.rows_total)

    # Transitions: conditional updates, so two workers given the same import never both run it, and a worker that
    # lost it (ended as abandoned) cannot finish it.

    def _running_mine(self) -> models.QuerySet[DataImport]:
        return DataImport.objects.filter(pk=self.pk, status=self.Status.RUNNING, holder=self.holder)

    def start(self, *, holder: str) -> bool:
        """queued -> running, held by `holder`; False (and nothing changed) when it started elsewhere or is over."""
        started = DataImport.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING, error="", holder=holder, heartbeat_at=timezone.now()
        )
        self.refresh_from_db()
        return started == 1

    def renew(self, *, rows_done: int) -> bool:
        """Its holder's heartbeat, with the rows written so far; False when it is no longer running under this
        holder."""
        return self._running_mine().update(heartbeat_at=timezone.now(), rows_done=rows_done) == 1

    def record_total(self, *, rows_total: int) -> None:
        self._running_mine().update(rows_total=rows_total)
        self.rows_total = rows_total

    def finish(self, *, result: dict[str, Any], line_errors: list[dict[str, Any]], line_error_count: int) -> bool:
        """running -> done, and the file let go; False when it is no longer this holder's (then the caller's
        transaction, which holds what was imported, must roll back)."""
        done = self._running_mine().update(
            status=self.Status.DONE,
            rows_done=self.rows_total or 0,
            result=result,
            line_errors=line_errors,
            line_error_count=line_error_count,
            content=b"",
            finished_at=timezone.now(),
        )
        return done == 1

    def fail(self, *, error: str, line_errors: list[dict[str, Any]] | None = None, line_error_count: int = 0) -> None:
        """queued or running (under this holder) -> failed, and the file let go."""
        DataImport.objects.filter(pk=self.pk).filter(
            Q(status=self.Status.QUEUED) | Q(status=self.Status.RUNNING, holder=self.holder)
        ).update(
            status=self.Status.FAILED,
            error=error,
            line_errors=line_errors or [],
            line_error_count=line_error_count,
            content=b"",
            finished_at=timezone.now(),
        )
        self.refresh_from_db()

    def end_abandoned(self, *, reason: str) -> bool:
        """running -> failed because its worker is gone; only if nobody renewed it since it was looked at."""
        ended = DataImport.objects.filter(
            pk=self.pk, status=self.Status.RUNNING, holder=self.holder, heartbeat_at=self.heartbeat_at
        ).update(status=self.Status.FAILED, error=reason, content=b"", finished_at=timezone.now())
        self.refresh_from_db()
        return ended == 1


class TrainingRound(models.Model):
    """One DPO round: the votes it froze, its config, what happened, and the model version it produced.

    Its status is a state machine owned here (TRANSITIONS); other modules move it only through `advance`, `finish`
    and `deploy_begin`, which refuse a move the table does not allow with Conflict. Its other fields are written only
    through its methods (`record`, `request_cancel`, `record_phases`, `record_evaluation`, `record_steps`), each of
    which bumps `revision`, so the round page's poll sees every change; `heartbeat` alone leaves it, as the page shows
    nothing a heartbeat changes.

    A running round is held by the worker that runs it, which heartbeats it (`heartbeating`) in every phase. One
    silent for ROUND_STALE_SECONDS is ended by `end_abandoned` (annotate.rounds.services.rounds_abandoned_end); its
    worker, should it wake up, finds the round ended at its next write (Conflict) or heartbeat (False) and stops.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PREPARING = "preparing", "Preparing data"
        TRAINING = "training", "Training"
        EVALUATING = "evaluating", "Evaluating"
        CANARY = "canary", "Canary: waiting for head-to-head votes"
        TRAINED = "trained", "Trained, not deployed"
        DEPLOYING = "deploying", "Deploying"
        SERVING = "serving", "Serving"
        REJECTED = "rejected", "Rejected by the eval gate"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Trigger(models.TextChoices):
        PAGE = "page", "Start round page"
        API = "api", "API"
        COMMAND = "command", "Management command"
        AUTOMATIC = "automatic", "Enough new votes"

    class GateMode(models.TextChoices):
        OFFLINE = "offline", "Offline: held-out accuracy decides"
        HUMAN = "human", "Human: a canary of head-to-head votes decides"
        BOTH = "both", "Both: the offline check, then the canary"

    ACTIVE_STATUSES = (
        Status.QUEUED,
        Status.PREPARING,
        Status.TRAINING,
        Status.EVALUATING,
        Status.CANARY,
        Status.DEPLOYING,
    )
    # Where each status may go. Failing is allowed from every running state (a crash, a lost worker); a round that
    # could not be deployed (trained) or that the gate rejected may be deployed again (a retry, an admin's override).
    TRANSITIONS: dict[str, tuple[str, ...]] = {
        Status.QUEUED: (Status.PREPARING, Status.CANCELLED, Status.FAILED),
        Status.PREPARING: (Status.TRAINING, Status.CANCELLED, Status.FAILED),
        Status.TRAINING: (Status.EVALUATING, Status.CANCELLED, Status.FAILED),
        Status.EVALUATING: (Status.DEPLOYING, Status.CANARY, Status.CANCELLED, Status.FAILED),
        # A canary ends by promotion (deploying, which serves it) or rejection; it stays active meanwhile.
        Status.CANARY: (Status.DEPLOYING, Status.REJECTED, Status.FAILED),
        Status.DEPLOYING: (Status.SERVING, Status.REJECTED, Status.TRAINED, Status.FAILED),
        Status.TRAINED: (Status.DEPLOYING, Status.FAILED),
        Status.REJECTED: (Status.DEPLOYING,),
        Status.SERVING: (),
        Status.FAILED: (),
        Status.CANCELLED: (),
    }

    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    # True while the round runs, NULL after: the unique constraint lets only one round run at a time.
    active = models.BooleanField(null=True, default=True, unique=True)
    parent_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="rounds_started")
    result_version = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="training_round"
    )
    config = models.JSONField(help_text="The training config (training.config.RoundConfig fields).")
    rules = models.JSONField(help_text="How votes became pairs (annotate.quality.preferences.PreferenceRules).")
    # The votes a round reads are every vote up to this id: frozen by a cut-off, not a list of ids.
    last_judgement_id = models.BigIntegerField(null=True, blank=True, help_text="The newest vote the round read.")
    votes_read = models.PositiveIntegerField(null=True, blank=True)
    votes_left_out = models.JSONField(default=dict, blank=True, help_text="Votes the rules left out, by reason.")
    label_smoothing_basis = models.CharField(
        max_length=300, blank=True, help_text="The disagreement the round measured (auto label smoothing reads it)."
    )
    weighting_basis = models.CharField(
        max_length=300, blank=True, help_text="How the training pairs' weights were set (config weighting)."
    )
    # Share of prompts held out for evaluation, fixed when the round starts: never above an earlier round's in the
    # lineage, so no round evaluates on a prompt an earlier one trained on, even when the setting grows.
    holdout_fraction = models.FloatField(default=0.2)
    train_pairs = models.PositiveIntegerField(null=True, blank=True)
    heldout_pairs = models.PositiveIntegerField(null=True, blank=True)
    # Pairs whose prompt is a conversation of more than one user turn (annotate.turns), among the above.
    multi_turn_train_pairs = models.PositiveIntegerField(null=True, blank=True)
    multi_turn_heldout_pairs = models.PositiveIntegerField(null=True, blank=True)
    directory = models.CharField(max_length=500, blank=True, help_text="Data, adapter, metrics and logs.")
    evaluation = models.JSONField(default=dict, blank=True)
    phase_seconds = models.JSONField(default=dict, blank=True, help_text="Wall time of each phase, in seconds.")
    override_reason = models.TextField(blank=True, help_text="Why an admin promoted a round the gate rejected.")
    gate_mode = models.CharField(max_length=10, choices=GateMode.choices, default=GateMode.OFFLINE)
    canary_started_at = models.DateTimeField(null=True, blank=True)
    canary_decision = models.JSONField(
        default=dict, blank=True, help_text="How the canary ended: decision, reason, who, and the tally then."
    )
    error = models.TextField(blank=True)
    log_tail = models.TextField(blank=True)
    process_id = models.IntegerField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Bumped by every change a watcher would see, so the round page's poll can answer "nothing new" cheaply.
    revision = models.PositiveIntegerField(default=0)
    edits_used = models.PositiveIntegerField(
        null=True, blank=True, help_text="Annotators' written answers the round trained on (rules: edits)."
    )

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Round {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return [step.values for step in self.steps.all()]

    @property
    def last_metrics(self) -> dict[str, Any]:
        last = self.steps.order_by("-step").first()
        return last.values if last else {}

    @property
    def progress_percent(self) -> int:
        if self.status in (self.Status.SERVING, self.Status.TRAINED, self.Status.REJECTED, self.Status.CANARY):
            return 100
        last = self.last_metrics
        if not last.get("max_steps"):
            return 0
        return min(100, int(100 * last.get("step", 0) / last["max_steps"]))

    def record(self, **fields: Any) -> None:
        """Save fields of a running round that are not the status (progress, results) with a heartbeat; the status is
        left alone. Conflict when the round ended meanwhile (its worker no longer holds it)."""
        if "status" in fields or "active" in fields:
            raise ValueError("a round's status changes through advance, finish or deploy_begin")
        self._write(fields, only_active=True)

    def heartbeat(self) -> bool:
        """Say that the worker running this round is alive; False (nothing written) when the round ended meanwhile:
        its worker then stops. A running round without one for ROUND_STALE_SECONDS is ended as abandoned.

        The revision stays: the page would only redraw the same round."""
        try:
            self._write({}, only_active=True, revision=False)
        except Conflict:
            return False
        return True

    @contextmanager
    def heartbeating(self) -> Iterator[None]:
        """Heartbeat the round from a thread while the block runs, every eighth of ROUND_STALE_SECONDS, whatever the
        block does (reading votes, training, publishing, deploying); the thread stops once the round has ended."""
        beating = type(self).objects.get(pk=self.pk)  # the thread's own copy: it never writes into the caller's
        every = max(0.1, settings.ROUND_STALE_SECONDS / 8)
        with heartbeat(beating.heartbeat, every=every, name=f"round {self.pk}"):
            yield

    def request_cancel(self) -> None:
        """Ask the worker running this round to stop it at its next look. Conflict when it ended meanwhile.

        No heartbeat: the request comes from a page or the API, not from the worker."""
        self._write({"cancel_requested": True}, only_active=True, heartbeat=False)

    def record_phases(self, seconds: dict[str, float]) -> None:
        """Add the wall time of phases, in seconds, to those recorded so far (only the round's worker writes them)."""
        self._write({"phase_seconds": {**self.phase_seconds, **seconds}})

    def record_evaluation(self, figures: dict[str, Any]) -> None:
        """Add figures measured after the evaluation (answer lengths, once deployed) to those saved."""
        with transaction.atomic():
            saved = type(self).objects.select_for_update().values_list("evaluation", flat=True).get(pk=self.pk)
            self._write({"evaluation": {**saved, **figures}})

    def record_steps(self, rows: list[dict[str, Any]]) -> None:
        """Append training steps as they are logged (one row each: the page's charts read only new rows). Conflict,
        and nothing written, when the round ended meanwhile."""
        with transaction.atomic():
            self._write({}, only_active=True)
            RoundStep.objects.bulk_create(
                [RoundStep(training_round=self, step=int(row.get("step", 0)), values=row) for row in rows]
            )

    def advance(self, status: str, **fields: Any) -> None:
        """Move to the next running phase (preparing -> training -> evaluating)."""
        self._move(status, fields)

    def finish(self, status: str, **fields: Any) -> None:
        """End the round (serving, trained, rejected, failed, cancelled): it stops blocking the next round."""
        if status in self.ACTIVE_STATUSES:
            raise ValueError(f"{status} is not an end state")
        self._move(status, {**fields, "active": None, "finished_at": timezone.now(), "process_id": None})
        webhook_events_emit(event=self.webhook_event, payload=self.webhook_data)

    def end_abandoned(self, *, reason: str) -> bool:
        """End a running round whose worker went silent, as it was looked at: a deploying round becomes trained (its
        adapter is whole; staff may promote it again), any other fails. False, and nothing written, when the round
        moved on or its worker sent a sign of life since. Its last heartbeat stays as it was."""
        ended = self.Status.TRAINED if self.status == self.Status.DEPLOYING else self.Status.FAILED
        if not self.is_active or ended not in self.TRANSITIONS[self.status]:
            return False
        fields = {"status": ended, "error": reason, "active": None, "finished_at": timezone.now(), "process_id": None}
        try:
            self._write(fields, expected_status=self.status, heartbeat=False, unchanged_since_seen=True)
        except Conflict:
            return False
        webhook_events_emit(event=self.webhook_event, payload=self.webhook_data)
        return True

    @property
    def webhook_event(self) -> str:
        return events.ROUND_FAILED if self.status == self.Status.FAILED else events.ROUND_FINISHED

    @property
    def webhook_data(self) -> dict[str, Any]:
        """What a webhook says about a round that ended (never its config or log: receivers get the outcome)."""
        return {
            "round": self.pk,
            "status": self.status,
            "error": self.error[:500],
            "result_version": self.result_version.name if self.result_version_id and self.result_version else None,
        }

    def deploy_begin(self) -> None:
        """Trained, rejected-then-overridden, or evaluated: deploying makes the round active again (one at a time)."""
        try:
            with transaction.atomic():
                self._move(self.Status.DEPLOYING, {"active": True})
        except IntegrityError:
            self.refresh_from_db()
            raise Conflict("another round is running; deploy this one after it ends") from None

    def _move(self, status: str, fields: dict[str, Any]) -> None:
        if status not in self.TRANSITIONS[self.status]:
            raise Conflict(f"round {self.pk} is {self.get_status_display().lower()}; it cannot become {status}")
        self._write({**fields, "status": status}, expected_status=self.status)

    def _write(
        self,
        fields: dict[str, Any],
        expected_status: str | None = None,
        *,
        only_active: bool = False,
        heartbeat: bool = True,
        revision: bool = True,
        unchanged_since_seen: bool = False,
    ) -> None:
        """The one place a round's fields are written, bumping its revision (the page's poll sees the change) unless
        `revision` is False (a heartbeat: nothing to see).

        A conditional update: when the status changed underneath (another process moved it), the round ended and
        `only_active` asks for a running one, or `unchanged_since_seen` asks for the heartbeat this copy saw and
        its worker sent another since, nothing is written and Conflict is raised."""
        now = timezone.now()
        values = {**fields}
        if revision:
            values["revision"] = F("revision") + 1
        if heartbeat:
            values["heartbeat_at"] = now
        rows = type(self).objects.filter(pk=self.pk)
        if expected_status is not None:
            rows = rows.filter(status=expected_status)
        if only_active:
            rows = rows.filter(active=True)
        if unchanged_since_seen:
            rows = rows.filter(heartbeat_at=self.heartbeat_at) if self.heartbeat_at else rows.filter(heartbeat_at=None)
        if rows.update(**values) != 1:
            self.refresh_from_db()
            raise Conflict(f"round {self.pk} changed meanwhile: it is {self.get_status_display().lower()}")
        for name, value in fields.items():
            setattr(self, name, value)
        if heartbeat:
            self.heartbeat_at = now
        if revision:
            self.refresh_from_db(fields=["revision"])


class RoundStep(models.Model):
    """One logged training step of a round (loss, reward accuracy, throughput, time left)."""

    training_round = models.ForeignKey(TrainingRound, on_delete=models.CASCADE, related_name="steps")
    step = models.PositiveIntegerField()
    values = models.JSONField()

    class Meta:
        ordering = ["training_round", "step", "id"]

    def __str__(self) -> str:
        return f"Step {self.step} of round {self.training_round_id}"


class SamplingClaimQuerySet(models.QuerySet["SamplingClaim"]):
    def live(self, now: Any) -> SamplingClaimQuerySet:
        return self.filter(expires_at__gt=now)


class SamplingClaim(models.Model):
    """A batch of pairs one sampling worker is making from a version: a row that names its holder and lives only as
    long as the holder's heartbeat renews it.

    While it lives its pairs count as on their way, so other workers take the next batch instead of the same one;
    it is released (deleted) by its holder alone. A holder killed without a word stops renewing it: once it expires
    (or at once, when the holder was a process on the same host that no longer exists) the next refill takes it over.
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="sampling_claims")
    pairs = models.PositiveIntegerField(help_text="Pairs this batch is to make.")
    holder = models.CharField(max_length=200, help_text="host:pid:token of the worker process sampling the batch.")
    claimed_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    objects = SamplingClaimQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.pairs} pairs from {self.version_id} by {self.holder}"


class RateCount(models.Model):
    """A request counter of the API throttles for one caller and one time window, when the cache is the database:
    the database cache's `incr` reads and then writes, and loses counts under concurrency; an UPDATE with F() does
    not (annotate.web.throttling.rate_count)."""

    key = models.CharField(max_length=250, unique=True)
    count = models.IntegerField(default=0)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.key}: {self.count}"


# --- Webhooks ------------------------------------------------------------------------------------------------------


class WebhookEndpoint(models.Model):
    """A URL staff registered to be told of events (annotate.events.WEBHOOK_EVENTS), each delivery signed with
    its secret (Standard Webhooks). The secret is shown once, when the endpoint is created; afterwards only masked."""

    url = models.CharField(max_length=500, help_text="http or https; only this host is ever sent to.")
    events = models.JSONField(default=list, help_text="The event names sent to it.")
    secret = models.CharField(max_length=100, help_text="whsec_ and base64: the signing key (Standard Webhooks).")
    active = models.BooleanField(default=True)
    allow_private = models.BooleanField(
        default=False, help_text="Staff allowed private, loopback and link-local addresses for its host."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Webhook {self.pk} ({self.url_masked})"

    @property
    def secret_masked(self) -> str:
        return f"whsec_…{self.secret[-4:]}" if self.secret else ""

    @property
    def url_masked(self) -> str:
        """The URL as pages, the API and logs show it: many receivers (chat tools' incoming hooks) take their secret
        in the path or the query, so past the host and the first path segment only the last 4 characters show."""
        parts = urlsplit(self.url)
        first, slash, more = parts.path.lstrip("/").partition("/")
        hidden = f"{slash}{more}" + (f"?{parts.query}" if parts.query else "")
        if len(hidden) <= 8:
            return self.url
        return f"{parts.scheme}://{parts.netloc}/{first}…{hidden[-4:]}"


class WebhookDelivery(models.Model):
    """One event for one endpoint, and every attempt to send it: the row is the truth, so a delivery whose worker
    died (its lease ran out) or whose task message was lost is sent again by the periodic sweep.

    pending -> delivered (a 2xx answer) or failed (every attempt in WEBHOOK_RETRY_SECONDS used, or the endpoint
    gone inactive). An attempt is taken with a conditional update (`claim`), so two workers never send one at once."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    QUEUED = "queued"  # the holder of a delivery handed to the task queue and not yet taken by a worker

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=50)
    payload = models.JSONField(help_text="The message body: type, timestamp and data.")
    message_id = models.CharField(max_length=50, unique=True, help_text="webhook-id: the same on every attempt.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    attempt_log = models.JSONField(
        default=list, blank=True, help_text="Each attempt: when, the answer's status, the error, an excerpt, ms."
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    holder = models.CharField(max_length=200, blank=True, help_text="The worker sending it now, or queued.")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    last_response = models.TextField(blank=True, help_text="The start of the last answer's body (capped).")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Delivery {self.message_id} ({self.event}, {self.status})"

    def _pending(self) -> models.QuerySet[WebhookDelivery]:
        return WebhookDelivery.objects.filter(pk=self.pk, status=self.Status.PENDING)

    def hand_to_queue(self, *, lease_seconds: float) -> bool:
        """Note that its task was (about to be) sent, so the sweep leaves it alone for `lease_seconds`; False when a
        worker holds it or it is over."""
        now = timezone.now()
        free = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
        return bool(
            self._pending().filter(free).update(holder=self.QUEUED, lease_expires_at=now + _seconds(lease_seconds))
        )

    def claim(self, *, holder: str, lease_seconds: float) -> bool:
        """pending and due -> held by `holder` for one more attempt, counted now (a worker killed mid-attempt used
        it up, so a receiver that stalls every worker cannot be tried forever); False (nothing changed) when another
        worker holds it, it is not due yet, or it is over."""
        now = timezone.now()
        free = Q(holder=self.QUEUED) | Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
        claimed = (
            self._pending()
            .filter(free)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .update(holder=holder, lease_expires_at=now + _seconds(lease_seconds), attempts=F("attempts") + 1)
        )
        self.refresh_from_db()
        return claimed == 1

    def record_attempt(
        self,
        *,
        holder: str,
        status_code: int | None,
        error: str,
        response: str,
        milliseconds: int,
        retry_in: float | None,
    ) -> bool:
        """The attempt `holder` made: delivered without an error, else pending again in `retry_in` seconds, or failed
        when `retry_in` is None. False (nothing written) when `holder` no longer held it."""
        now = timezone.now()
        entry = {
            "attempt": self.attempts,
            "at": now.isoformat(),
            "status_code": status_code,
            "error": error,
            "response": response,
            "milliseconds": milliseconds,
        }
        fields: dict[str, Any] = {
            "attempt_log": [*self.attempt_log, entry],
            "last_status_code": status_code,
            "last_error": error[:300],
            "last_response": response,
            "holder": "",
            "lease_expires_at": None,
        }
        if not error:
            fields.update(status=self.Status.DELIVERED, delivered_at=now, next_attempt_at=None)
        elif retry_in is None:
            fields.update(status=self.Status.FAILED, next_attempt_at=None)
        else:
            fields.update(next_attempt_at=now + _seconds(retry_in))
        written = self._pending().filter(holder=holder).update(**fields)
        self.refresh_from_db()
        return written == 1

    def give_up(self, *, reason: str) -> None:
        """pending -> failed without an attempt (its endpoint was deactivated or deleted)."""
        self._pending().update(status=self.Status.FAILED, last_error=reason[:300], holder="", lease_expires_at=None)
        self.refresh_from_db()


def _seconds(value: float) -> Any:
    from datetime import timedelta  # here, not at the top: this section is appended to a module others edit too

    return timedelta(seconds=value)


# --- The AI judge --------------------------------------------------------------------------------------------------

JUDGE_PROMPT_TEMPLATE = """You compare two answers to the same conversation. Say which answer is better.

Conversation:
{prompt}

Answer 1:
{first}

Answer 2:
{second}

Reply with JSON only: {{"choice": "1" or "2" or "tie", "confidence": a number from 0 to 1}}"""


class Judge(models.Model):
    """An OpenAI-compatible endpoint and model that votes on a campaign's pairs beside the people (off by default).

    Its verdicts are measured against people (annotate.judging.trust); routing (it settles pairs alone) runs only
    while staff allow it and the measurement earns it. `routing_stop` is the one way routing ends by itself."""

    campaign = models.OneToOneField(Campaign, on_delete=models.CASCADE, related_name="judge")
    url = models.CharField(max_length=500, help_text="The API's base URL, e.g. https://host/v1 (chat/completions).")
    api_key = models.CharField(max_length=300, blank=True, help_text="Sent as a bearer token; shown back masked.")
    model = models.CharField(max_length=200, help_text="The model name the endpoint serves.")
    prompt_template = models.TextField(
        default=JUDGE_PROMPT_TEMPLATE, help_text="With {prompt}, {first} and {second}; asked twice, sides swapped."
    )
    prompt_version = models.CharField(max_length=50, default="v1", help_text="Change it when the template changes.")
    enabled = models.BooleanField(default=False, help_text="Off: it judges nothing.")
    allow_private = models.BooleanField(default=False, help_text="Staff allowed a private or loopback address.")
    show_to_annotators = models.BooleanField(
        default=False, help_text="Annotators see its choice (the page says so); off: never shown."
    )
    routing_allowed = models.BooleanField(
        default=False, help_text="Staff let it settle pairs alone while its measured trust stays above the bars."
    )
    routing_active = models.BooleanField(default=False, help_text="Its trust earned routing at the last review.")
    min_confidence = models.FloatField(default=0.8, help_text="It settles only pairs it is at least this sure of.")
    min_gold_accuracy = models.FloatField(default=0.8, help_text="Routing needs at least this accuracy on gold.")
    min_kappa = models.FloatField(default=0.6, help_text="Routing needs at least this Cohen's kappa with people.")
    min_evidence = models.PositiveIntegerField(
        default=20, help_text="Gold pairs and people-voted pairs it must have judged before its trust counts."
    )
    check_share = models.FloatField(
        default=0.1, help_text="Share of the pairs it could settle that still go to people, as a check."
    )
    routing_stopped_at = models.DateTimeField(null=True, blank=True)
    routing_stopped_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(check_share__gte=0, check_share__lte=1), name="judge_check_share"),
            models.CheckConstraint(condition=Q(min_confidence__gte=0, min_confidence__lte=1), name="judge_confidence"),
        ]

    def __str__(self) -> str:
        return f"Judge {self.model} of {self.campaign}"

    @property
    def api_key_masked(self) -> str:
        return f"…{self.api_key[-4:]}" if len(self.api_key) > 8 else ("set" if self.api_key else "")

    def routing_start(self) -> bool:
        """Trust earned: routing on (it was allowed). False when it was on already or is no longer allowed."""
        return bool(
            type(self)
            .objects.filter(pk=self.pk, routing_allowed=True, routing_active=False)
            .update(routing_active=True)
        )

    def routing_stop(self, *, reason: str) -> bool:
        """The check showed it slipping: routing off and no longer allowed (staff allow it again), the reason kept,
        and a webhook event sent. False when it was not routing."""
        with transaction.atomic():
            stopped = (
                type(self)
                .objects.filter(pk=self.pk, routing_active=True)
                .update(
                    routing_active=False,
                    routing_allowed=False,
                    routing_stopped_at=timezone.now(),
                    routing_stopped_reason=reason[:1000],
                )
            )
            if stopped:
                webhook_events_emit(
                    event=events.JUDGE_ROUTING_STOPPED,
                    payload={"campaign": self.campaign_id, "judge": self.pk, "reason": reason[:1000]},
                )
        self.refresh_from_db()
        return bool(stopped)


class JudgeVerdict(models.Model):
    """What a judge said about one pair under one prompt version, asked twice with the sides swapped, with its
    lineage (endpoint, model, prompt version, both raw replies). While `asking` it is held by `holder` until
    `lease_expires_at`; a worker killed mid-question leaves it to be taken over once the lease runs out."""

    class Status(models.TextChoices):
        ASKING = "asking", "Asking"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    class Choice(models.TextChoices):
        A = "a", "A is better"
        B = "b", "B is better"
        TIE = "tie", "Tie"
        UNSURE = "unsure", "Unsure (it flipped with the order)"

    judge = models.ForeignKey(Judge, on_delete=models.CASCADE, related_name="verdicts")
    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="judge_verdicts")
    prompt_version = models.CharField(max_length=50)
    endpoint = models.CharField(max_length=500)
    model = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ASKING)
    holder = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    first_reply = models.TextField(blank=True, help_text="Raw reply with A shown first (capped).")
    second_reply = models.TextField(blank=True, help_text="Raw reply with B shown first (capped).")
    first_choice = models.CharField(max_length=10, blank=True)
    second_choice = models.CharField(max_length=10, blank=True)
    choice = models.CharField(max_length=10, choices=Choice.choices, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    consistent = models.BooleanField(null=True)
    error = models.CharField(max_length=300, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1, help_text="Times asked (a failure is asked again later).")
    settled = models.BooleanField(default=False, help_text="It settled the pair alone (a judge vote recorded).")
    is_check = models.BooleanField(default=False, help_text="It could have settled it; sent to people as a check.")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["judge", "pair", "prompt_version"], name="judge_verdict_once"),
        ]

    def __str__(self) -> str:
        return f"Verdict of {self.judge_id} on {self.pair_id}: {self.choice or self.status}"


class JudgeHint(models.Model):
    """A person's vote cast with the judge's verdict on screen (a campaign that shows it to annotators), so the
    quality page can compare votes made with and without it."""

    judgement = models.OneToOneField(Judgement, on_delete=models.CASCADE, related_name="judge_hint")
    verdict = models.ForeignKey(JudgeVerdict, on_delete=models.CASCADE, related_name="hints")

    def __str__(self) -> str:
        return f"{self.judgement} saw {self.verdict}"


class HumanAnswer(models.Model):
    """An answer an annotator wrote with their vote (annotate.annotation.edits): the answer they chose, edited, or
    one written afresh when both were bad. It trains as the chosen answer against the pair's sampled answers
    (PreferenceRules.edits) unless staff rejected it. Deleted with its vote when the vote is undone."""

    class Status(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        REJECTED = "rejected", "Rejected by staff"

    judgement = models.OneToOneField(Judgement, on_delete=models.CASCADE, related_name="human_answer")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="human_answers")
    started_from = models.ForeignKey(
        Completion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The sampled answer it was edited from; empty: written afresh.",
    )
    text = models.TextField()
    # The diff's size against the answer it started from (empty: everything is added), in characters of the words
    # difflib found added or removed.
    chars_added = models.PositiveIntegerField(default=0)
    chars_removed = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACCEPTED)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Written answer {self.pk} with vote {self.judgement_id}"

    @property
    def changed_share(self) -> float:
        """Share of the characters of both texts that the diff touched: 0 unchanged, 1 nothing kept."""
        source = len(self.started_from.text) if self.started_from_id is not None and self.started_from else 0
        total = source + len(self.text)
        return (self.chars_added + self.chars_removed) / total if total else 0.0

    def reject(self, *, by: Any, reason: str) -> None:
        """accepted -> rejected: no round that reads it from now on trains on it (exports leave it out too)."""
        self._review(self.Status.ACCEPTED, self.Status.REJECTED, by=by, reason=reason)

    def accept(self, *, by: Any, reason: str = "") -> None:
        """rejected -> accepted: staff took the rejection back."""
        self._review(self.Status.REJECTED, self.Status.ACCEPTED, by=by, reason=reason)

    def _review(self, current: str, new: str, *, by: Any, reason: str) -> None:
        moved = HumanAnswer.objects.filter(pk=self.pk, status=current).update(
            status=new, reviewed_by=by, reviewed_at=timezone.now(), review_reason=reason
        )
        if moved != 1:
            raise Conflict(f"this written answer is not {current} (someone reviewed it meanwhile)")
        self.refresh_from_db()


class Continuation(models.Model):
    """An annotator's next user turn after a vote (annotate.turns): the conversation so far, the answer they chose as
    the assistant's turn, and their new message make a new prompt, whose pair is sampled live and leased to them first.

    Its pair is made by one holder at a time: the page's stream (a web process) or a sampling worker claims it with an
    expiry and is the only one that may finish, release or fail it; a claim whose holder died runs out and the next
    sweep or page takes it over, so a conversation never stays stuck half-made."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to be sampled"
        SAMPLING = "sampling", "Being sampled"
        READY = "ready", "Pair ready"
        FAILED = "failed", "Could not be sampled"

    judgement = models.OneToOneField(Judgement, on_delete=models.PROTECT, related_name="continuation")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="continuations")
    prompt = models.ForeignKey(
        Prompt, on_delete=models.PROTECT, related_name="continuations", help_text="The longer conversation."
    )
    pair = models.OneToOneField(
        Pair, null=True, blank=True, on_delete=models.PROTECT, related_name="continuation", help_text="Its new pair."
    )
    idempotency_key = models.UUIDField(unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    holder = models.CharField(max_length=200, blank=True, help_text="Who is sampling it (host:pid:token).")
    claim_expires_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Samplings that failed so far.")
    error = models.TextField(blank=True, help_text="Why the last sampling failed.")
    annotator_waits = models.BooleanField(default=True, help_text="The annotator's page waits for its pair.")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["status", "claim_expires_at"], name="continuation_open_idx")]

    def __str__(self) -> str:
        return f"Continuation {self.pk} of {self.judgement_id}"

    def _claimable(self) -> models.QuerySet[Continuation]:
        now = timezone.now()
        pending = Q(status=self.Status.PENDING)
        abandoned = Q(status=self.Status.SAMPLING, claim_expires_at__lt=now)
        return Continuation.objects.filter(pk=self.pk).filter(pending | abandoned)

    def claim(self, *, holder: str, seconds: float) -> bool:
        """pending (or sampling under a claim that ran out) -> sampling, held by `holder` for `seconds`; False when
        someone else holds it or it ended."""
        taken = self._claimable().update(
            status=self.Status.SAMPLING, holder=holder, claim_expires_at=timezone.now() + _seconds(seconds)
        )
        self.refresh_from_db()
        return taken == 1

    def _mine(self, holder: str) -> models.QuerySet[Continuation]:
        return Continuation.objects.filter(pk=self.pk, status=self.Status.SAMPLING, holder=holder)

    def finish(self, *, holder: str, pair: Pair) -> bool:
        """sampling -> ready with its pair, by its holder only."""
        done = self._mine(holder).update(
            status=self.Status.READY, pair=pair, holder="", claim_expires_at=None, finished_at=timezone.now()
        )
        self.refresh_from_db()
        return done == 1

    def release(self, *, holder: str, error: str, max_attempts: int) -> bool:
        """sampling -> pending again after a failed try (the model server went away), so it is made later; failed
        after `max_attempts` tries. By its holder only."""
        attempts = self.attempts + 1
        status = self.Status.FAILED if attempts >= max_attempts else self.Status.PENDING
        released = self._mine(holder).update(
            status=status, holder="", claim_expires_at=None, attempts=F("attempts") + 1, error=error[:2000]
        )
        self.refresh_from_db()
        return released == 1

    def retry(self) -> bool:
        """failed -> pending, its tries counted afresh: the annotator asks again once the model server is back."""
        again = Continuation.objects.filter(pk=self.pk, status=self.Status.FAILED).update(
            status=self.Status.PENDING, attempts=0, finished_at=None, annotator_waits=True
        )
        self.refresh_from_db()
        return again == 1

    def fail(self, *, holder: str, error: str) -> bool:
        """sampling -> failed for a reason no retry mends (the model server refused the conversation)."""
        failed = self._mine(holder).update(
            status=self.Status.FAILED, holder="", claim_expires_at=None, error=error[:2000], finished_at=timezone.now()
        )
        self.refresh_from_db()
        return failed == 1
