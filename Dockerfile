# syntax=docker/dockerfile:1
# fastserve as a container entrypoint (docs/container.md).
#   docker build -t fastserve .
#   docker run --rm -p 8000:8000 fastserve                          # serves examples.hello:app
#   docker run --rm -p 8000:8000 -v "$PWD:/app" fastserve myapp:app --workers auto
# podman/buildah: `podman build --format docker` (their default OCI format drops HEALTHCHECK).
# Settings: the command line, FASTSERVE_* or UVICORN_* variables, in that order of precedence.

# Any Debian-based image with python3 and python3-venv; it provides pip for derived images
# (tools/container/pip). CI builds on a Debian bookworm stand-in (.ci/image).
ARG BASE_IMAGE=python:3.12-slim

# -- build: fastserve and its runtime dependencies into a virtualenv -------------------------
# A C compiler here only: the hot path is compiled with mypyc (setup.py); the runtime stage
# gets the built virtualenv and no compiler.
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# gcc, and the Python headers where the base lacks them (python:*-slim has its own, in
# /usr/local/include; Debian's python3 needs python3-dev).
# hadolint ignore=DL3008,SC2086
RUN need=""; \
    command -v gcc >/dev/null || need="gcc libc6-dev"; \
    python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(sysconfig.get_path("include") + "/Python.h"))' \
        || need="$need python3-dev"; \
    if [ -n "$need" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $need \
        && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
# No pip or setuptools in the virtualenv (24 MB that serving never uses): the base image's pip
# installs into it with --python, as tools/container/pip does in derived images.
RUN python3 -m venv --without-pip /opt/fastserve
COPY pyproject.toml setup.py README.md ./
COPY server/ server/
COPY tools/mypy/ tools/mypy/
# watchfiles is only for --reload (development).
RUN python3 -m pip --python /opt/fastserve/bin/python install ".[standard]" \
    && python3 -m pip --python /opt/fastserve/bin/python uninstall -y watchfiles \
    && /opt/fastserve/bin/fastserve --version
COPY tools/container/entrypoint /opt/fastserve/bin/fastserve-entrypoint
COPY tools/container/pip /opt/fastserve/bin/pip

# -- runtime: the virtualenv, the example app, an unprivileged user; no compilers, no pip cache
FROM ${BASE_IMAGE}
# A regular (not --system) account: uid 10001 is above Debian's SYS_UID_MAX (999). -l: no
# lastlog/faillog entry, which would be a sparse file of uid x 292 bytes in the layer.
RUN groupadd --gid 10001 fastserve \
    && useradd --no-log-init --uid 10001 --gid fastserve --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin fastserve
COPY --from=build /opt/fastserve /opt/fastserve
WORKDIR /app
COPY examples/ examples/
# Image defaults that a user's FASTSERVE_* or UVICORN_* variable overrides (host 0.0.0.0, the
# example app, a graceful-shutdown timeout that fits `docker stop`'s 10 s) are set by the
# entrypoint, tools/container/entrypoint: set here, they would win over UVICORN_*.
ENV PATH="/opt/fastserve/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    FASTSERVE_LISTEN_FILE=/tmp/fastserve.listen
# A numeric user, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
# fastserve runs as PID 1 here (the entrypoint execs it): it handles SIGTERM (graceful drain,
# then exit 0) and reaps orphaned processes itself, so no init wrapper is needed.
STOPSIGNAL SIGTERM
# Asks the address, port and scheme the server wrote to $FASTSERVE_LISTEN_FILE: it follows
# --port, UVICORN_PORT and TLS. Any answer below 500 on $HEALTHCHECK_PATH (default /) is healthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "fastserve.healthcheck"]
ENTRYPOINT ["fastserve-entrypoint"]
