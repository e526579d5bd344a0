"""Refills share the buffer out in claimed batches: overlapping refills make different batches and never fill past
the target, and a claim whose process was killed or stalled is taken over, never left blocking the buffer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from annotate.models import Pair, Prompt, SamplingClaim
from annotate.sampling import services as sampling
from tests.annotate.model_server_stub import ModelServerStub
from tests.integration.conftest import REPO, shared_database_url, wait_until

from .conftest import run_in_threads

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stub(serving_version, settings):
    with ModelServerStub(served_models=(serving_version.name,)).running() as server:
        settings.VLLM_BASE_URL = server.url
        settings.VLLM_TIMEOUT = 60
        yield server


def prompts(count: int, stub: ModelServerStub, seconds: float = 0) -> None:
    for number in range(count):
        content = f"Question {number}?"
        Prompt.objects.create(messages=[{"role": "user", "content": content}], source="test")
        if seconds:
            stub.slow_prompts[content] = seconds


def test_overlapping_refills_make_different_batches_and_stop_at_the_target(stub, settings, serving_version):
    settings.PAIR_BUFFER_TARGET, settings.PAIR_REFILL_BATCH = 6, 3
    prompts(12, stub, seconds=0.5)  # slow enough that the two refills overlap
    made: list[int] = []
    run_in_threads([lambda: made.append(sampling.pairs_refill()) for _ in range(2)])
    assert sorted(made) == [3, 3]  # each made its own batch, at the same time
    assert sampling.pairs_ready_count(serving_version) == 6
    assert not SamplingClaim.objects.exists()  # each released its own claim
    assert sampling.pairs_refill() == 0  # full: nothing left to claim


def test_a_claim_counts_its_pairs_as_on_their_way(stub, settings, serving_version):
    settings.PAIR_BUFFER_TARGET, settings.PAIR_REFILL_BATCH = 4, 4
    claim, still_missing = sampling.sampling_claim_take(version=serving_version, holder="elsewhere:1:x")
    assert claim is not None and claim.pairs == 4 and still_missing == 0
    assert sampling.sampling_claim_take(version=serving_version, holder="elsewhere:2:y") == (None, 0)


class RefillQueue:
    """The broker's queue of this test run, read and taken from as a worker would (the real broker, no stand-in)."""

    def __init__(self) -> None:
        from django.conf import settings

        from annotate.celery import app

        self.name = settings.CELERY_TASK_DEFAULT_QUEUE
        self._connection = app.connection_for_read()
        self._channel = self._connection.default_channel
        self.clear()

    def clear(self) -> None:
        """Nothing queued and nothing marked as queued (an earlier test may have left a refill in the queue)."""
        from django.core.cache import cache

        self._channel.queue_purge(self.name)
        cache.delete(sampling.REFILL_QUEUED_KEY)

    def waiting(self) -> int:
        # Not passive: Redis keeps no empty queue, and a passive declaration of a queue it does not have fails.
        return int(self._channel.queue_declare(queue=self.name, durable=True, auto_delete=False).message_count)

    def run_next(self) -> int:
        """Take the next task off the queue and run it, as a worker does; returns what the refill made."""
        from annotate.celery import app

        message = self._channel.basic_get(self.name, no_ack=True)
        assert message is not None
        assert message.headers["task"] == "annotate.tasks.pairs_refill"
        return int(app.tasks["annotate.tasks.pairs_refill"].apply().get())

    def close(self) -> None:
        self._connection.release()


def test_at_most_one_refill_waits_in_the_queue(stub, settings, serving_version):
    """Every refill that leaves pairs missing asks for the next, and votes, pages and a worker's start ask too: one
    waiting refill is enough, since it asks for the next itself; more only make work that finds nothing to claim."""
    settings.PAIR_BUFFER_TARGET, settings.PAIR_REFILL_BATCH = 8, 2
    prompts(8, stub)
    queue = RefillQueue()
    try:
        for _ in range(3):
            sampling.pairs_refill_request(throttle=False)  # the rounds page, a canary, a worker's start...
            assert sampling.pairs_refill() == 2  # ...and a refill outside the queue that leaves pairs missing
        assert queue.waiting() == 1

        assert queue.run_next() == 2  # a worker takes it: the buffer is full, nothing more is asked for
        assert sampling.pairs_ready_count(serving_version) == 8
        assert queue.waiting() == 0
        sampling.pairs_refill_request(throttle=False)  # the waiting refill was taken: a request queues one again
        assert queue.waiting() == 1
    finally:
        queue.clear()
        queue.close()


def _refill_in_another_process(stub: ModelServerStub, **variables: str) -> subprocess.Popen[bytes]:
    """A refill in its own process, as a sampling worker runs it, on this test's database and model server."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "annotate.settings", "DATABASE_URL": shared_database_url(),
           "VLLM_BASE_URL": stub.url, "VLLM_TIMEOUT": "60", **variables}  # fmt: skip
    code = "from annotate.sampling import services; services.pairs_refill()"
    return subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=REPO, env=env, start_new_session=True
    )


def _claim_of(process: subprocess.Popen[bytes]) -> SamplingClaim:
    def claimed() -> SamplingClaim | None:
        return SamplingClaim.objects.filter(holder__contains=f":{process.pid}:").first()

    return wait_until(claimed, 90, "the other process to claim a batch", process)


def test_the_claim_of_a_killed_worker_is_taken_over_at_once(stub, settings, serving_version):
    """make run stopped with kill -9 mid-refill: the next refill on this host must not wait for anything."""
    settings.PAIR_BUFFER_TARGET, settings.PAIR_REFILL_BATCH = 4, 4
    prompts(8, stub, seconds=60)
    worker = _refill_in_another_process(stub, PAIR_BUFFER_TARGET="4", PAIR_REFILL_BATCH="4")
    try:
        _claim_of(worker)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    stub.slow_prompts.clear()
    assert sampling.pairs_refill() == 4
    assert not SamplingClaim.objects.exists()


def test_a_stalled_holder_keeps_its_claim_until_the_lease_ends_then_loses_it(stub, settings, serving_version):
    lease = 10.0
    settings.PAIR_BUFFER_TARGET, settings.PAIR_REFILL_BATCH, settings.SAMPLING_CLAIM_LEASE_SECONDS = 4, 4, lease
    prompts(8, stub, seconds=60)
    worker = _refill_in_another_process(
        stub, PAIR_BUFFER_TARGET="4", PAIR_REFILL_BATCH="4", SAMPLING_CLAIM_LEASE_SECONDS=str(lease)
    )
    try:
        _claim_of(worker)
        os.killpg(worker.pid, signal.SIGSTOP)  # alive but silent: a frozen pod, a long GC pause
        assert sampling.pairs_refill() == 0  # its batch is still on its way
        expires = SamplingClaim.objects.get().expires_at.timestamp()
        time.sleep(max(0.0, expires - time.time()) + 0.5)
        stub.slow_prompts.clear()
        assert sampling.pairs_refill() == 4  # taken over once its lease ran out
        assert Pair.objects.count() == 4
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
