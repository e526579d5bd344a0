"""A newcomer's shell: after `make run`, a plain `.venv/bin/python manage.py ...` works without exporting anything."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
PRINT_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(*arguments, var_dir, **env):
    """manage.py in a fresh process, with only what a new shell has (no SECRET_KEY unless given)."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PAIRLOOP_VAR_DIR": str(var_dir),
             "LOG_LEVEL": "WARNING", **env},
    )  # fmt: skip


def test_the_key_make_run_generated_serves_a_plain_manage_py(tmp_path):
    (tmp_path / "secret-key").write_text("key-written-by-make-run\n")
    result = manage("shell", "--no-imports", "-c", PRINT_KEY, var_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "key-written-by-make-run"


def test_the_environment_wins_over_the_file(tmp_path):
    (tmp_path / "secret-key").write_text("key-written-by-make-run\n")
    result = manage("shell", "--no-imports", "-c", PRINT_KEY, var_dir=tmp_path, SECRET_KEY="key-from-the-environment")
    assert result.stdout.strip() == "key-from-the-environment"


def test_without_the_variable_or_the_file_it_refuses_and_generates_nothing(tmp_path):
    result = manage("check", var_dir=tmp_path)
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr
    assert "make run" in result.stderr
    assert not (tmp_path / "secret-key").exists()


@pytest.mark.slow
def test_readme_commands_run_with_the_projects_python(tmp_path):
    """The README's commands, as written after activating .venv, in a shell that has only the key file."""
    (tmp_path / "secret-key").write_text("key-written-by-make-run\n")
    assert manage("migrate", "--noinput", var_dir=tmp_path).returncode == 0
    manage("createcachetable", var_dir=tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a colour."}\n')
    imported = manage("import_prompts", str(prompts), "--set", "mine", var_dir=tmp_path)
    assert imported.returncode == 0 and "1 prompts imported into set 'mine'" in imported.stdout, imported.stderr
    created = manage(
        "shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('newcomer')",
        var_dir=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    token = manage("drf_create_token", "newcomer", var_dir=tmp_path)
    assert token.returncode == 0 and "Generated token" in token.stdout, token.stderr
    exported = manage("export_preferences", "--format", "trl-preference", var_dir=tmp_path,
                      EXPORT_DIR=str(tmp_path / "exports"))  # fmt: skip
    assert exported.returncode == 0 and "0 rows" in exported.stdout, exported.stderr
    round_refused = manage("start_round", var_dir=tmp_path)
    # A clear refusal (nothing to train on yet), not a settings error.
    assert round_refused.stderr.startswith("CommandError: ") and "SECRET_KEY" not in round_refused.stderr


def _group_alive(pgid: int) -> bool:
    """A process of the group still running (a zombie waiting for its reaper is gone for good)."""
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except ProcessLookupError:
            continue
    return False


@pytest.mark.slow
def test_make_run_stops_on_ctrl_c_with_every_process_it_started(tmp_path):
    """Ctrl-C reaches the terminal's whole foreground group, `tee` included. A `tee` that died at once took honcho's
    output with it: honcho's "SIGINT received" hit a broken pipe, it never stopped its processes (each in a session of
    its own) and `make run` hung with the web server and the workers still running."""
    port = _free_port()
    env = {
        **os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}", "PORT": str(port),
        "VLLM_BASE_URL": "http://127.0.0.1:9",  # no model server: this test is about the processes around it
        "CELERY_TASK_DEFAULT_QUEUE": f"ctrl-c-{os.getpid()}", "CELERY_TRAINING_QUEUE": f"ctrl-c-{os.getpid()}-training",
    }  # fmt: skip
    log = tmp_path / "make-run.log"
    with log.open("wb") as output:
        run = subprocess.Popen(["make", "run"], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    started: list[int] = []
    try:
        deadline = time.monotonic() + 300
        while len(started) < 5 and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.5)
            started = [int(pid) for pid in re.findall(r"started \(pid=(\d+)\)", log.read_text(errors="replace"))]
        assert len(started) == 5  # web, worker, trainer, webhooks, beat, log.read_text(errors="replace")[-3000:]
        time.sleep(3)  # the processes under way, as when someone presses Ctrl-C
        os.killpg(run.pid, signal.SIGINT)
        run.wait(timeout=60)  # honcho stops them with SIGTERM, and SIGKILL after 5 s
        assert not [pid for pid in started if _group_alive(pid)]
        assert "SIGINT received" in log.read_text(errors="replace")
    finally:
        for pgid in [run.pid, *started]:
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
