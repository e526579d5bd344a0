"""The lineage of every vote: prompt -> completions (model version, sampling) -> pair -> assignment -> judgement."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Protocol

from django.conf import settings
from django.db import models, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone


def conversation_hash(messages: list[dict[str, Any]]) -> str:
    """A stable digest of a conversation, so the same prompt is stored once."""
    canonical = json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


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


class Conflict(Exception):
    """A request the current state does not allow (a transition a state machine refuses, a lease that is not
    yours, ...). The message says why and is shown to the user; nothing was changed."""

    code = "conflict"


class ModelServer(Protocol):
    """What model-version transitions need from the model server (annotate.generation.ModelServerClient)."""

    def served_models(self) -> list[str]: ...
    def load_lora_adapter(self, *, name: str, path: str) -> None: ...
    def unload_lora_adapter(self, *, name: str) -> None: ...


class ModelVersionQuerySet(models.QuerySet["ModelVersion"]):
    def serving(self) -> ModelVersion | None:
        return self.filter(status=ModelVersion.Status.SERVING).first()

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
        return self.status in (self.Status.CANDIDATE, self.Status.SERVING, self.Status.RETIRED)

    def ensure_loaded(self, server: ModelServer) -> None:
        """Make sure the model server has this version: vLLM forgets run-time adapters when it restarts.

        Raises ModelServerUnavailable when the server cannot be reached, ModelServerRefused when it refuses.
        """
        if self.is_adapter and self.name not in server.served_models():
            server.load_lora_adapter(name=self.name, path=self.adapter_path)

    def unload(self, server: ModelServer) -> None:
        """Free the server's adapter slot (a no-op for a base model, or an adapter the server does not hold)."""
        if self.is_adapter and self.status != self.Status.SERVING:
            server.unload_lora_adapter(name=self.name)

    def serve(self, server: ModelServer) -> None:
        """Make this version the one new pairs are sampled from: a promotion or a rollback.

        Loads it first: when the server cannot load it, this raises and nothing changes. Conflict when its status
        does not allow serving (rejected, external).
        """
        if not self.can_serve:
            raise Conflict(f"{self.name} is {self.get_status_display().lower()}; it cannot serve")
        self.ensure_loaded(server)
        now = timezone.now()
        with transaction.atomic():
            type(self).objects.filter(status=self.Status.SERVING).exclude(pk=self.pk).update(status=self.Status.RETIRED)
            type(self).objects.filter(pk=self.pk).update(status=self.Status.SERVING, serving_since=now)
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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Completion {self.pk} ({self.model_version})"


class PairQuerySet(models.QuerySet["Pair"]):
    def needing_judgements(self) -> PairQuerySet:
        return self.filter(judgement_count__lt=F("judgements_required"))

    def available_for(self, user: Any, now: Any = None) -> PairQuerySet:
        """Pairs this user may be given: still needing votes, never assigned to them, not leased to anyone else."""
        now = now or timezone.now()
        seen_by_user = Assignment.objects.filter(pair=OuterRef("pk"), annotator=user)
        leased_to_other = Assignment.objects.filter(
            pair=OuterRef("pk"), status=Assignment.Status.LEASED, expires_at__gt=now
        )
        return self.needing_judgements().filter(~Exists(seen_by_user), ~Exists(leased_to_other))


class Pair(models.Model):
    """Two answers to one prompt, to be compared. "A" and "B" are the pair's own labels, not screen sides."""

    prompt = models.ForeignKey(Prompt, on_delete=models.PROTECT, related_name="pairs")
    completion_a = models.ForeignKey(Completion, on_delete=models.PROTECT, related_name="+")
    completion_b = models.ForeignKey(Completion, on_delete=models.PROTECT, related_name="+")
    # The version that was serving when the pair was sampled: both answers coming from it makes the pair on-policy.
    sampled_from = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="pairs")
    judgements_required = models.PositiveSmallIntegerField(default=1)
    # Kept in step with the judgements inside the same transaction, so the annotation queue can filter on it
    # with an index instead of counting judgements on every request.
    judgement_count = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PairQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["judgement_count", "judgements_required"], name="pair_open_idx")]
        constraints = [
            models.CheckConstraint(condition=~Q(completion_a=F("completion_b")), name="pair_two_distinct_completions")
        ]

    def __str__(self) -> str:
        return f"Pair {self.pk}"

    @property
    def is_complete(self) -> bool:
        return self.judgement_count >= self.judgements_required


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
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.LEASED)
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # An annotator never sees the same pair twice.
            models.UniqueConstraint(fields=["pair", "annotator"], name="assignment_once_per_annotator"),
            # A pair is leased to one annotator at a time.
            models.UniqueConstraint(fields=["pair"], condition=Q(status="leased"), name="assignment_one_lease"),
        ]
        indexes = [models.Index(fields=["annotator", "status"], name="assignment_annotator_idx")]

    def __str__(self) -> str:
        return f"Assignment {self.pk} of {self.pair} to {self.annotator}"

    @property
    def left(self) -> Completion:
        return self.pair.completion_a if self.a_on_left else self.pair.completion_b

    @property
    def right(self) -> Completion:
        return self.pair.completion_b if self.a_on_left else self.pair.completion_a


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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["pair", "annotator"], name="judgement_once_per_annotator"),
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


class Export(models.Model):
    """A preference dataset written to a file, with its dataset card beside it."""

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
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Export {self.pk} ({self.dataset_format}, {self.file_format})"


class TrainingRound(models.Model):
    """One DPO round: the frozen votes it used, its config, what happened, and the model version it produced."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PREPARING = "preparing", "Preparing data"
        TRAINING = "training", "Training"
        EVALUATING = "evaluating", "Evaluating"
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

    ACTIVE_STATUSES = (Status.QUEUED, Status.PREPARING, Status.TRAINING, Status.EVALUATING, Status.DEPLOYING)

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
    rules = models.JSONField(help_text="How votes became pairs (annotate.preferences.PreferenceRules).")
    judgement_ids = models.JSONField(default=list, blank=True, help_text="Every vote the round read, frozen.")
    train_pairs = models.PositiveIntegerField(null=True, blank=True)
    heldout_pairs = models.PositiveIntegerField(null=True, blank=True)
    directory = models.CharField(max_length=500, blank=True, help_text="Data, adapter, metrics and logs.")
    metrics = models.JSONField(default=list, blank=True, help_text="One entry per training step, as it runs.")
    evaluation = models.JSONField(default=dict, blank=True)
    phase_seconds = models.JSONField(default=dict, blank=True, help_text="Wall time of each phase, in seconds.")
    override_reason = models.TextField(blank=True, help_text="Why an admin promoted a round the gate rejected.")
    error = models.TextField(blank=True)
    log_tail = models.TextField(blank=True)
    process_id = models.IntegerField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Round {self.pk} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def last_metrics(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}

    @property
    def progress_percent(self) -> int:
        last = self.last_metrics
        if self.status in (self.Status.SERVING, self.Status.TRAINED, self.Status.REJECTED):
            return 100
        if not last.get("max_steps"):
            return 0
        return min(100, int(100 * last.get("step", 0) / last["max_steps"]))
