# syntax=docker/dockerfile:1
# stream-meta daemon image: CPU-only PyTorch, non-root, read-only-root friendly.
#   docker build -t stream-meta:local .
#   docker run --rm -p 9108:9108 -e STREAM_META_BOOTSTRAP=kafka:9092 stream-meta:local run --topic t
# The entrypoint is `stream-meta` (under tini): `docker run IMAGE produce ...`, `... status ...` work too.

ARG PYTHON_VERSION=3.11

# --- build: a virtual environment with CPU torch and the package ---------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU wheels first (no CUDA libraries): the package's own torch range is then already met.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4,<2.15"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream_meta ./stream_meta
COPY connectors ./connectors
# The daemon only by default; EXTRAS=[data] adds the built-in data sets (the compose producer).
ARG EXTRAS=""
RUN pip install ".${EXTRAS}" && python -c "import stream_meta.daemon.app, connectors.kafka, torch; print('torch', torch.__version__)"

# --- runtime: the venv only, as an unprivileged user ---------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ARG UID=10001
# tini as PID 1: the kernel drops SIGTERM to a PID 1 without a handler, and the daemon installs
# its handler only once torch is imported, the checkpoint restored and the broker reached;
# before that `docker stop` / a pod deletion waited out the whole grace period for SIGKILL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid ${UID} stream-meta \
 && useradd --system --uid ${UID} --gid ${UID} --no-create-home --home-dir /tmp --shell /usr/sbin/nologin stream-meta \
 && mkdir -p /var/lib/stream-meta \
 && chown ${UID}:${UID} /var/lib/stream-meta \
 && chmod 0700 /var/lib/stream-meta
COPY --from=build /opt/venv /opt/venv
# Writable places are only /var/lib/stream-meta (checkpoints, a volume) and /tmp (a tmpfs
# under a read-only root filesystem). The HTTP endpoints listen on all interfaces in a
# container; the port is STREAM_META_METRICS_PORT (the healthcheck reads it too).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    STREAM_META_METRICS_HOST=0.0.0.0 \
    STREAM_META_METRICS_PORT=9108 \
    STREAM_META_CHECKPOINT_DIR=/var/lib/stream-meta
VOLUME ["/var/lib/stream-meta"]
USER ${UID}:${UID}
WORKDIR /tmp
EXPOSE 9108
# start-period: importing torch, restoring a checkpoint and up to --connect-timeout-s (60 s by
# default) of waiting for the broker.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAM_META_METRICS_PORT', '9108'), timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "stream-meta"]
CMD ["run"]
