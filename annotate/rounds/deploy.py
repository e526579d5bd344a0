"""Deploying a round: its adapter serves, or it is rejected; and the one rule for retrying a deploy.

A round that is deploying (just evaluated, promoted by staff, or promoted by its canary) is deployed either in the
training worker right after its evaluation or by the `round_deploy` task. When the model server cannot be reached the
round is saved as trained, not deployed, and the task retries it with backoff (`round_deploy_retry`); when the task
queue cannot be reached either, the round waits as trained for staff to retry it (promote it again).
"""

from __future__ import annotations

import logging
from contextlib import suppress

from django.db import transaction

from annotate.broker import enqueue
from annotate.errors import Conflict
from annotate.models import ModelVersion, TrainingRound
from annotate.sampling.generation import ModelServerRefused, ModelServerUnavailable, client_from_settings
from annotate.sampling.services import pairs_refill_request

logger = logging.getLogger(__name__)

Status = TrainingRound.Status
QUEUE_UNREACHABLE = "the task queue could not be reached; promote it again"


def _deploy_wanted(training_round: TrainingRound) -> bool:
    """A canary's decision, else an admin's override, else the offline gate."""
    decision = training_round.canary_decision.get("decision")
    if decision:
        return decision == "promote" or bool(training_round.override_reason)
    return bool(training_round.evaluation.get("gate", {}).get("promote") or training_round.override_reason)


def round_deploy(training_round: TrainingRound) -> None:
    """A deploying round: make its adapter serve if the gate or an admin says so, else reject it.

    Every way this can end leaves the round in an end state with the reason shown and the serving version unchanged
    unless it served: trained (the model server was unreachable; raises ModelServerUnavailable for the caller to
    retry, see round_deploy_later), failed (the server refused the adapter, or anything unexpected), rejected, or
    serving.
    """
    version = training_round.result_version
    if version is None:
        training_round.finish(Status.FAILED, error="the round produced no adapter to deploy")
        return
    promote = _deploy_wanted(training_round)
    try:
        if not promote:
            version.reject()
            training_round.finish(Status.REJECTED, error="")
        else:
            with client_from_settings() as client:
                version.serve(client)
            training_round.finish(Status.SERVING, error="")
    except ModelServerUnavailable as error:
        training_round.finish(Status.TRAINED, error=f"the model server was unreachable at deploy: {error}")
        raise
    except ModelServerRefused as error:
        with suppress(Conflict):
            version.reject()
        training_round.finish(Status.FAILED, error=f"the model server refused the adapter: {error}")
        return
    except Exception as error:
        logger.exception("round %s: deploy failed", training_round.pk)
        training_round.refresh_from_db()
        if training_round.status == Status.DEPLOYING:
            training_round.finish(Status.FAILED, error=f"deploy failed: {type(error).__name__}: {error}")
        return
    transaction.on_commit(lambda: enqueue("annotate.tasks.round_measure_lengths", training_round.pk))
    if version.status == ModelVersion.Status.SERVING:
        pairs_refill_request(throttle=False)


def round_deploy_later(training_round: TrainingRound) -> bool:
    """Hand a deploying round, or one the model server missed (trained), to the deploy task, which retries with
    backoff. When the task queue cannot be reached, a deploying round ends trained, so it holds no slot and staff can
    promote it again; returns whether the task was queued."""
    if enqueue("annotate.tasks.round_deploy", training_round.pk):
        return True
    if training_round.status == Status.DEPLOYING:
        training_round.finish(Status.TRAINED, error=QUEUE_UNREACHABLE)
    return False


def round_deploy_retry(*, round_id: int) -> None:
    """The deploy task's work: a round the model server missed (trained) deploys again, a deploying round deploys;
    any other round is left alone. Raises ModelServerUnavailable, the round saved as trained, for the task to retry.
    """
    training_round = TrainingRound.objects.select_related("result_version", "parent_version").get(pk=round_id)
    if training_round.status == Status.TRAINED:
        try:
            training_round.deploy_begin()
        except Conflict as error:
            logger.info("round %s not redeployed: %s", round_id, error)
            return
    if training_round.status != Status.DEPLOYING:
        logger.info("round %s is %s; not deploying", round_id, training_round.status)
        return
    with training_round.heartbeating():  # loading an adapter into every model server may take a while
        round_deploy(training_round)
