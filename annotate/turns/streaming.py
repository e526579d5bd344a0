"""The live pair of a longer conversation, streamed to the annotator's page as server-sent events.

The web process relays the model server's streams for both answers at once (two threads reading, the request's
thread writing events) and stores the pair when both are done. In a campaign of K > 2 answers per pair the extra
answers are written at the same time (a thread each) but not shown: the page has two panes; they appear with the
stored ranking pair. A stream holds one web thread for as long as the
answers take (seconds), and no database connection meanwhile: it reads what it needs first, closes its connection,
and opens one again only to store the pair. At most CONTINUATION_STREAMS_PER_PROCESS streams run in one process; one
more is refused (503) and that page polls instead, so streams never take every thread of a web process.

Events: `text` ({"side": 0|1, "text": piece}), then `ready` (the pair is leased to the reader), `failed` (with what
the page says: the model server went away, the pair is made later) or `waiting` (someone else is making it).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import connection

from annotate.models import Continuation
from annotate.owners import holder_name
from annotate.sampling.generation import (
    ModelServerPool,
    ModelServerRefused,
    ModelServerUnavailable,
    ReaderGone,
    Sample,
    client_from_settings,
)
from annotate.turns import services
from annotate.turns.services import ContinuationWork

logger = logging.getLogger(__name__)

KEEP_ALIVE_SECONDS = 10.0

_slots_lock = threading.Lock()
_slots_in_use = 0


def stream_slot_take() -> bool:
    """One of this process's stream slots, or False when all are in use."""
    global _slots_in_use
    with _slots_lock:
        if _slots_in_use >= settings.CONTINUATION_STREAMS_PER_PROCESS:
            return False
        _slots_in_use += 1
        return True


def stream_slot_give_back() -> None:
    global _slots_in_use
    with _slots_lock:
        _slots_in_use -= 1


def streams_running() -> int:
    with _slots_lock:
        return _slots_in_use


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _database_let_go() -> None:
    """Close this thread's database connection for the stream's length (unless a transaction holds it: tests)."""
    if not connection.in_atomic_block:
        connection.close()


class _Relay:
    """Both answers written at once, their pieces gathered into one queue in the order they came."""

    def __init__(self, work: ContinuationWork, client: ModelServerPool) -> None:
        self.work = work
        self.client = client
        self.events: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._write, args=(side,), name=f"stream-{side}", daemon=True)
            for side in range(len(work.recipes))
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _write(self, side: int) -> None:
        recipe = self.work.recipes[side]

        def on_text(piece: str) -> bool:
            if side < 2:  # the page's two panes; a ranking pair's extra answers are shown once the pair is stored
                self.events.put(("text", side, piece))
            return not self.stop.is_set()

        try:
            sample = recipe.sample_streamed(self.client, self.work.continuation.prompt, on_text)
        except (ModelServerUnavailable, ModelServerRefused, ReaderGone) as error:
            self.events.put(("error", side, error))
        except Exception as error:  # a bug must end the stream with a word, not leave the page waiting
            logger.exception("stream of continuation %s", self.work.continuation.pk)
            self.events.put(("error", side, ModelServerUnavailable(f"{type(error).__name__}: {error}")))
        else:
            self.events.put(("done", side, sample))


def continuation_events(continuation_id: int) -> Iterator[bytes]:
    """The events of one continuation's live pair. Nothing is taken before the first event is asked for (a response
    never read holds nothing); from then on the slot and the claim are given back however the stream ends, the
    reader leaving included: the claim is released and a worker makes the pair."""
    if not stream_slot_take():
        yield event("busy", {"message": "This server streams all it may; the page checks by itself."})
        return
    try:
        opened = _claim(continuation_id)
        if opened is None:
            yield event("waiting", {"message": "The answers are being written."})
            return
        yield from _relayed(*opened)
    finally:
        stream_slot_give_back()


def _claim(continuation_id: int) -> tuple[ContinuationWork, str, ModelServerPool] | None:
    continuation = Continuation.objects.select_related("prompt").get(pk=continuation_id)
    holder = holder_name()
    client = client_from_settings(timeout=settings.CONTINUATION_STREAM_SECONDS)
    work = services.continuation_claim(continuation=continuation, holder=holder, client=client)
    if work is None:
        client.close()
        return None
    return work, holder, client


def _relayed(work: ContinuationWork, holder: str, client: ModelServerPool) -> Iterator[bytes]:
    relay = _Relay(work, client)
    answers: dict[int, Sample] = {}
    ended = False
    try:
        _database_let_go()
        relay.start()
        deadline = time.monotonic() + settings.CONTINUATION_STREAM_SECONDS
        yield event("started", {"continuation": work.continuation.pk})
        while len(answers) < len(work.recipes):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelServerUnavailable(f"no answer within {settings.CONTINUATION_STREAM_SECONDS:.0f} s")
            try:
                kind, side, payload = relay.events.get(timeout=min(KEEP_ALIVE_SECONDS, left))
            except queue.Empty:
                yield b": still writing\n\n"
                continue
            if kind == "text":
                yield event("text", {"side": side, "text": payload})
            elif kind == "done":
                answers[side] = payload
            else:
                raise payload
        in_order = tuple(answers[side] for side in range(len(work.recipes)))
        pair = services.continuation_pair_store(work=work, holder=holder, answers=in_order)
        ended = True
        if pair is None:
            yield event("failed", {"message": "The answers could not be used; new ones are being written."})
        else:
            yield event("ready", {"pair": pair.pk})
    except (ModelServerUnavailable, ModelServerRefused, ReaderGone) as error:
        logger.warning("stream of continuation %s ended: %s", work.continuation.pk, error)
        message = services.continuation_sampling_failed(work=work, holder=holder, error=error)
        ended = True
        yield event("failed", {"message": message})
    finally:
        relay.stop.set()
        client.close()
        if not ended:  # the reader left mid-stream: a worker makes the pair instead
            services.continuation_sampling_failed(
                work=work, holder=holder, error=ModelServerUnavailable("the page stopped listening")
            )
