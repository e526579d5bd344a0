"""Settings for the test suite: the project's own settings, read after a few variables are set for isolation."""

import os
import socket
import tempfile
import uuid


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


os.environ.setdefault("SECRET_KEY", "tests-only-secret-key")
# Every test run has its own queue (and, with the file broker, its own broker file), so a `make run` on the same
# machine never takes the tests' tasks, nor the tests its tasks. Subprocesses (worker, vLLM) inherit all of this.
os.environ["CELERY_TASK_DEFAULT_QUEUE"] = f"pairloop-test-{uuid.uuid4().hex[:8]}"
if not os.environ.get("CELERY_BROKER_URL"):
    os.environ["CELERY_BROKER_URL"] = f"sqla+sqlite:///{tempfile.mkdtemp(prefix='pairloop-broker-')}/broker.sqlite3"
os.environ["CELERY_TRAINING_QUEUE"] = os.environ["CELERY_TASK_DEFAULT_QUEUE"] + "-training"
os.environ.setdefault("VLLM_PORT", str(_free_port()))
os.environ.setdefault("ROUND_DIR", tempfile.mkdtemp(prefix="pairloop-rounds-"))
os.environ.setdefault("ADAPTER_STORE_DIR", tempfile.mkdtemp(prefix="pairloop-adapters-"))
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop in-thread

from annotate.settings import *  # noqa: E402, F403

VAR_DIR.mkdir(parents=True, exist_ok=True)  # noqa: F405 (a fresh clone has no var/ yet; the test database lives there)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins; tests only
# Static files come straight from static/ (no collectstatic before tests).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
