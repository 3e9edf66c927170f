# Two commands: `make run` (set up, start the page on the embedded CPU engine) and `make test`.
SHELL := /bin/sh
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: install run serve test lint bench clean

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
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/latency.py --local

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
