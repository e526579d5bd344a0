"""Training rounds: freeze the votes, train a DPO adapter in a subprocess, evaluate it, deploy it into vLLM.

These are services like those in services.py, kept apart because they are a world of their own: they run for
minutes in the training worker, start processes, and change which model version serves.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from annotate.generation import ModelServerClient, ModelServerUnavailable, SamplingParams, client_from_settings
from annotate.models import Judgement, ModelVersion, Prompt, TrainingRound
from annotate.preferences import Combine, PreferenceRules, judgements_for_preferences, trl_preference_row, verdicts
from training.config import RoundConfig

logger = logging.getLogger(__name__)

Status = TrainingRound.Status
TRAIN_FILE, HELDOUT_FILE, OUTPUT_DIR = "train.jsonl", "heldout.jsonl", "output"
CONFIG_FIELDS_SET_BY_ROUND = ("base_model_dir", "output_dir", "parent_adapter_dir")


class RoundError(Exception):
    """A request about rounds that cannot be carried out; the message says why."""


class RoundStopped(Exception):
    """The round ended early (failed or cancelled); its status and error are already saved."""


# --- Reading the rules and defaults ----------------------------------------------------------------------------


def round_rules() -> PreferenceRules:
    # Ties and both-bad votes have no chosen and rejected answer, so they never become DPO pairs; they still count
    # as votes when several votes on one pair are combined.
    return PreferenceRules(combine=cast(Combine, settings.ROUND_COMBINE), min_agreement=settings.ROUND_MIN_AGREEMENT)


def round_config_defaults() -> dict[str, Any]:
    return dict(settings.ROUND_CONFIG_DEFAULTS)


def usable_votes_since(when: Any) -> int:
    votes = Judgement.objects.filter(choice__in=(Judgement.Choice.A, Judgement.Choice.B))
    return votes.filter(created_at__gt=when).count() if when else votes.count()


def round_latest() -> TrainingRound | None:
    return TrainingRound.objects.order_by("-id").first()


# --- Starting, cancelling, promoting ---------------------------------------------------------------------------


def _fail_stale_rounds() -> None:
    """A round whose worker stopped answering (killed, machine restarted) would block every later round."""
    stale_before = timezone.now() - timedelta(seconds=settings.ROUND_STALE_SECONDS)
    stale = TrainingRound.objects.filter(active=True).filter(
        Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True, created_at__lt=stale_before)
    )
    for training_round in stale:
        logger.warning(
            "round %s: no heartbeat since %s; marking it failed", training_round.pk, training_round.heartbeat_at
        )
        _finish(training_round, Status.FAILED, error="the training worker stopped reporting (lost or restarted)")


def round_start(
    *, trigger: str, started_by: User | None = None, overrides: dict[str, Any] | None = None
) -> TrainingRound:
    """Queue a round on the serving version with the default config and `overrides`. Raises RoundError."""
    _fail_stale_rounds()
    running = TrainingRound.objects.filter(active=True).first()
    if running is not None:
        raise RoundError(
            f"round {running.pk} is still {running.get_status_display().lower()}; wait for it or cancel it"
        )
    parent = ModelVersion.objects.serving()
    if parent is None:
        raise RoundError("no model version is serving yet")
    config = {**round_config_defaults(), **(overrides or {})}
    set_by_round = sorted(set(config) & set(CONFIG_FIELDS_SET_BY_ROUND))
    if set_by_round:
        raise RoundError(f"{', '.join(set_by_round)} are chosen by the round itself")
    try:
        RoundConfig.from_dict({**config, "base_model_dir": "-", "output_dir": "-"})
    except (TypeError, ValueError) as error:
        raise RoundError(f"invalid config: {error}") from error
    usable = usable_votes_since(None)
    if usable < settings.ROUND_MIN_TRAIN_PAIRS:
        raise RoundError(f"only {usable} votes prefer one answer; a round needs {settings.ROUND_MIN_TRAIN_PAIRS}")
    try:
        with transaction.atomic():
            training_round = TrainingRound.objects.create(
                trigger=trigger,
                started_by=started_by,
                parent_version=parent,
                config=config,
                rules=round_rules().as_dict(),
            )
    except IntegrityError:
        raise RoundError("another round started at the same moment") from None
    from annotate.tasks import round_run

    transaction.on_commit(lambda: round_run.delay(training_round.pk))
    return training_round


def round_cancel(*, training_round: TrainingRound) -> None:
    if not training_round.is_active:
        raise RoundError(f"round {training_round.pk} is {training_round.get_status_display().lower()}, not running")
    updated = TrainingRound.objects.filter(pk=training_round.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, active=None, finished_at=timezone.now(), error="cancelled before it started"
    )
    if updated == 0:  # running: the worker stops the training process at its next look
        TrainingRound.objects.filter(pk=training_round.pk).update(cancel_requested=True)


def round_promote(*, training_round: TrainingRound, by: User | None, reason: str) -> None:
    """Deploy a round the eval gate rejected, recording why; or retry a round that could not be deployed."""
    reason = reason.strip()
    if training_round.status == Status.REJECTED and not reason:
        raise RoundError("promoting a round the gate rejected needs a reason")
    if training_round.status not in (Status.REJECTED, Status.TRAINED):
        state = training_round.get_status_display().lower()
        raise RoundError(f"round {training_round.pk} is {state}; nothing to promote")
    if training_round.result_version is None:
        raise RoundError(f"round {training_round.pk} produced no adapter")
    running = TrainingRound.objects.filter(active=True).exclude(pk=training_round.pk).first()
    if running is not None:
        raise RoundError(f"round {running.pk} is running; promote this one after it ends")
    if reason:
        who = by.get_username() if by else "unknown"
        training_round.override_reason = f"{reason} (promoted by {who})"
        training_round.save(update_fields=["override_reason"])
    from annotate.tasks import round_deploy

    transaction.on_commit(lambda: round_deploy.delay(training_round.pk))


# --- Running a round (in the training worker) -----------------------------------------------------------------


def _save(training_round: TrainingRound, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(training_round, name, value)
    training_round.heartbeat_at = timezone.now()
    training_round.save(update_fields=[*fields, "heartbeat_at"])


def _finish(training_round: TrainingRound, status: str, **fields: Any) -> None:
    _save(training_round, status=status, active=None, finished_at=timezone.now(), process_id=None, **fields)


def _is_heldout(prompt: Prompt) -> bool:
    # Decided by the prompt itself, so a prompt stays on the same side in every round: no round is ever evaluated
    # on a prompt that it or any earlier round trained on.
    return int(prompt.content_hash[:8], 16) % 1000 < settings.ROUND_HOLDOUT_FRACTION * 1000


@contextmanager
def _phase(training_round: TrainingRound, name: str) -> Iterator[None]:
    """Record how long a phase took, also when it ends early."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds = round(time.monotonic() - started, 1)
        training_round.phase_seconds = {**training_round.phase_seconds, name: seconds}
        TrainingRound.objects.filter(pk=training_round.pk).update(phase_seconds=training_round.phase_seconds)


def round_prepare(training_round: TrainingRound) -> tuple[Path, Path]:
    """Freeze the votes and write the round's train and held-out files (TRL's conversational format)."""
    directory = Path(settings.ROUND_DIR) / f"round-{training_round.pk}"
    directory.mkdir(parents=True, exist_ok=True)
    rules = PreferenceRules(**training_round.rules)
    last_vote = Judgement.objects.filter(created_at__lte=training_round.created_at).order_by("-id").first()
    votes = judgements_for_preferences(Judgement.objects.filter(pk__lte=last_vote.pk if last_vote else 0))
    read_ids: list[int] = []
    train: list[dict[str, Any]] = []
    heldout: list[dict[str, Any]] = []
    for verdict in verdicts(_recording(votes, read_ids), rules):
        if verdict.chosen is None:
            continue
        (heldout if _is_heldout(verdict.pair.prompt) else train).append(trl_preference_row(verdict))
    train_path, heldout_path = directory / TRAIN_FILE, directory / HELDOUT_FILE
    for path, rows in ((train_path, train), (heldout_path, heldout)):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    _save(
        training_round,
        directory=str(directory),
        judgement_ids=read_ids,
        train_pairs=len(train),
        heldout_pairs=len(heldout),
    )
    if len(train) < settings.ROUND_MIN_TRAIN_PAIRS:
        _finish(training_round, Status.FAILED, error=f"only {len(train)} training pairs after the rules were applied")
        raise RoundStopped
    return train_path, heldout_path


def _recording(votes: Any, read_ids: list[int]) -> Any:
    for vote in votes.iterator(chunk_size=2000):
        read_ids.append(vote.pk)
        yield vote


def _training_command(*arguments: str) -> list[str]:
    launcher = shlex.split(settings.TRAINING_LAUNCHER) if settings.TRAINING_LAUNCHER else [sys.executable]
    return [*launcher, "-m", "training", *arguments]


def _log_tail(path: Path, characters: int = 4000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""


def _read_new_metrics(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    if not path.exists():
        return [], offset
    with path.open("rb") as file:
        file.seek(offset)
        chunk = file.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
    rows = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return rows, offset + len(complete)


def process_group_stop(process: subprocess.Popen[bytes], grace_seconds: float = 30) -> None:
    """Stop a process started with start_new_session=True, and its children: SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _run_training_process(
    training_round: TrainingRound, arguments: list[str], log_path: Path, metrics_path: Path | None = None
) -> None:
    """Run `python -m training ...` to its end, streaming metrics and obeying a cancel request."""
    command = _training_command(*arguments)
    logger.info("round %s: %s", training_round.pk, shlex.join(command))
    # More CPU threads than cores, shared with a vLLM server on the same CPU, makes OpenMP spin-wait: measured here,
    # a DPO step went from seconds to minutes. The thread budget is explicit.
    threads = str(settings.TRAINING_CPU_THREADS)
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _save(training_round, process_id=process.pid)
    offset = 0
    while True:
        finished = process.poll() is not None
        if metrics_path is not None:
            rows, offset = _read_new_metrics(metrics_path, offset)
            if rows:
                training_round.metrics = [*training_round.metrics, *rows]
                _save(training_round, metrics=training_round.metrics)
        if finished:
            break
        training_round.refresh_from_db(fields=["cancel_requested"])
        if training_round.cancel_requested:
            process_group_stop(process)
            _finish(training_round, Status.CANCELLED, log_tail=_log_tail(log_path), error="cancelled by an admin")
            raise RoundStopped
        _save(training_round)  # heartbeat
        time.sleep(settings.ROUND_POLL_SECONDS)
    if process.returncode != 0:
        how = f"killed by signal {-process.returncode}" if process.returncode < 0 else f"exit {process.returncode}"
        _finish(
            training_round,
            Status.FAILED,
            log_tail=_log_tail(log_path),
            error=f"`python -m training {arguments[0]}` failed ({how}); the log tail is below",
        )
        raise RoundStopped


def _evaluate(
    training_round: TrainingRound, *, adapter: str | None, reference: str | None, heldout: Path, name: str
) -> dict[str, Any]:
    directory = Path(training_round.directory)
    output = directory / f"eval-{name}.json"
    base_model = training_round.config["base_model_dir"]
    arguments = ["evaluate", "--model", base_model, "--data", str(heldout)]
    arguments += ["--beta", str(training_round.config["beta"]), "--output", str(output)]
    arguments += ["--max-length", str(training_round.config["max_length"])]
    if adapter:
        arguments += ["--adapter", adapter]
    if reference:
        arguments += ["--reference-adapter", reference]
    _run_training_process(training_round, arguments, directory / "evaluate.log")
    return dict(json.loads(output.read_text()))


def round_train_and_evaluate(training_round: TrainingRound, train_path: Path, heldout_path: Path) -> ModelVersion:
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
    _save(training_round, status=Status.TRAINING, config=config.to_dict(), started_at=timezone.now())
    with _phase(training_round, "train"):
        _run_training_process(
            training_round,
            ["train", "--config", str(config_path), "--data", str(train_path)],
            directory / "train.log",
            metrics_path=output_dir / "metrics.jsonl",
        )
    with _phase(training_round, "evaluate"):
        evaluation = _evaluate_candidate(training_round, parent, str(output_dir / "adapter"), heldout_path)
    version = ModelVersion.objects.create(
        name=f"{settings.SERVED_MODEL_NAME}-round-{training_round.pk}",
        base_model=parent.base_model,
        adapter_path=str(output_dir / "adapter"),
        parent=parent,
    )
    _save(training_round, evaluation=evaluation, result_version=version)
    return version


def _evaluate_candidate(
    training_round: TrainingRound, parent: ModelVersion, adapter_dir: str, heldout_path: Path
) -> dict[str, Any]:
    """Held-out implicit-reward accuracy of the new adapter, and of its parent on the same votes, and the gate."""
    _save(training_round, status=Status.EVALUATING)
    evaluation: dict[str, Any] = {"heldout_pairs": training_round.heldout_pairs}
    if training_round.heldout_pairs:
        candidate = _evaluate(
            training_round, adapter=adapter_dir, reference=parent.adapter_path or None, heldout=heldout_path, name="new"
        )
        evaluation.update(accuracy=candidate["accuracy"], mean_margin=candidate["mean_margin"])
        if parent.is_adapter:
            grandparent = parent.parent
            before = _evaluate(
                training_round,
                adapter=parent.adapter_path,
                reference=grandparent.adapter_path if grandparent and grandparent.is_adapter else None,
                heldout=heldout_path,
                name="parent",
            )
            evaluation.update(parent_accuracy=before["accuracy"], parent_mean_margin=before["mean_margin"])
    from training.evaluate import gate_decision

    if "accuracy" in evaluation:
        gate = gate_decision(
            evaluation["accuracy"],
            evaluation.get("parent_accuracy"),
            settings.ROUND_GATE_MIN_ACCURACY,
            settings.ROUND_GATE_TOLERANCE,
        )
        evaluation["gate"] = {"promote": gate.promote, "reason": gate.reason}
    else:
        evaluation["gate"] = {"promote": False, "reason": "no held-out votes to evaluate on"}
    return evaluation


def _mean_answer_tokens(client: ModelServerClient, model: str, prompts: list[list[dict[str, Any]]]) -> float:
    def length(index_and_prompt: tuple[int, list[dict[str, Any]]]) -> int:
        index, messages = index_and_prompt
        sample = client.chat(model=model, messages=messages, params=SamplingParams.from_settings(seed=1000 + index))
        return sample.completion_tokens or 0

    with ThreadPoolExecutor(max_workers=settings.PAIR_GENERATION_CONCURRENCY) as pool:
        lengths = list(pool.map(length, enumerate(prompts)))
    return sum(lengths) / len(lengths) if lengths else 0.0


def _answer_length_change(training_round: TrainingRound, client: ModelServerClient) -> dict[str, Any]:
    """Mean length of fresh answers to held-out prompts, before (parent) and after (this round), same seeds."""
    heldout = Path(training_round.directory) / HELDOUT_FILE
    prompts = [json.loads(line)["prompt"] for line in heldout.read_text().splitlines() if line.strip()]
    prompts = list({json.dumps(p): p for p in prompts}.values())[: settings.ROUND_LENGTH_PROMPTS]
    if not prompts:
        return {}
    assert training_round.result_version is not None
    before = _mean_answer_tokens(client, training_round.parent_version.name, prompts)
    after = _mean_answer_tokens(client, training_round.result_version.name, prompts)
    return {"length_prompts": len(prompts), "mean_tokens_before": before, "mean_tokens_after": after}


def _reject(training_round: TrainingRound, version: ModelVersion, error: str = "") -> None:
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.REJECTED)
    _finish(training_round, Status.REJECTED, error=error)


def round_deploy(training_round: TrainingRound) -> None:
    """Load the round's adapter into vLLM, measure its answers, and make it serve if the gate or an admin says so.

    Raises ModelServerUnavailable (after saving the round as trained, not deployed) for the task to retry.
    """
    version = training_round.result_version
    assert version is not None
    promote = bool(training_round.evaluation.get("gate", {}).get("promote") or training_round.override_reason)
    _save(training_round, status=Status.DEPLOYING, active=True)
    try:
        with client_from_settings() as client:
            version.ensure_loaded(client)
            evaluation = {**training_round.evaluation, **_answer_length_change(training_round, client)}
            _save(training_round, evaluation=evaluation)
            if not promote:
                client.unload_lora_adapter(name=version.name)
                _reject(training_round, version)
                return
            version.serve(client)
    except ModelServerUnavailable as error:
        if not promote:
            _reject(training_round, version, error=f"answer lengths not measured: {error}")
            return
        _finish(training_round, Status.TRAINED, error=f"the model server was unreachable at deploy: {error}")
        raise
    _finish(training_round, Status.SERVING, error="")


def round_run(round_id: int) -> None:
    """The whole round, in the training worker. Safe to call twice: only a queued round runs."""
    claimed = TrainingRound.objects.filter(pk=round_id, status=Status.QUEUED).update(
        status=Status.PREPARING, heartbeat_at=timezone.now()
    )
    if claimed != 1:
        logger.info("round %s is not queued; nothing to do", round_id)
        return
    training_round = TrainingRound.objects.select_related("parent_version__parent").get(pk=round_id)
    try:
        with _phase(training_round, "prepare"):
            train_path, heldout_path = round_prepare(training_round)
        round_train_and_evaluate(training_round, train_path, heldout_path)
    except RoundStopped:
        return
    except Exception as error:
        logger.exception("round %s failed", round_id)
        _finish(training_round, Status.FAILED, error=f"{type(error).__name__}: {error}")
        return
    with _phase(training_round, "deploy"):
        round_deploy(training_round)
