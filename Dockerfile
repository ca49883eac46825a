# furnace-sentinel service image: the `serve` extra only (ONNX Runtime, FastAPI, Redis client,
# Prometheus client, Pillow) and never torch. The same image runs the simulator feed
# (`furnace replay`). Build and run through docker-compose.yml: docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first, read from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve']))" > /tmp/serve.txt \
    && pip install -r /tmp/serve.txt \
    && rm /tmp/serve.txt

# Only what the service, the CLI and the replay feed import; model/ and training/ stay out.
COPY furnace/ furnace/
COPY simulator/ simulator/
COPY service/ service/
COPY models/ models/
# A regular (not editable) install; the sources go once installed, the bundles stay in
# /app/models, which FURNACE_MODELS_DIR points at. The last command fails the build if
# anything pulled torch in.
RUN pip install '.[serve]' \
    && rm -rf build ./*.egg-info furnace simulator service \
    && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin sentinel
USER sentinel

EXPOSE 8000

# /readyz: bundle verified and warm, Redis answers, shard lease held, reader alive (503 if not,
# which makes urlopen raise). The slim image has no curl; the stdlib does it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# One uvicorn worker per container (docs/design/serving.md 4.2); SIGTERM drains (docs/design/serving.md 5.4).
# Settings come from FURNACE_* variables (docs/configuration.md); compose adds the rest.
ENV FURNACE_HOST=0.0.0.0 \
    FURNACE_PORT=8000 \
    FURNACE_MODELS_DIR=/app/models
STOPSIGNAL SIGTERM
CMD ["furnace", "serve"]
