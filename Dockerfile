# syntax=docker/dockerfile:1
# Image for the edge anomaly agent (and the sensor simulator, same image).
#
# Multi-platform build (x86 servers and Raspberry Pi 4/5 running a 64-bit OS):
#   docker buildx create --use   # once, a builder that can do multi-platform
#   docker buildx build --platform linux/amd64,linux/arm64 \
#       -t registry.example.com/edge-anomaly-agent:0.1.0 --push .
# Single platform, loaded into the local engine:
#   docker buildx build --platform linux/arm64 -t edge-anomaly-agent:local --load .
#
# No compiler is installed anywhere: every dependency (numpy, pyyaml,
# paho-mqtt, prometheus-client) ships wheels for both platforms, and the build
# is forced to use them (--only-binary) so a missing wheel fails loudly instead
# of silently pulling in a toolchain.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY edge_agent/ ./edge_agent/
COPY simulator/ ./simulator/

# The project itself is pure Python: build its wheel, then install it with its
# runtime dependencies (no scikit-learn: scoring is plain numpy) and nats-py (for the group on
# NATS JetStream, pure Python) into a venv
# that the runtime stage copies as a whole.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --only-binary=:all: "$(ls /wheels/*.whl)[nats]"

# -------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="edge-anomaly-agent" \
      org.opencontainers.image.description="MQTT edge agent scoring sensor readings with an Isolation Forest" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed uid/gid so volume ownership and runAsNonRoot policies are predictable
# across rebuilds and hosts. The state dir is the only place the agent writes.
RUN groupadd --system --gid 10001 edge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/edge-agent

COPY --from=build /opt/venv /opt/venv

# Configuration and shipped models stay root-owned: the agent can read but not
# alter them (models are verified by sha256 at load).
WORKDIR /app
COPY config.yaml ./config.yaml
COPY models/ ./models/

USER 10001:10001
VOLUME ["/var/lib/edge-agent"]
EXPOSE 8000

# Slim images have no curl; python's urllib does the probe. urlopen raises on
# any non-2xx answer or connection error, which makes the check fail.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3).status == 200 else 1)"]

# Exec form: the agent is PID 1 and receives SIGTERM itself, so it can finish
# the readings in hand (pipeline.shutdown_timeout) before exiting. The config's
# state_dir is relative to it (/app/state, read-only here): learned models go to
# the state volume instead, or they would never be saved.
ENTRYPOINT ["edge-agent"]
CMD ["run", "--config", "/app/config.yaml", "--set", "learning.state_dir=/var/lib/edge-agent"]
