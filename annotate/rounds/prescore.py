"""A trainer's idle time, spent on the next round: the log-probabilities a round computes before it trains.

A round's first minute on two cores is mostly two passes that need no training at all: the DPO reference's
log-probs of every training pair (the serving version's, which the next round continues from) and the base model's
of the held-out pairs (docs/benchmarks.md, "Click to serving"). Both depend only on the pair and on models that do not
change until a round ends, so a trainer scores them while it waits, into the reference cache the round reads
(`python -m training prescore`, training.dpo.prescore): the round finds them there and goes straight to training.

Beat asks every ROUND_PRESCORE_INTERVAL seconds, on the training queue. Each ask does nothing when nothing changed
since the last complete pass on this host (the serving version, the votes, the round's defaults), and otherwise
scores for at most ROUND_PRESCORE_SECONDS in the warm trainer's forked child, then asks again at once if pairs were
left: a round clicked meanwhile waits for that slice at most (a trainer runs one task at a time). Nothing here is
needed for a round to be right: a pair not prescored is scored by the round itself, the same value bit for bit; a
host whose trainer never prescored (another machine, a fresh disk) only takes longer. So nothing here locks: two
trainers that prescore at once only do the same work twice (the cache merges their saves).

Only where rounds start warm (training.warm, `TRAINING_WARM_START`): a cold process would spend seconds importing
torch at every ask, and on a GPU host the round's own pass is short. And only up to ROUND_PRESCORE_MAX_VOTES votes:
each ask that finds something new reads every vote and tokenizes every pair again (the cache is keyed by tokens),
which a larger set would spend its slices on; a slice that scores nothing is not asked again until something
changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.db.models import Max

from annotate.broker import enqueue
from annotate.models import Judgement, ModelVersion, TrainingRound
from annotate.quality.preferences import PreferenceRules, Weighting
from annotate.rounds.runner import process_group_stop
from annotate.rounds.services import (
    REFERENCE_CACHE,
    holdout_fraction_for,
    round_config_defaults,
    round_rules,
    rows_write,
)
from annotate.rounds.warm import warm_start, warm_start_enabled
from training.config import RoundConfig

logger = logging.getLogger(__name__)

PRESCORE_DIR = "prescore"
STATE_FILE = "state.json"
# Stages in which some trainer's CPU is busy with a round: scoring beside it would slow that round down
BUSY = (TrainingRound.Status.QUEUED, TrainingRound.Status.PREPARING, TrainingRound.Status.TRAINING,
        TrainingRound.Status.EVALUATING)  # fmt: skip


def round_prescore() -> str:
    """Score what the next round on the serving version would score first, for at most ROUND_PRESCORE_SECONDS;
    returns what it did, in words."""
    if settings.ROUND_PRESCORE_SECONDS <= 0:
        return "off: ROUND_PRESCORE_SECONDS is 0"
    if not warm_start_enabled():
        return "off: rounds start cold here (TRAINING_WARM_START)"
    if TrainingRound.objects.filter(status__in=BUSY).exists():
        return "a round is training: it scores its own pairs"
    parent = ModelVersion.objects.serving()
    if parent is None:
        return "nothing serves yet"
    directory = Path(settings.ROUND_DIR) / PRESCORE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    defaults = round_config_defaults()
    config = RoundConfig.from_dict(
        {
            **defaults,
            "base_model_dir": parent.base_model,
            "output_dir": str(directory / "output"),
            "parent_adapter_dir": parent.adapter_path or None,
        }
    )
    fraction = holdout_fraction_for(parent)
    rules = round_rules()
    last = Judgement.objects.aggregate(last=Max("id"))["last"] or 0
    state = _state(parent, last, fraction, rules, config)
    known = _state_read(directory) or {}
    if known == state or known == {**state, "stalled": True}:
        return "up to date" if known == state else "stalled on these votes: the round will score its own pairs"
    votes = Judgement.objects.filter(pk__lte=last).count()
    if votes > settings.ROUND_PRESCORE_MAX_VOTES:
        return f"off above ROUND_PRESCORE_MAX_VOTES={settings.ROUND_PRESCORE_MAX_VOTES} votes ({votes}): see there"
    # This worker's own files (two trainers on one host may prescore at once), gone after each ask; the state and the
    # log are shared
    work = directory / f"worker-{os.getpid()}"
    work.mkdir(exist_ok=True)
    try:
        return _score(
            directory, work, state, config, rules, fraction, last, cast(Weighting, defaults.get("weighting", "none"))
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _score(
    directory: Path,
    work: Path,
    state: dict[str, Any],
    config: RoundConfig,
    rules: PreferenceRules,
    fraction: float,
    last: int,
    weighting: Weighting,
) -> str:
    train, heldout = work / "train.jsonl", work / "heldout.jsonl"
    written, _ = rows_write(Judgement.objects.filter(pk__lte=last), rules, weighting, fraction, train, heldout)
    if not written.train_weights:  # held-out pairs alone make no round
        _state_write(directory, state)
        return "no training pair to score yet"
    config_path = work / "config.json"
    config_path.write_text(config.to_json())
    output = work / "report.json"
    output.unlink(missing_ok=True)
    arguments = ["prescore", "--config", str(config_path), "--data", str(train), "--heldout", str(heldout)]
    arguments += ["--reference-cache", str(Path(settings.ROUND_DIR) / REFERENCE_CACHE)]
    arguments += ["--seconds", str(settings.ROUND_PRESCORE_SECONDS), "--output", str(output)]
    process = warm_start(arguments, directory / "prescore.log")
    if process is None:
        return "the warm trainer is not ready"
    try:
        code = process.wait(timeout=settings.ROUND_PRESCORE_SECONDS + settings.TRAINING_WARM_READY_SECONDS)
    except subprocess.TimeoutExpired:
        return f"stopped: no answer in {settings.ROUND_PRESCORE_SECONDS + settings.TRAINING_WARM_READY_SECONDS} s"
    finally:
        process_group_stop(process)
    if code != 0 or not output.is_file():
        _state_write(directory, {**state, "stalled": True})  # not again on these votes: the round will say why
        return f"`python -m training prescore` failed (exit {code}); see {directory / 'prescore.log'}"
    report = json.loads(output.read_text())
    said = (
        f"{report.get('scored', 0)} training pairs scored, {report.get('held', 0)} already held; held out: "
        f"{report.get('heldout_scored', 0)} scored, {report.get('heldout_held', 0)} held"
    )
    if report.get("complete"):
        _state_write(directory, state)
        return f"complete: {said}"
    if not report.get("scored") and not report.get("heldout_scored"):
        # Not one pair in a whole slice (the pairs' preparation alone fills it): asking again would only burn the
        # cores. Left to the round, until the votes or the serving version change.
        _state_write(directory, {**state, "stalled": True})
        return f"no progress in {settings.ROUND_PRESCORE_SECONDS} s: the round will score its own pairs ({said})"
    enqueue("annotate.tasks.round_prescore")  # the rest, after whatever else waits on the queue (a round)
    return f"more to score: {said}"


def _state(
    parent: ModelVersion, last: int, fraction: float, rules: PreferenceRules, config: RoundConfig
) -> dict[str, Any]:
    described = json.dumps([rules.as_dict(), config.to_dict()], sort_keys=True, default=str)
    return {
        "version": parent.pk,
        "last_judgement": last,
        "holdout_fraction": fraction,
        "settings": hashlib.sha256(described.encode()).hexdigest(),
        "threads": settings.TRAINING_CPU_THREADS,
    }


def _state_read(directory: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((directory / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _state_write(directory: Path, state: dict[str, Any]) -> None:
    temporary = directory / f"{STATE_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(state))
    temporary.replace(directory / STATE_FILE)
