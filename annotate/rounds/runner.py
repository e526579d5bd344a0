"""The edge to training/: run `python -m training ...` for a round as a process group, follow it, stop it.

As annotate/sampling/generation.py is the only client of the model server, this is the only module that starts a
training process (itself, or forked by this worker's warm trainer, annotate/rounds/warm.py): it builds the command
(through TRAINING_LAUNCHER), gives it its CPU thread budget, streams its
metrics onto the round, obeys a cancel request, keeps its log tail, and reads the phases it measured. The round's
lifecycle (what runs when, and what its outcome means) stays in annotate/rounds/services.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from annotate.models import TrainingRound
from annotate.rounds.warm import WarmChild, dies_with_this_worker, training_environment, warm_start

logger = logging.getLogger(__name__)

Status = TrainingRound.Status
# A round's training process: started here, or forked by this worker's warm trainer (annotate.rounds.warm)
TrainingProcess = subprocess.Popen[bytes] | WarmChild


class RoundStopped(Exception):
    """The round ended early (failed or cancelled); its status and error are already saved."""


class RoundLost(RoundStopped):
    """The round was ended elsewhere while this worker ran it (it was silent too long): no longer this worker's,
    which writes nothing more to it."""


def training_command(*arguments: str) -> list[str]:
    """`python -m training <arguments>`, through TRAINING_LAUNCHER (`accelerate launch`, `torchrun ...`) if set."""
    launcher = shlex.split(settings.TRAINING_LAUNCHER) if settings.TRAINING_LAUNCHER else [sys.executable]
    return [*launcher, "-m", "training", *arguments]


def log_tail(path: Path, characters: int = 4000) -> str:
    return path.read_text(errors="replace")[-characters:] if path.exists() else ""


def metrics_read_new(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete metric rows written after `offset`, and the offset to read from next time."""
    if not path.exists():
        return [], offset
    with path.open("rb") as file:
        file.seek(offset)
        chunk = file.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next look
    rows = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return rows, offset + len(complete)


def process_group_stop(process: TrainingProcess, grace_seconds: float = 30) -> None:
    """Stop a process started with start_new_session=True, and its children: SIGTERM, then SIGKILL."""
    if process.poll() is not None:
        return
    _group_signal(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        _group_signal(process.pid, signal.SIGKILL)
        process.wait()


def _group_signal(pid: int, number: signal.Signals) -> None:
    try:
        os.killpg(pid, number)
    except ProcessLookupError:  # a forked process not yet leading its group (training.warm), or just ended
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)


def training_process_run(
    training_round: TrainingRound, arguments: list[str], log_path: Path, metrics_path: Path | None = None
) -> None:
    """Run `python -m training ...` to its end, streaming metrics and obeying a cancel request.

    Raises RoundStopped, with the round failed or cancelled and its log tail saved, when the process fails or is
    cancelled."""
    command = training_command(*arguments)
    process: TrainingProcess | None = warm_start(arguments, log_path)
    if process is not None:
        logger.info("round %s: %s (warm: pid %s)", training_round.pk, shlex.join(command), process.pid)
    else:
        logger.info("round %s: %s", training_round.pk, shlex.join(command))
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                dies_with_this_worker(command),
                cwd=settings.BASE_DIR,
                env=training_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    try:
        training_round.record(process_id=process.pid)
        _follow(training_round, process, arguments, log_path, metrics_path)
    finally:
        process_group_stop(process)  # whatever ended the round (a cancel, a crash here), the process goes too


def _follow(
    training_round: TrainingRound,
    process: TrainingProcess,
    arguments: list[str],
    log_path: Path,
    metrics_path: Path | None,
) -> None:
    offset = 0
    while True:
        finished = process.poll() is not None
        if metrics_path is not None:
            rows, offset = metrics_read_new(metrics_path, offset)
            if rows:
                training_round.record_steps(rows)
        if finished:
            break
        training_round.refresh_from_db(fields=["cancel_requested"])
        if training_round.cancel_requested:
            process_group_stop(process)
            training_round.finish(Status.CANCELLED, log_tail=log_tail(log_path), error="cancelled by an admin")
            raise RoundStopped
        if not training_round.heartbeat():  # ended elsewhere (abandoned while this worker was frozen)
            raise RoundLost
        time.sleep(settings.ROUND_POLL_SECONDS)
    code = process.poll()
    if code != 0:
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        training_round.finish(
            Status.FAILED,
            log_tail=log_tail(log_path),
            error=f"`python -m training {arguments[0]}` failed ({how}); the log tail is below",
        )
        raise RoundStopped


def process_phases(comparison: Path) -> dict[str, float]:
    """The training process's wall time split into its phases, as it measured them (in the evaluation file it
    wrote): start (importing torch and TRL), load (the model and the data), train, evaluate. Empty without one."""
    if not comparison.is_file():
        return {}
    seconds = json.loads(comparison.read_text()).get("seconds") or {}
    phases = {name: float(seconds[name]) for name in ("load", "train", "evaluate") if name in seconds}
    if "process" in seconds and phases:
        phases = {"start": round(max(0.0, float(seconds["process"]) - sum(phases.values())), 3), **phases}
    return phases
