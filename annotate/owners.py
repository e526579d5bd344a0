"""Who holds a piece of background work, and whether they are still there.

Every claim, running export or other job names its holder as `host:pid:token` and is renewed by a heartbeat while
the holder works. Work whose heartbeat stops (the process was killed, its host went away, it froze) is taken over or
ended by whoever looks next: at once when the holder was a process on the looker's own host that no longer exists,
otherwise once its lease ran out.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import connection

logger = logging.getLogger(__name__)


def holder_name() -> str:
    """A name for this process that no other process, here or on another host, has now or had before."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def holder_is_dead(holder: str) -> bool:
    """True when `holder` was a process on this host that no longer exists. A process on another host, or one that
    cannot be checked, counts as dead only when its lease runs out."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


@contextmanager
def heartbeat(renew: Callable[[], bool], *, every: float, name: str) -> Iterator[None]:
    """Call `renew` every `every` seconds in a thread while the block runs. `renew` returns False when the work is no
    longer this holder's (taken over, ended): the heartbeat then stops, and the block learns it from its own writes,
    which match on the holder too."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(every):
                if not renew():
                    logger.warning("%s is no longer held by this process; its heartbeat stops", name)
                    return
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat {name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
