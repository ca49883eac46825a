# furnace-sentinel service image: the `serve` extra only (ONNX Runtime, FastAPI, Redis client,
# Prometheus client, Pillow) and never torch. The same image runs the simulator feed
# (`furnace replay`). Build and run through docker-compose.yml: docs/deploy.md.
#
# BASE_IMAGE: any Debian-like image with python3 >= 3.11 and venv, or without Python at all
# (then python3 and python3-venv come from its apt sources). Where no registry is reachable,
# deploy/airgap/base-image.sh imports a debootstrapped Debian as furnace-sentinel/debian:bookworm
# (docs/deploy.md, "Air-gapped build").
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# A plant's own package index (devpi, Artifactory...): --build-arg PIP_INDEX_URL=...; only the
# build sees it. The lock's hashes still have to match.
ARG PIP_INDEX_URL

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python from the distribution when the base has none (the Debian base of the air-gapped build).
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

WORKDIR /app

# Dependencies first, from the lock alone (deploy/requirements-serve.txt: every package pinned
# with its hashes, `make image-lock` regenerates it), so a code change does not reinstall them
# and a fresh build installs exactly what was tested.
COPY deploy/requirements-serve.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Only what the service, the CLI and the replay feed import; model/ and training/ stay out.
COPY pyproject.toml README.md ./
COPY furnace/ furnace/
COPY simulator/ simulator/
COPY service/ service/
COPY models/ models/
# A regular (not editable) install of the project alone: --no-index, so pip downloads nothing
# and fails the build if the lock misses one of the serve extra's requirements (setuptools
# comes from the lock too: --no-build-isolation); `pip check` then checks the whole
# environment. The sources go once
# installed, the bundles stay in /app/models, which FURNACE_MODELS_DIR points at (compose
# mounts the host's models/ over it). The last command fails the build if anything pulled torch in.
RUN pip install --no-index --no-build-isolation '.[serve]' \
    && pip check \
    && rm -rf build ./*.egg-info furnace simulator service \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin sentinel
USER sentinel

EXPOSE 8000

# /readyz: bundle verified and warm, Redis answers, shard lease held, reader alive (503 if not,
# which makes urlopen raise). The slim image has no curl; the stdlib does it. Containers that
# run something else (the replay feed) override it (docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# One uvicorn worker per container (docs/design/serving.md 4.2); SIGTERM drains (docs/design/serving.md 5.4).
# Settings come from FURNACE_* variables (docs/configuration.md); compose adds the rest.
# TQDM_DISABLE: no progress bars in container logs (`furnace replay` draws one; unset it for a
# bar on an interactive `docker run -it`).
ENV FURNACE_HOST=0.0.0.0 \
    FURNACE_PORT=8000 \
    FURNACE_MODELS_DIR=/app/models \
    TQDM_DISABLE=1
STOPSIGNAL SIGTERM
CMD ["furnace", "serve"]
