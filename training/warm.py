"""A warm start for rounds: `python -m training warm --model DIR` imports torch, transformers and TRL and loads the
base model once, then forks a fresh child for each `python -m training ...` command it is asked to run.

A round in a new process spends its first seconds importing torch and TRL and reading the base model from disk
(docs/benchmarks.md, "Click to serving"). Here that is done once per trainer, and each round starts from a copy of
the loaded process: the child gets the base model as it was read from disk (the pages are shared until written), and
whatever the round does to it dies with the child, so a round's result does not depend on the rounds before it.

The protocol is one JSON object a line. Requests on stdin: {"argv": [...], "log": PATH, "cwd": DIR, "threads": N}.
Replies on stdout: {"ready": true} once loaded, {"pid": N} for each request, {"exit": N, "code": C} when a child ends
(C as `subprocess.Popen.returncode`: negative for a signal). The end of stdin stops the server and its children.

Each child leads a process group of its own (stopped as one, like a round's `Popen`) and is set to receive SIGTERM
should this server die, which is itself set up by its starter to die with the worker that started it.

Never any CUDA here: a process that initialised CUDA cannot hand it to a forked child; the Django side uses this on
CPU-only hosts. And this process runs no multi-threaded torch operation: a child forked after OpenMP started its
threads would hang in its first parallel region (seen here with a matrix product before the fork), so the server
keeps torch at one thread and each child sets its own budget.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

# The base model read by this server, by its directory and the files it was read from; a child takes it at most once.
PRELOADED: dict[tuple[str, tuple[tuple[str, int, int], ...]], Any] = {}
PR_SET_PDEATHSIG = 1
# What this process is, for its report: a child of the server, and whether it trained on the model the server read.
WARM = {"forked": False, "preloaded_model": False}


def model_files_signature(model_dir: Path | str) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """The directory and its files' names, sizes and modification times: a model prepared again is another model."""
    directory = Path(model_dir).resolve()
    files = sorted(path for path in directory.iterdir() if path.is_file()) if directory.is_dir() else []
    return str(directory), tuple((path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files)


def preloaded_model_take(model_dir: Path | str) -> Any | None:
    """The base model in `model_dir` as this process's server loaded it, once; None when there is none (a process
    started the usual way, another directory, files changed since)."""
    model = PRELOADED.pop(model_files_signature(model_dir), None)
    WARM["preloaded_model"] = WARM["preloaded_model"] or model is not None
    return model


def serve(model_dir: Path | None, requests: int, replies: IO[str]) -> int:
    """Load, say ready, then run each request (`requests`: a file descriptor of JSON lines) in a forked child."""
    import torch

    torch.set_num_threads(1)  # see the module docstring: no OpenMP threads in a process that forks
    # Everything a round imports, imported once here.
    import training.__main__
    import training.dpo
    import training.evaluate

    if model_dir is not None:
        PRELOADED[model_files_signature(model_dir)] = training.dpo.base_model_read(model_dir)
    _reply(replies, {"ready": True})
    children: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    pending = b""
    try:
        while True:
            if selector.select(timeout=0.2):
                chunk = os.read(requests, 65536)
                if not chunk:  # the starter went: so do the rounds it asked for
                    return 0
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    pid = os.fork()
                    if pid == 0:
                        os.close(requests)  # the server's pipes are not the round's: only the server ends them
                        os.close(replies.fileno())
                        _child_run(line)  # never returns
                    children.add(pid)
                    _reply(replies, {"pid": pid})
            for pid in list(children):
                ended, status = os.waitpid(pid, os.WNOHANG)
                if ended:
                    children.discard(pid)
                    _reply(replies, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
    finally:
        for pid in children:
            _group_signal(pid, signal.SIGTERM)


def _child_run(line: bytes) -> None:
    code = 1
    try:
        request = json.loads(line)
        os.setsid()
        _die_with_parent()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.chdir(request["cwd"])
        WARM["forked"] = True
        import torch

        import training.__main__ as command

        torch.set_num_threads(int(request["threads"]))
        command.STARTED = time.monotonic()  # the round's "start" phase is this child's, not the server's
        code = command.main(request["argv"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _die_with_parent() -> None:
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the server died before the signal was set
        os._exit(1)


def _group_signal(pid: int, number: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, number)


def _reply(replies: IO[str], message: dict[str, Any]) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()
