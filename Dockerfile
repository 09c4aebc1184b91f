# syntax=docker/dockerfile:1
#
# One image for every gpuplace process: `gpuplace scheduler`, `gpuplace agent` (the sidecar
# that `gpuplace render` adds to server pods) and the CLI.
#
#   docker build -t gpuplace:0.1.0 .
#   docker run --rm -p 9004:9004 -p 9005:9005 -p 9999:9999 gpuplace:0.1.0   # the scheduler
#
# Stage 1 builds wheels for gpuplace and all its dependencies; stage 2 installs them, offline,
# into a virtual environment on a slim Python with no compiler, no pip and no setuptools.
# NVML (libnvidia-ml.so.1) is not in the image: the NVIDIA container runtime mounts it into a
# container that is given GPUs (see docs/deploy.md).
# Needs BuildKit (the default builder of Docker 23+) for the bind mount in stage 2.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY placement/ placement/
COPY contract/ contract/
COPY scheduler_service/ scheduler_service/
COPY agent/ agent/
COPY gpuplace/ gpuplace/

# Every dependency ships binary wheels for CPython 3.11 on x86-64 and arm64 (grpcio,
# protobuf, pydantic-core, aiohttp, ...), so no compiler is needed even here.
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels . \
    && ls /wheels/gpuplace-*.whl

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="gpuplace" \
      org.opencontainers.image.description="GPU-aware model placement: scheduler, agent sidecar and CLI" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"

ENV VIRTUAL_ENV=/opt/gpuplace \
    PATH=/opt/gpuplace/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=utility

# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 gpuplace \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/gpuplace --shell /usr/sbin/nologin gpuplace \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/gpuplace

# Install from the wheels of stage 1 only (--no-index), then drop pip and setuptools from the
# environment: nothing at run time installs or builds anything.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv "$VIRTUAL_ENV" \
    && "$VIRTUAL_ENV/bin/pip" install --no-cache-dir --no-index --find-links=/wheels /wheels/gpuplace-*.whl \
    && "$VIRTUAL_ENV/bin/pip" uninstall --yes pip setuptools \
    && gpuplace --help > /dev/null

# The scheduler's state file lives here (the Helm chart mounts its volume on this folder).
WORKDIR /var/lib/gpuplace
USER 10001:10001

# scheduler: 9004 client API (gRPC), 9005 agent API (gRPC), 9999 HTTP /live /ready /metrics
# agent:     9006 /metrics, 9008 /ready /live
EXPOSE 9004 9005 9999 9006 9008

# No HEALTHCHECK: one image runs two different processes (and one-off CLI commands), so no
# single check fits; Kubernetes ignores HEALTHCHECK anyway and uses the probes of the chart
# (scheduler: :9999/live, /ready) and of `gpuplace render` (agent: :9008/live, /ready).

ENTRYPOINT ["gpuplace"]
CMD ["scheduler"]
