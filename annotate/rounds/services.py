"""Training rounds: freeze the votes, train a DPO adapter in a subprocess, evaluate it, deploy it into vLLM.

This module keeps a round's lifecycle: starting (by staff or when due), cancelling, promoting, and the run in the
training worker. The training process itself is run by annotate/rounds/runner.py (the edge to training/), deploying
and its retry rule are annotate/rounds/deploy.py's, and the round's fields are written only by TrainingRound's
methods.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Max, Q, QuerySet
from django.utils import timezone

from annotate.broker import enqueue
from annotate.errors import Conflict, Invalid
from annotate.models import HumanAnswer, Judgement, ModelVersion, Prompt, TrainingRound
from annotate.quality.judge_rule import JudgeRule
from annotate.quality.preferences import (
    Combine,
    Edits,
    PairWeights,
    PreferenceRules,
    Weighting,
    WrittenVote,
    edit_preference_rows,
    human_answers_for_preferences,
    judgements_for_preferences,
    trl_preference_row,
    verdicts,
    weights_described,
)
from annotate.rounds.adapters import adapter_publish
from annotate.rounds.canary import canary_begin
from annotate.rounds.deploy import round_deploy, round_deploy_later
from annotate.rounds.runner import RoundLost, RoundStopped, process_phases, training_process_run
from annotate.sampling.generation import (
    ModelServerPool,
    ModelServerRefused,
    ModelServerUnavailable,
    SamplingParams,
    client_from_settings,
)
from annotate.turns.services import is_multi_turn
from training.config import TUNABLE_FIELDS, FieldSpec, RoundConfig
from training.data import weights_to_mean_one
from training.gate import gate_decision
from training.jsonl import JsonLinesWriter, write_jsonl

logger = logging.getLogger(__name__)

Status = TrainingRound.Status
TRAIN_FILE, HELDOUT_FILE, OUTPUT_DIR = "train.jsonl", "heldout.jsonl", "output"
# The base model's log-probs of held-out pairs never change: computed once, kept for every later round.
REFERENCE_CACHE = "reference-logprobs.json"
CONFIG_FIELDS_SET_BY_ROUND = ("base_model_dir", "output_dir", "parent_adapter_dir")


# --- Reading the rules and defaults ----------------------------------------------------------------------------


def round_rules() -> PreferenceRules:
    # Ties and both-bad votes have no chosen and rejected answer, so they never become DPO pairs; they still count
    # as votes when several votes on one pair are combined.
    return PreferenceRules(
        combine=cast(Combine, settings.ROUND_COMBINE),
        min_agreement=settings.ROUND_MIN_AGREEMENT,
        min_competence=settings.ROUND_MIN_COMPETENCE,
        exclude_head_to_head=settings.ROUND_EXCLUDE_HEAD_TO_HEAD,
        judge=cast(JudgeRule, settings.ROUND_JUDGE),
        judge_weight=settings.ROUND_JUDGE_WEIGHT,
        edits=cast(Edits, settings.ROUND_EDITS),
    )


def round_config_defaults() -> dict[str, Any]:
    return dict(settings.ROUND_CONFIG_DEFAULTS)


def round_config_fields() -> list[FieldSpec]:
    """The tunable fields with the bounds this deployment accepts: the model server's LoRA limit caps the rank.

    The Start round form, the rounds API and round_start all read this, so the three never disagree."""
    fields = []
    for spec in TUNABLE_FIELDS:
        if spec.name == "lora_rank":
            spec = replace(spec, maximum=min(spec.maximum or settings.VLLM_MAX_LORA_RANK, settings.VLLM_MAX_LORA_RANK))
        fields.append(spec)
    return fields


def round_config_errors(overrides: dict[str, Any]) -> dict[str, str]:
    """What is wrong with a round's config overrides, by field; empty when they can run."""
    specs = {spec.name: spec for spec in round_config_fields()}
    errors = {}
    for name, value in overrides.items():
        spec = specs.get(name)
        if spec is None:
            chosen_by_round = name in CONFIG_FIELDS_SET_BY_ROUND
            errors[name] = "is chosen by the round itself" if chosen_by_round else f"unknown; use {', '.join(specs)}"
            continue
        expected = (int, float) if spec.kind is float else (spec.kind,)
        if isinstance(value, bool) or not isinstance(value, expected):
            errors[name] = f"must be {spec.kind.__name__}, got {value!r}"
            continue
        problem = spec.problem(value)
        if problem:
            limit = " (the model server's --max-lora-rank, VLLM_MAX_LORA_RANK)" if name == "lora_rank" else ""
            errors[name] = problem + limit
    return errors


def usable_votes_since(when: Any) -> int:
    votes = Judgement.objects.filter(choice__in=(Judgement.Choice.A, Judgement.Choice.B))
    return votes.filter(created_at__gt=when).count() if when else votes.count()


# --- Starting, cancelling, promoting ---------------------------------------------------------------------------


def rounds_abandoned_end() -> int:
    """End the running rounds that no worker holds any more, saying why; returns how many.

    A worker heartbeats its round in every phase (TrainingRound.heartbeating), so a round silent for
    ROUND_STALE_SECONDS lost its worker (killed, its host gone, frozen): it fails, or, when it was deploying, ends
    trained for staff to promote again. A queued round no worker took in that time lost its task. A canary has no
    worker (it waits for votes) and is never ended here. Beat looks every 30 s, and every round_start looks first,
    so a dead worker's round ends within ROUND_STALE_SECONDS + 30 s and never blocks the next round longer."""
    silent_since = timezone.now() - timedelta(seconds=settings.ROUND_STALE_SECONDS)
    silent = (
        TrainingRound.objects.filter(active=True)
        .exclude(status=Status.CANARY)
        .filter(Q(heartbeat_at__lt=silent_since) | Q(heartbeat_at__isnull=True, created_at__lt=silent_since))
    )
    ended = 0
    for training_round in silent:
        reason = _abandoned_reason(training_round)
        if training_round.end_abandoned(reason=reason):
            logger.warning("round %s ended: %s", training_round.pk, reason)
            ended += 1
    return ended


def _abandoned_reason(training_round: TrainingRound) -> str:
    limit = f"ROUND_STALE_SECONDS={settings.ROUND_STALE_SECONDS}"
    if training_round.status == Status.QUEUED:
        return f"no training worker took the round within {limit} s (its task was lost); start a round again"
    last = training_round.heartbeat_at or training_round.created_at
    again = "promote it again to deploy it" if training_round.status == Status.DEPLOYING else "start a round again"
    return (
        f"its training worker stopped reporting while it was {training_round.get_status_display().lower()}: no sign "
        f"of life since {last:%Y-%m-%d %H:%M:%S} UTC, over {limit} s (killed, its host lost, or frozen); {again}"
    )


def holdout_fraction_for(parent: ModelVersion) -> float:
    """The setting, but never above the fraction of an earlier round in the parent's lineage (see the model)."""
    fractions = [settings.ROUND_HOLDOUT_FRACTION]
    version: ModelVersion | None = parent
    while version is not None:
        earlier = TrainingRound.objects.filter(result_version=version).values_list("holdout_fraction", flat=True)
        fractions.extend(earlier)
        version = version.parent
    return min(fractions)


def round_gate_mode_error(gate_mode: str) -> str | None:
    modes = TrainingRound.GateMode.values
    return None if gate_mode in modes else f"must be one of {', '.join(modes)}, got {gate_mode!r}"


def round_start(
    *,
    trigger: str,
    started_by: User | None = None,
    overrides: dict[str, Any] | None = None,
    gate_mode: str | None = None,
) -> TrainingRound:
    """Queue a round on the serving version with the default config and `overrides`, judged by `gate_mode`
    (offline, human or both; ROUND_GATE_MODE when None).

    Invalid when an override or the gate mode is wrong; Conflict when a round runs, nothing serves, or there are
    too few votes."""
    overrides = overrides or {}
    gate_mode = gate_mode or settings.ROUND_GATE_MODE
    errors = round_config_errors(overrides)
    mode_error = round_gate_mode_error(gate_mode)
    if mode_error:
        errors["gate_mode"] = mode_error
    if errors:
        raise Invalid(errors)
    config = {**round_config_defaults(), **overrides}
    try:  # rules between fields (label smoothing needs the sigmoid loss) are RoundConfig's
        RoundConfig.from_dict({**config, "base_model_dir": "-", "output_dir": "-"})
    except ValueError as error:
        raise Invalid({"config": str(error)}) from None
    rounds_abandoned_end()
    running = TrainingRound.objects.filter(active=True).first()
    if running is not None:
        raise Conflict(f"round {running.pk} is still {running.get_status_display().lower()}; wait for it or cancel it")
    parent = ModelVersion.objects.serving()
    if parent is None:
        raise Conflict("no model version is serving yet")
    usable = usable_votes_since(None)
    if usable < settings.ROUND_MIN_TRAIN_PAIRS:
        raise Conflict(f"only {usable} votes prefer one answer; a round needs {settings.ROUND_MIN_TRAIN_PAIRS}")
    try:
        with transaction.atomic():
            training_round = TrainingRound.objects.create(
                trigger=trigger,
                started_by=started_by,
                parent_version=parent,
                config=config,
                rules=round_rules().as_dict(),
                last_judgement_id=Judgement.objects.aggregate(last=Max("id"))["last"] or 0,
                holdout_fraction=holdout_fraction_for(parent),
                gate_mode=gate_mode,
            )
    except IntegrityError:
        raise Conflict("another round started at the same moment") from None

    transaction.on_commit(lambda: enqueue("annotate.tasks.round_run", training_round.pk))
    return training_round


def rounds_start_when_due() -> TrainingRound | None:
    """Beat's automatic round: started once ROUND_AUTO_MIN_NEW_VOTES usable votes have come in since the last round
    began (0 turns it off). None when it is not due or cannot start now (a round runs, nothing serves...)."""
    if settings.ROUND_AUTO_MIN_NEW_VOTES <= 0:
        return None
    last_start = TrainingRound.objects.aggregate(last=Max("created_at"))["last"]
    if usable_votes_since(last_start) < settings.ROUND_AUTO_MIN_NEW_VOTES:
        return None
    try:
        return round_start(trigger=TrainingRound.Trigger.AUTOMATIC)
    except (Conflict, Invalid) as error:
        logger.info("automatic round not started: %s", error)
        return None


def round_cancel(*, training_round: TrainingRound) -> None:
    if not training_round.is_active:
        raise Conflict(f"round {training_round.pk} is {training_round.get_status_display().lower()}, not running")
    if training_round.status == Status.CANARY:
        raise Conflict(f"round {training_round.pk} is a canary: promote or reject it early, with a reason")
    if training_round.status == Status.QUEUED:
        with suppress(Conflict):  # the worker took it meanwhile: ask it to stop below
            training_round.finish(Status.CANCELLED, error="cancelled before it started")
            return
    # Running: the worker stops the training process at its next look.
    training_round.request_cancel()


def round_promote(*, training_round: TrainingRound, by: User | None, reason: str) -> None:
    """Deploy a round the eval gate rejected, recording why; or retry a round that could not be deployed.

    The round becomes active (deploying) at once, so no other round starts before the deploy runs."""
    reason = reason.strip()
    if training_round.status not in (Status.REJECTED, Status.TRAINED):
        state = training_round.get_status_display().lower()
        raise Conflict(f"round {training_round.pk} is {state}; nothing to promote")
    if training_round.status == Status.REJECTED and not reason:
        raise Invalid({"reason": "promoting a round the gate rejected needs a reason"})
    version = training_round.result_version
    if version is None:
        raise Conflict(f"round {training_round.pk} produced no adapter")
    with transaction.atomic():
        training_round.deploy_begin()
        if reason:
            who = by.get_username() if by else "unknown"
            training_round.record(override_reason=f"{reason} (promoted by {who})")
            version.approve()
    if not round_deploy_later(training_round):
        raise Conflict("the task queue could not be reached; nothing was deployed, try again shortly")


# --- Running a round (in the training worker) -----------------------------------------------------------------


def is_heldout(prompt: Prompt, fraction: float) -> bool:
    # Decided by the prompt itself, so a prompt stays on the same side in every round: no round is ever evaluated
    # on a prompt that it or any earlier round trained on (the fraction never grows along a lineage).
    return int(prompt.content_hash[:8], 16) % 1000 < fraction * 1000


@contextmanager
def _phase(training_round: TrainingRound, name: str) -> Iterator[None]:
    """Record how long a phase took, also when it ends early; not when the round was ended elsewhere meanwhile (a
    Conflict inside a phase says so too): it is no longer this worker's to write."""
    started = time.monotonic()
    try:
        yield
    except (RoundLost, Conflict):
        raise
    except BaseException:
        training_round.record_phases({name: round(time.monotonic() - started, 1)})
        raise
    training_round.record_phases({name: round(time.monotonic() - started, 1)})


@dataclass
class _Written:
    """What writing a round's train and held-out files found on the way."""

    votes: _Counted
    heldout: int = 0
    train_weights: list[float] = field(default_factory=list)
    disagreement: _Disagreement = field(default_factory=lambda: _Disagreement())
    multi_turn: dict[bool, int] = field(default_factory=lambda: {False: 0, True: 0})  # by held out or not
    edits_used: int = 0
    judged_weight: float | None = None  # PairWeights.judged_weight: what a judge's vote weighs, when it is set


def rows_write(
    read: QuerySet[Judgement],
    rules: PreferenceRules,
    weighting: Weighting,
    holdout_fraction: float,
    train_path: Path,
    heldout_path: Path,
) -> tuple[_Written, Any]:
    """Write the train and held-out files (TRL's conversational format) of the votes `read` under `rules`; returns
    what was written and the rules' verdict on which votes count (for `rules.left_out`)."""
    # Which votes the rules leave out is decided once.
    left_out, competence = rules.left_out_and_competence(read, weighting)
    votes = judgements_for_preferences(rules.counted(read, left_out))
    written = _Written(votes=_Counted(votes.iterator(chunk_size=2000)))
    weights = PairWeights.for_rules(weighting, competence, rules)
    with JsonLinesWriter(train_path) as train_file, JsonLinesWriter(heldout_path) as heldout_file:
        for verdict in verdicts(written.votes, rules):
            written.disagreement.add(verdict.votes, verdict.agreement)
            if verdict.chosen is None or not rules.choices_train:
                continue
            held_out = is_heldout(verdict.pair.prompt, holdout_fraction)
            written.multi_turn[held_out] += is_multi_turn(verdict.pair.prompt.messages)
            if held_out:
                heldout_file.write(trl_preference_row(verdict))
                written.heldout += 1
            else:
                train_file.write(trl_preference_row(verdict))
                # A pair implied by a ranking weighs its share of the ranking (quality.preferences.ranking_verdicts).
                written.train_weights.append(weights.weight(verdict.outcome, verdict.judgements) * verdict.share)
        edits = human_answers_for_preferences(rules.counted(read, left_out)) if rules.edits_train else None
        written.edits_used = _edit_rows_write(holdout_fraction, edits, weights, train_file, written.train_weights)
    written.judged_weight = weights.judged_weight
    return written, left_out


def round_prepare(training_round: TrainingRound) -> tuple[Path, Path]:
    """Read the votes up to the round's cut-off and write its train and held-out files (TRL's conversational format)."""
    directory = Path(settings.ROUND_DIR) / f"round-{training_round.pk}"
    directory.mkdir(parents=True, exist_ok=True)
    rules = PreferenceRules.from_dict(training_round.rules)
    cutoff = training_round.last_judgement_id or 0
    read = Judgement.objects.filter(pk__lte=cutoff)
    weighting = cast(Weighting, training_round.config.get("weighting", "none"))
    train_path, heldout_path = directory / TRAIN_FILE, directory / HELDOUT_FILE
    written, left_out = rows_write(read, rules, weighting, training_round.holdout_fraction, train_path, heldout_path)
    train_weights = written.train_weights
    train = len(train_weights)
    if (weighting != "none" or any(weight != 1.0 for weight in train_weights)) and train:
        try:
            train_weights = _weights_write(train_path, weights_to_mean_one(train_weights))
        except ValueError as error:
            training_round.finish(Status.FAILED, error=f"weighting by {weighting}: {error}")
            raise RoundStopped from None
    if settings.ROUND_LABEL_SMOOTHING_AUTO and training_round.config.get("loss_type") == "sigmoid":
        training_round.record(
            config={**training_round.config, "label_smoothing": written.disagreement.label_smoothing()}
        )
    training_round.record(
        label_smoothing_basis=written.disagreement.describe(),
        weighting_basis=weights_described(weighting, train_weights, judge_weight=written.judged_weight)
        + _rankings_described(written.votes.rankings),
        directory=str(directory),
        votes_read=written.votes.count,
        train_pairs=train,
        heldout_pairs=written.heldout,
        multi_turn_train_pairs=written.multi_turn[False],
        multi_turn_heldout_pairs=written.multi_turn[True],
        votes_left_out=rules.left_out(read, left_out),
        edits_used=written.edits_used,
    )
    if train < settings.ROUND_MIN_TRAIN_PAIRS:
        training_round.finish(Status.FAILED, error=f"only {train} training pairs after the rules were applied")
        raise RoundStopped
    return train_path, heldout_path


def _edit_rows_write(
    holdout_fraction: float,
    edits: QuerySet[HumanAnswer] | None,
    weights: PairWeights,
    train_file: JsonLinesWriter,
    train_weights: list[float],
) -> int:
    """Write the rows of these written answers (None: the rules' `edits` is off) to the training file, each with its
    weight in `train_weights`; returns how many answers gave rows. Written answers on held-out prompts
    are left out of both files: those prompts never train, and the held-out accuracy the gate reads stays a measure
    on sampled answers, comparable from round to round."""
    if edits is None:
        return 0
    used = 0
    for answer in edits.iterator(chunk_size=500):
        if is_heldout(answer.judgement.pair.prompt, holdout_fraction):
            continue
        rows = edit_preference_rows(answer)
        for row in rows:
            train_file.write(row)
            train_weights.append(weights.weight("written", [WrittenVote(answer.author_id)]))
        used += bool(rows)
    return used


def _weights_write(path: Path, weights: list[float]) -> list[float]:
    """Add each row's weight to the training file (its rows in order), rounded as written; returns them."""
    rounded = [round(weight, 6) for weight in weights]
    with path.open(encoding="utf-8") as lines:
        rows = ({**json.loads(line), "weight": weight} for line, weight in zip(lines, rounded, strict=True))
        write_jsonl(path.with_suffix(".weighted"), rows)
    path.with_suffix(".weighted").replace(path)
    return rounded


class _Disagreement:
    """How often votes on the same pair disagree with its majority: robust DPO's share of flipped labels."""

    def __init__(self) -> None:
        self.votes = self.against_majority = self.pairs = 0

    def add(self, votes: int, agreement: float) -> None:
        if votes >= 2:  # one vote cannot disagree with anything
            self.pairs += 1
            self.votes += votes
            self.against_majority += round(votes * (1 - agreement))

    def label_smoothing(self) -> float:
        # Capped below TRL's limit of 0.5 (at 0.5 the votes say nothing and robust DPO is undefined).
        return round(min(0.4, self.against_majority / self.votes), 4) if self.votes else 0.0

    def describe(self) -> str:
        if not self.votes:
            return "no pair had two votes or more: no disagreement to measure"
        return (f"{self.against_majority} of {self.votes} votes on {self.pairs} pairs with several votes disagree "
                f"with their pair's majority")  # fmt: skip


class _Counted:
    """Counts the votes a round reads while they stream past, and the rankings among them."""

    def __init__(self, votes: Iterator[Judgement]) -> None:
        self._votes = votes
        self.count = 0
        self.rankings = 0

    def __iter__(self) -> Iterator[Judgement]:
        for vote in self._votes:
            self.count += 1
            self.rankings += vote.pair.is_ranking
            yield vote


def _rankings_described(rankings: int) -> str:
    if not rankings:
        return ""
    return (f"; {rankings} ranking{'s' if rankings != 1 else ''} read, each implying a pair for every two answers "
            f"ranked apart, together weighing K - 1 (K answers)")  # fmt: skip


def round_train_and_evaluate(training_round: TrainingRound, train_path: Path, heldout_path: Path) -> ModelVersion:
    """Train the adapter, and score it and its parent on the held-out votes against the base model, in one process
    (`python -m training round`: the model is loaded once); the base model's log-probs are cached across rounds."""
    parent = training_round.parent_version
    directory = Path(training_round.directory)
    output_dir = directory / OUTPUT_DIR
    config = RoundConfig.from_dict(
        {
            **training_round.config,
            "base_model_dir": parent.base_model,
            "output_dir": str(output_dir),
            "parent_adapter_dir": parent.adapter_path or None,
        }
    )
    config_path = directory / "config.json"
    config_path.write_text(config.to_json())
    training_round.advance(Status.TRAINING, config=config.to_dict(), started_at=timezone.now())
    comparison = directory / "evaluation.json"
    # The cache holds the training reference's log-probs of pairs seen before (or prescored while the trainer was
    # idle: annotate.rounds.prescore) and the base model's of held-out pairs
    arguments = ["train", "--config", str(config_path), "--data", str(train_path)]
    arguments += ["--reference-cache", str(Path(settings.ROUND_DIR) / REFERENCE_CACHE)]
    if training_round.heldout_pairs:
        arguments = ["round", *arguments[1:], "--heldout", str(heldout_path), "--evaluation-output", str(comparison)]
    with _phase(training_round, "train_and_evaluate"):
        training_process_run(
            training_round, arguments, directory / "train.log", metrics_path=output_dir / "metrics.jsonl"
        )
    phases = process_phases(comparison)
    if phases:
        training_round.record_phases(phases)
    training_round.advance(Status.EVALUATING)
    evaluation = _evaluation(training_round, comparison)
    name = f"{settings.SERVED_MODEL_NAME}-round-{training_round.pk}"
    # The model servers (perhaps on other hosts) and later rounds read the adapter from the store, not this disk.
    published = adapter_publish(source=output_dir / "adapter", name=name)
    version = ModelVersion.objects.create(
        name=name, base_model=parent.base_model, adapter_path=str(published), parent=parent
    )
    training_round.record(evaluation=evaluation, result_version=version)
    return version


def _evaluation(training_round: TrainingRound, comparison: Path) -> dict[str, Any]:
    """The held-out figures of the candidate and its parent, both against the base model, and the gate's decision."""
    evaluation: dict[str, Any] = {"heldout_pairs": training_round.heldout_pairs, "reference": "base model"}
    if not comparison.is_file():
        evaluation["gate"] = {"promote": False, "reason": "no held-out votes to evaluate on"}
        return evaluation
    compared = json.loads(comparison.read_text())
    models = compared["models"]
    candidate, parent = models["candidate"], models.get("parent") or {}
    if "training_reference" in compared:  # how many training pairs' reference log-probs came from the cache
        evaluation["training_reference"] = compared["training_reference"]
    evaluation.update(
        accuracy=candidate["accuracy"],
        accuracy_interval=[candidate.get("accuracy_low"), candidate.get("accuracy_high")],
        mean_margin=candidate["mean_margin"],
        scored_pairs=candidate.get("count"),
    )
    if parent:
        evaluation.update(
            parent_accuracy=parent["accuracy"],
            parent_accuracy_interval=[parent.get("accuracy_low"), parent.get("accuracy_high")],
            parent_mean_margin=parent["mean_margin"],
        )
    gate = gate_decision(
        evaluation["accuracy"],
        evaluation.get("parent_accuracy"),
        settings.ROUND_GATE_MIN_ACCURACY,
        settings.ROUND_GATE_TOLERANCE,
    )
    evaluation["gate"] = {"promote": gate.promote, "reason": gate.reason}
    return evaluation


def _mean_answer_tokens(client: ModelServerPool, model: str, prompts: list[list[dict[str, Any]]]) -> float:
    def length(index_and_prompt: tuple[int, list[dict[str, Any]]]) -> int:
        index, messages = index_and_prompt
        sample = client.chat(model=model, messages=messages, params=SamplingParams.from_settings(seed=1000 + index))
        return sample.completion_tokens or 0

    with ThreadPoolExecutor(max_workers=settings.PAIR_GENERATION_CONCURRENCY) as pool:
        lengths = list(pool.map(length, enumerate(prompts)))
    return sum(lengths) / len(lengths) if lengths else 0.0


def round_measure_lengths(training_round: TrainingRound) -> None:
    """Mean length of fresh answers to held-out prompts, before (parent) and after (this round), same seeds.

    Runs after the deploy decision, never in front of it: a rejected round's adapter is loaded for the measurement
    and unloaded again. Best-effort: a model server that cannot answer leaves the lengths unmeasured."""
    version = training_round.result_version
    heldout = Path(training_round.directory) / HELDOUT_FILE
    if version is None or not heldout.is_file():
        return
    prompts = [json.loads(line)["prompt"] for line in heldout.read_text().splitlines() if line.strip()]
    prompts = list({json.dumps(p): p for p in prompts}.values())[: settings.ROUND_LENGTH_PROMPTS]
    if not prompts:
        return
    try:
        with client_from_settings() as client:
            version.ensure_loaded(client)
            training_round.parent_version.ensure_loaded(client)
            lengths: dict[str, Any] = {
                "length_prompts": len(prompts),
                "mean_tokens_before": _mean_answer_tokens(client, training_round.parent_version.name, prompts),
                "mean_tokens_after": _mean_answer_tokens(client, version.name, prompts),
            }
            version.refresh_from_db()
            version.unload(client)  # a no-op for the serving version
    except (ModelServerUnavailable, ModelServerRefused) as error:
        logger.warning("round %s: answer lengths not measured: %s", training_round.pk, error)
        lengths = {"length_error": str(error)}
    training_round.record_evaluation(lengths)


def _canary_wanted(training_round: TrainingRound) -> bool:
    """Human mode always asks the annotators; both mode only when the offline check passed (else it is rejected)."""
    mode = training_round.gate_mode
    offline_passed = bool(training_round.evaluation.get("gate", {}).get("promote"))
    return mode == TrainingRound.GateMode.HUMAN or (mode == TrainingRound.GateMode.BOTH and offline_passed)


def round_run(round_id: int) -> None:
    """The whole round, in the training worker. Safe to call twice: only a queued round runs."""
    training_round = TrainingRound.objects.select_related("parent_version__parent").get(pk=round_id)
    try:
        training_round.advance(Status.PREPARING)
    except Conflict:
        logger.info("round %s is %s; nothing to do", round_id, training_round.status)
        return
    with training_round.heartbeating():
        _round_run_held(training_round)


def _round_run_held(training_round: TrainingRound) -> None:
    try:
        with _phase(training_round, "prepare"):
            train_path, heldout_path = round_prepare(training_round)
        round_train_and_evaluate(training_round, train_path, heldout_path)
        if _canary_wanted(training_round):
            canary_begin(training_round)
            return
        training_round.deploy_begin()
    except RoundStopped:
        return
    except Exception as error:
        training_round.refresh_from_db()
        if not training_round.is_active:  # ended elsewhere (abandoned while this worker was frozen): not its own
            logger.warning("round %s ended elsewhere; its worker stops (%r)", training_round.pk, error)
            return
        logger.exception("round %s failed", training_round.pk)
        training_round.finish(Status.FAILED, error=f"{type(error).__name__}: {error}")
        return
    try:
        with _phase(training_round, "deploy"):
            round_deploy(training_round)
    except ModelServerUnavailable:
        # Saved as trained, not deployed: the deploy task retries it with backoff until the server is back.
        round_deploy_later(training_round)
