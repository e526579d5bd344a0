"""`python -m training warm`: rounds forked from a process that imported and loaded once train exactly what a fresh
process trains, whatever ran before them, and die with the server (SIGKILL included) or when their starter goes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from tests.training.samples import tiny_round_config

REPO = Path(__file__).resolve().parents[2]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Server:
    def __init__(self, model_dir: Path) -> None:
        command = [sys.executable, "-m", "training", "warm", "--model", str(model_dir)]
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        self.process = subprocess.Popen(command, cwd=REPO, env=ONE_THREAD, **pipes)  # type: ignore[call-overload]
        assert self.read() == {"ready": True}

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the server ended (exit {self.process.wait()})"
        return dict(json.loads(line))

    def start(self, argv: list[str], log: Path) -> int:
        assert self.process.stdin is not None
        request = {"argv": argv, "log": str(log), "cwd": str(REPO), "threads": 1}
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        return int(self.read()["pid"])

    def run(self, argv: list[str], log: Path) -> int:
        pid = self.start(argv, log)
        reply = self.read()
        assert reply["exit"] == pid, reply
        return int(reply["code"])


def round_argv(directory: Path, model_dir: Path, pairs: Path, **overrides: object) -> list[str]:
    directory.mkdir(parents=True)
    config = tiny_round_config(model_dir, directory / "out", **overrides)
    (directory / "config.json").write_text(config.to_json())
    argv = ["round", "--config", str(directory / "config.json"), "--data", str(pairs), "--heldout", str(pairs)]
    return [*argv, "--evaluation-output", str(directory / "evaluation.json")]


def adapter(directory: Path) -> dict[str, Any]:
    return load_file(directory / "out" / "adapter" / "adapter_model.safetensors")


def report(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / "evaluation.json").read_text()))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie nobody reaped (PID 1 of a container may not) is gone too


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def test_a_forked_round_trains_what_a_fresh_process_trains_whatever_ran_before(
    tiny_model_dir: Path, tiny_pairs_path: Path, tmp_path: Path
) -> None:
    server = Server(tiny_model_dir)
    try:
        first, other, again = (tmp_path / name for name in ("first", "other", "again"))
        assert server.run(round_argv(first, tiny_model_dir, tiny_pairs_path), tmp_path / "first.log") == 0
        # Another round in between, with other settings: were anything left in the server, `again` would differ
        other_argv = round_argv(other, tiny_model_dir, tiny_pairs_path, learning_rate=1e-2, seed=7)
        assert server.run(other_argv, tmp_path / "other.log") == 0
        assert server.run(round_argv(again, tiny_model_dir, tiny_pairs_path), tmp_path / "again.log") == 0
    finally:
        server.process.stdin.close()  # type: ignore[union-attr]
        assert server.process.wait(timeout=30) == 0  # its starter went: it ends
    fresh = tmp_path / "fresh"
    command = [sys.executable, "-m", "training", *round_argv(fresh, tiny_model_dir, tiny_pairs_path)]
    subprocess.run(command, cwd=REPO, env=ONE_THREAD, check=True, capture_output=True)

    for forked in (first, other, again):
        assert report(forked)["warm_start"] == {"forked": True, "preloaded_model": True}
    assert report(fresh)["warm_start"] == {"forked": False, "preloaded_model": False}
    expected = adapter(fresh)
    for forked in (first, again):
        weights = adapter(forked)
        assert weights.keys() == expected.keys()
        assert all(weights[name].equal(expected[name]) for name in expected)  # bit for bit
        assert report(forked)["models"] == report(fresh)["models"]
    assert any(not adapter(other)[name].equal(expected[name]) for name in expected)  # the settings did matter


def test_a_command_that_fails_reports_its_exit_and_the_server_goes_on(
    tiny_model_dir: Path, tiny_pairs_path: Path, tmp_path: Path
) -> None:
    server = Server(tiny_model_dir)
    try:
        missing = ["round", "--config", str(tmp_path / "none.json"), "--data", str(tiny_pairs_path)]
        missing += ["--heldout", str(tiny_pairs_path), "--evaluation-output", str(tmp_path / "e.json")]
        assert server.run(missing, tmp_path / "bad.log") == 2
        assert "config file" in (tmp_path / "bad.log").read_text()
        assert server.run(["no-such-command"], tmp_path / "usage.log") == 2  # argparse's own exit
        argv = round_argv(tmp_path / "good", tiny_model_dir, tiny_pairs_path)
        assert server.run(argv, tmp_path / "good.log") == 0
    finally:
        server.process.kill()
        server.process.wait()


@pytest.mark.parametrize("how", ["SIGKILL", "stdin closed"])
def test_a_round_dies_with_its_server(tiny_model_dir: Path, tiny_pairs_path: Path, tmp_path: Path, how: str) -> None:
    server = Server(tiny_model_dir)
    argv = round_argv(tmp_path / "long", tiny_model_dir, tiny_pairs_path, max_steps=100_000)
    pid = server.start(argv, tmp_path / "long.log")
    metrics = tmp_path / "long" / "out" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(pid) and metrics.read_text(), "the round never started training"
    if how == "SIGKILL":
        server.process.send_signal(signal.SIGKILL)
    else:
        server.process.stdin.close()  # type: ignore[union-attr]
    server.process.wait(timeout=30)
    assert gone_within(pid, 30)
