"""This trainer's warm start: a `python -m training warm` process it keeps between rounds (training.warm), which has
torch and TRL imported and the base model read, and forks each round's training process from that.

One per trainer worker process (a trainer runs `--pool solo`, one round at a time), started when the worker is ready
and again whenever it is found dead or loaded with another base model or thread budget. It dies with the worker (the
kernel's parent-death signal, like a cold training process) and the rounds it forked die with it. Anything that
goes wrong with it (it does not start, does not answer, dies) costs a round nothing but the warm start: the round
runs in a fresh process as it would without it, and the server is started again for the next round.

Off where a launcher runs the rounds (torchrun, accelerate start their own processes) and on hosts with an NVIDIA GPU
(a process cannot hand CUDA to a forked child), see `TRAINING_WARM_START`.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)


class WarmStartFailed(Exception):
    """The warm trainer could not start this round (it is stopped; the round starts cold)."""


def warm_start_enabled() -> bool:
    return bool(settings.TRAINING_WARM_START) and not settings.TRAINING_LAUNCHER


def training_environment() -> dict[str, str]:
    # More CPU threads than cores, shared with a vLLM server on the same CPU, makes OpenMP spin-wait: measured here,
    # a DPO step went from seconds to minutes. The thread budget is explicit.
    threads = str(settings.TRAINING_CPU_THREADS)
    return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def dies_with_this_worker(command: list[str]) -> list[str]:
    """`command`, set to get SIGTERM should this worker die without a word (SIGKILL, the OOM killer): the kernel's
    parent-death signal, set by util-linux's `setpriv` (a preexec_fn could, but is unsafe beside the round's heartbeat
    thread). A launcher (torchrun, accelerate) stops its own workers on SIGTERM. Without setpriv on the host the
    command runs as it is, and a killed worker's training process runs on to its end, its results unused."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *command] if setpriv else command


class WarmChild:
    """A round's training process forked by the warm trainer: what the runner asks of a `subprocess.Popen`."""

    def __init__(self, trainer: WarmTrainer, pid: int) -> None:
        self.trainer = trainer
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.trainer.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"python -m training (pid {self.pid})", timeout or 0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode


class WarmTrainer:
    """`python -m training warm --model DIR` under this worker, and what it said so far."""

    def __init__(self, model_dir: str) -> None:
        self.key = (model_dir, settings.TRAINING_CPU_THREADS)
        Path(settings.ROUND_DIR).mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "training", "warm", "--model", model_dir]
        with (Path(settings.ROUND_DIR) / "warm-trainer.log").open("ab") as log:
            self.process = subprocess.Popen(
                dies_with_this_worker(command),
                cwd=settings.BASE_DIR,
                env=training_environment(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        self.ready = False
        self.gone = False
        self.started: list[int] = []
        self.exits: dict[int, int] = {}
        self._pending = b""

    def alive(self) -> bool:
        return not self.gone and self.process.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready and self.alive() and time.monotonic() < deadline:
            self._read(min(0.5, max(0.0, deadline - time.monotonic())))
        return self.ready

    def start(self, arguments: list[str], log_path: Path, timeout: float = 30) -> WarmChild:
        request: dict[str, Any] = {"argv": arguments, "log": str(log_path), "cwd": str(settings.BASE_DIR)}
        request["threads"] = settings.TRAINING_CPU_THREADS
        assert self.process.stdin is not None
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError as error:
            raise WarmStartFailed(f"the warm trainer took no request: {error}") from error
        deadline = time.monotonic() + timeout
        while not self.started:
            if not self.alive() or time.monotonic() >= deadline:
                raise WarmStartFailed("the warm trainer did not start the process")
            self._read(0.5)
        return WarmChild(self, self.started.pop(0))

    def exit_code(self, pid: int) -> int | None:
        self._read(0)
        if pid in self.exits:
            return self.exits.pop(pid)
        if not self.alive():  # the server died: its children got SIGTERM (training.warm), and nobody will say more
            return -signal.SIGTERM
        return None

    def stop(self) -> None:
        """Stop the server; it stops the rounds it runs on its way out."""
        self.gone = True
        if self.process.stdin is not None:
            self.process.stdin.close()  # the end of its requests: it stops its children and ends
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _read(self, timeout: float) -> None:
        stdout = self.process.stdout
        if self.gone or stdout is None:
            return
        if not select.select([stdout], [], [], timeout)[0]:
            return
        chunk = os.read(stdout.fileno(), 65536)
        if not chunk:
            self.gone = True
            return
        self._pending += chunk
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            self._take(json.loads(line))

    def _take(self, message: dict[str, Any]) -> None:
        if message.get("ready"):
            self.ready = True
        elif "exit" in message:
            self.exits[int(message["exit"])] = int(message["code"])
        elif "pid" in message:
            self.started.append(int(message["pid"]))


_lock = threading.Lock()
_trainer: WarmTrainer | None = None


def warm_trainer(model_dir: str) -> WarmTrainer:
    """This worker's warm trainer for `model_dir` and the thread budget, started (not yet ready) if need be."""
    global _trainer
    with _lock:
        wanted = (model_dir, settings.TRAINING_CPU_THREADS)
        if _trainer is not None and (not _trainer.alive() or _trainer.key != wanted):
            _trainer.stop()
            _trainer = None
        if _trainer is None:
            _trainer = WarmTrainer(model_dir)
        return _trainer


def warm_trainer_stop() -> None:
    global _trainer
    with _lock:
        if _trainer is not None:
            _trainer.stop()
            _trainer = None


def warm_start(arguments: list[str], log_path: Path) -> WarmChild | None:
    """The round's training process forked by this worker's warm trainer; None where rounds start cold (off here,
    or the warm trainer failed: it is stopped, and started again for the next round)."""
    if not warm_start_enabled() or "--config" not in arguments:
        return None
    try:
        config = json.loads(Path(arguments[arguments.index("--config") + 1]).read_text())
        trainer = warm_trainer(str(config["base_model_dir"]))
        if not trainer.wait_ready(settings.TRAINING_WARM_READY_SECONDS):
            raise WarmStartFailed(f"the warm trainer was not ready in {settings.TRAINING_WARM_READY_SECONDS} s")
        return trainer.start(arguments, log_path)
    except (ValueError, IndexError, KeyError, OSError, WarmStartFailed) as error:
        logger.warning("round starts cold: %s", error)
        warm_trainer_stop()
        return None
