# trainmon's one image: the stream processors, the dashboard, the node agent and the one-off admin
# commands (`trainmon topics create`, `trainmon db migrate`) all run from it; the caller picks the
# sub-command (docker-compose.yml, Kubernetes). See docs/docker.md.
#
#   docker build -t trainmon:0.1.0 .
#   docker run --rm trainmon:0.1.0 config        # the settings it runs with (TRAINMON_* variables)
#
# No HEALTHCHECK: what "healthy" means differs per sub-command, so compose and Kubernetes probe.

# Both stages use the same base, so the venv's interpreter link (/usr/local/bin/python3.11) is valid in
# the runtime stage. Debian 12 (bookworm), the release trainmon is developed and tested on.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Must equal [project] version in pyproject.toml (tests/unit/test_dockerfile.py checks): it names the
# wheel the builder installs, so a mismatch fails the build instead of labelling the image wrongly.
ARG VERSION=0.1.0

FROM ${PYTHON_IMAGE} AS builder
ARG VERSION
WORKDIR /src
# Only what the wheel is built from; .dockerignore keeps everything else (and local secrets) out.
COPY pyproject.toml README.md ./
COPY trainmon/ trainmon/
COPY agent/ agent/
COPY stream_processors/ stream_processors/
COPY dashboard/ dashboard/
COPY deploy/ deploy/
# Every dependency of trainmon[server] ships manylinux wheels for CPython 3.11, so no compiler is needed.
RUN python -m venv /opt/trainmon \
 && /opt/trainmon/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
 && /opt/trainmon/bin/pip install --no-cache-dir "/tmp/wheels/trainmon-${VERSION}-py3-none-any.whl[server]"

FROM ${PYTHON_IMAGE}
ARG VERSION
LABEL org.opencontainers.image.title="trainmon" \
      org.opencontainers.image.description="Watch model training on GPU clusters: agents -> Kafka -> Faust -> ClickHouse -> Streamlit" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed UID/GID, so volume ownership, Kubernetes' runAsUser/fsGroup and host directories can name it.
RUN groupadd --system --gid 10001 trainmon \
 && useradd --system --no-log-init --uid 10001 --gid trainmon --home-dir /var/lib/trainmon --create-home \
      --shell /usr/sbin/nologin trainmon
# Owned by root: the running service cannot modify its own code.
COPY --from=builder /opt/trainmon /opt/trainmon
# HOME and the services home are set explicitly: under an arbitrary UID (OpenShift, runAsUser) there is
# no passwd entry to take them from. The processors keep their state under the services home.
ENV PATH=/opt/trainmon/bin:$PATH \
    HOME=/var/lib/trainmon \
    TRAINMON_SERVICES_HOME=/var/lib/trainmon \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/trainmon
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# The dashboard (`trainmon dashboard --address 0.0.0.0`); the other sub-commands listen on nothing.
EXPOSE 8501
ENTRYPOINT ["trainmon"]
CMD ["--help"]
