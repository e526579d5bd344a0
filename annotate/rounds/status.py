"""The words a page uses for a round's state: one function, so the round page's badge, its gate and canary lines, the
rounds list and the dashboard never disagree; and one for what a running round is doing now and how long that should
take (round_phase), so no wait is blind.

A round's status says where it is; who decided its outcome is read from what it recorded: the canary's decision, an
override, the offline gate's verdict, the gate mode. A round the canary rejected is "rejected by the canary", never by
the eval gate; the offline gate's line turns neutral ("for information") whenever a later stage or staff decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from annotate.models import ModelVersion, RoundStep, TrainingRound

Status = TrainingRound.Status
GateMode = TrainingRound.GateMode

# Tones are CSS classes (status-<tone>): good (green), bad (red), running (blue), neutral (grey).
GOOD, BAD, RUNNING, NEUTRAL = "good", "bad", "running", "neutral"


@dataclass(frozen=True)
class GateLine:
    text: str
    tone: str


@dataclass(frozen=True)
class RoundState:
    """What a round's pages say of it: a headline (the badge), its tone, and who decided, in a sentence."""

    headline: str
    tone: str
    decided_by: str  # "" while nothing is decided
    gate: GateLine | None  # the offline gate's line, None before the evaluation
    reason: str = ""  # why it was decided so, in the decider's words


def _canary_decider(decision: dict[str, object]) -> str:
    by = str(decision.get("by") or "the rule")
    return "the canary's rule" if by == "the rule" else f"{by}, during the canary"


def _gate_line(training_round: TrainingRound, *, deciding: bool) -> GateLine | None:
    gate = training_round.evaluation.get("gate") if training_round.evaluation else None
    if not gate:
        return None
    passed = bool(gate.get("promote"))
    reason = str(gate.get("reason", ""))
    verdict = "passed" if passed else "did not pass"
    if deciding:
        return GateLine(f"Offline gate {verdict}: {reason}", GOOD if passed else BAD)
    if training_round.gate_mode == GateMode.HUMAN:
        return GateLine(f"Offline check, for information (the canary decides in human mode): {reason}", NEUTRAL)
    return GateLine(f"The round {verdict} the offline gate: {reason}", NEUTRAL)


def round_state(training_round: TrainingRound) -> RoundState:
    """The one description of a round's state that every page shows."""
    status = training_round.status
    decision = training_round.canary_decision or {}
    canary_decided = decision.get("decision") in ("promote", "reject")
    overridden = bool(training_round.override_reason)
    # The offline gate decided when its mode lets it and no one overrode it: in offline mode always, in both mode
    # when it rejected (a pass hands over to the canary).
    gate = training_round.evaluation.get("gate") or {}
    gate_decides = not overridden and (
        training_round.gate_mode == GateMode.OFFLINE
        or (training_round.gate_mode == GateMode.BOTH and not gate.get("promote"))
    )
    gate_line = _gate_line(training_round, deciding=gate_decides and not canary_decided)

    gate_reason = str(gate.get("reason", ""))
    canary_reason = str(decision.get("reason", ""))
    if status == Status.REJECTED:
        if decision.get("decision") == "reject":
            # Staff may end a canary early: then they rejected it, not the votes.
            by_rule = (decision.get("by") or "the rule") == "the rule"
            headline = "Rejected by the canary" if by_rule else "Rejected by staff during the canary"
            return RoundState(headline, BAD, _canary_decider(decision), gate_line, canary_reason)
        return RoundState("Rejected by the offline gate", BAD, "the offline gate", gate_line, gate_reason)
    if status in (Status.SERVING, Status.DEPLOYING, Status.TRAINED):
        if overridden:
            decider, reason = "staff, over the offline gate", training_round.override_reason
        elif decision.get("decision") == "promote":
            decider, reason = _canary_decider(decision), canary_reason
        else:
            decider, reason = "the offline gate", gate_reason
        if status == Status.DEPLOYING:
            return RoundState("Promoted, deploying", RUNNING, decider, gate_line, reason)
        if status == Status.TRAINED:
            return RoundState("Promoted, not deployed yet", NEUTRAL, decider, gate_line, reason)
        version = training_round.result_version
        if version is not None and version.status != ModelVersion.Status.SERVING:
            return RoundState("Promoted, no longer serving", NEUTRAL, decider, gate_line, reason)
        return RoundState("Serving", GOOD, decider, gate_line, reason)
    if status == Status.FAILED:
        return RoundState("Failed", BAD, "", gate_line)
    if status == Status.CANCELLED:
        return RoundState("Cancelled", NEUTRAL, "staff", gate_line, training_round.error)
    if status == Status.CANARY:
        return RoundState("Canary: collecting votes", RUNNING, "", gate_line)
    return RoundState(training_round.get_status_display(), RUNNING, "", gate_line)


# --- What a running round is doing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundPhase:
    """What a running round does now: a sentence, the step count when the phase has one (else the page shows an
    indeterminate bar), the seconds spent in it so far and the seconds the same phase took in the previous round."""

    text: str
    step: int | None = None
    max_steps: int | None = None
    elapsed_seconds: float | None = None
    estimate_seconds: float | None = None
    estimate_kind: str = "previous"  # previous: the previous round's time; left: time left; limit: a time limit

    @property
    def timing(self) -> str:
        """How long it has been and how long it should take, in words ("" when neither is known)."""
        parts = []
        if self.elapsed_seconds is not None:
            parts.append(f"{duration_text(self.elapsed_seconds)} so far")
        if self.estimate_seconds is not None:
            estimate = duration_text(self.estimate_seconds)
            parts.append(
                {
                    "previous": f"took {estimate} in the previous round",
                    "left": f"about {estimate} left",
                    "limit": f"time limit {estimate}",
                }[self.estimate_kind]
            )
        elif self.step is None and self.estimate_kind == "previous":
            parts.append("no earlier round to estimate from")
        return "; ".join(parts)

    @property
    def percent(self) -> int | None:
        if self.step is None or not self.max_steps:
            return None
        return min(100, int(100 * self.step / self.max_steps))


def duration_text(seconds: float) -> str:
    """12 s, 3 min 20 s, 1 h 5 min: rounded to what a person waiting reads."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return max(0.0, (now - moment).total_seconds()) if moment else None


def _before_first_step(training_round: TrainingRound) -> float | None:
    """How long a round waited from its training process's start to its first logged step: loading the model and
    TRL's reference log-probs pass (the metrics' clock starts after both)."""
    first = RoundStep.objects.filter(training_round=training_round).order_by("step", "id").first()
    if first is None or training_round.started_at is None:
        return None
    values = first.values
    if values.get("time") is None or values.get("elapsed_seconds") is None:
        return None
    began_training = float(values["time"]) - float(values["elapsed_seconds"])
    return max(0.0, began_training - training_round.started_at.timestamp())


def _previous(training_round: TrainingRound) -> TrainingRound | None:
    """The latest earlier round that measured its phases: the estimate for this one's."""
    earlier = TrainingRound.objects.filter(pk__lt=training_round.pk).exclude(phase_seconds={})
    return earlier.order_by("-pk").first()


def _phase_estimate(previous: TrainingRound | None, *names: str) -> float | None:
    if previous is None or not all(name in previous.phase_seconds for name in names):
        return None
    return float(sum(float(previous.phase_seconds[name]) for name in names))


def round_phase(
    training_round: TrainingRound, *, last: dict[str, Any] | None = None, now: datetime | None = None
) -> RoundPhase | None:
    """What the round is doing now, for a round that runs; None once it ended. `last` is its last logged step."""
    if not training_round.is_active:
        return None
    now = now or timezone.now()
    last = training_round.last_metrics if last is None else last
    status = training_round.status
    previous = _previous(training_round)
    if status == Status.QUEUED:
        return RoundPhase(
            "Queued: waiting for a training worker to take the round.",
            elapsed_seconds=_seconds_since(training_round.created_at, now),
        )
    if status == Status.PREPARING:
        return RoundPhase(
            "Preparing: reading the votes and writing the training and held-out files.",
            elapsed_seconds=_seconds_since(training_round.created_at, now),
            estimate_seconds=_phase_estimate(previous, "prepare"),
        )
    if status == Status.TRAINING:
        step, max_steps = last.get("step"), last.get("max_steps")
        if not step:
            return RoundPhase(
                "Starting: loading the model and computing the reference log-probs, before the first training step.",
                elapsed_seconds=_seconds_since(training_round.started_at, now),
                estimate_seconds=_before_first_step(previous) if previous else None,
            )
        if max_steps and step >= max_steps:
            # The training process goes on to score the candidate and its parent on the held-out pairs.
            finished = last.get("time")
            since = now.timestamp() - float(finished) if finished is not None else None
            pairs = training_round.heldout_pairs
            return RoundPhase(
                f"Evaluating: scoring the candidate and its parent on {pairs} held-out pairs (training is done)."
                if pairs
                else "Saving the adapter (training is done).",
                elapsed_seconds=max(0.0, since) if since is not None else None,
                estimate_seconds=_phase_estimate(previous, "evaluate"),
            )
        eta = last.get("eta_seconds")
        return RoundPhase(
            f"Training: step {step} of {max_steps}.",
            step=int(step),
            max_steps=int(max_steps) if max_steps else None,
            estimate_seconds=float(eta) if eta is not None else None,
            estimate_kind="left",
        )
    if status == Status.EVALUATING:
        return RoundPhase("Checking the held-out results against the gate and publishing the adapter.")
    if status == Status.DEPLOYING:
        return RoundPhase(
            "Deploying: loading the adapter into the model server.",
            estimate_seconds=_phase_estimate(previous, "deploy"),
        )
    # A canary: its tally and time limit are on the page beside this line.
    return RoundPhase(
        "Canary: annotators vote on head-to-head pairs; a sequential test decides once it has "
        f"{settings.CANARY_MIN_VOTES} votes (at most {settings.CANARY_MAX_VOTES}).",
        elapsed_seconds=_seconds_since(training_round.canary_started_at, now),
        estimate_seconds=settings.CANARY_MAX_MINUTES * 60,
        estimate_kind="limit",
    )
