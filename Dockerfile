# syntax=docker/dockerfile:1
# The Oracle's one image, in two flavours:
#   docker build .                  -> the API (default target `api`): `oracle serve` on :8000
#   docker build --target trainer . -> the retraining job: TensorFlow, `oracle train --watch`
# Builds happen in the `build*` stages; the runtime stages copy only the finished virtualenv,
# so no compiler, pip cache or source tree reaches them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the service's virtualenv ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY core ./core
COPY service ./service
COPY training ./training
COPY migrations ./migrations
COPY oracle ./oracle
RUN pip install --no-cache-dir .

# --- build-trainer: the same plus the `training` extra (TensorFlow, MiniSom, scikit-learn) ---
FROM build AS build-trainer
RUN pip install --no-cache-dir "/src[training]"

# --- runtime: what both flavours share -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
# A fixed, unprivileged uid, so volumes can be chowned to it from outside.
RUN groupadd --system --gid 10001 oracle \
    && useradd --system --no-log-init --uid 10001 --gid oracle --home-dir /app oracle \
    && mkdir -p /app/var \
    && chown -R oracle:oracle /app
WORKDIR /app

# --- trainer ---------------------------------------------------------------------------------
FROM runtime AS trainer
COPY --from=build-trainer /opt/venv /opt/venv
USER 10001:10001
# No HTTP here to probe; compose restarts it if it exits.
HEALTHCHECK NONE
CMD ["oracle", "train", "--watch"]

# --- api (the default target: last in the file) ----------------------------------------------
FROM runtime AS api
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8000
# Python, not curl: the slim image has no curl, and the probe must not add a package.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["oracle", "serve", "--host", "0.0.0.0", "--port", "8000"]
