# syntax=docker/dockerfile:1
# fastserve as a container entrypoint (see docs/workers.md).
#   docker build -t fastserve .
#   docker run --rm -p 8000:8000 fastserve                          # serves examples.hello:app
#   docker run --rm -p 8000:8000 -v "$PWD:/app" fastserve myapp:app --workers auto
# Settings come from the command line or FASTSERVE_* variables; set the port with
# FASTSERVE_PORT (not --port) so that the HEALTHCHECK below follows it.

ARG PYTHON_VERSION=3.12

# -- build: install fastserve and its runtime dependencies into a virtualenv -----------------
# A C compiler here only: the hot path is compiled with mypyc (setup.py); the runtime stage
# gets the built virtualenv and no compiler.
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/fastserve
COPY pyproject.toml setup.py README.md ./
COPY server/ server/
COPY tools/mypy/ tools/mypy/
RUN /opt/fastserve/bin/pip install --no-cache-dir ".[standard]" \
    && /opt/fastserve/bin/fastserve --version

# -- runtime: the virtualenv, the example app, an unprivileged user; no compilers, no pip cache
FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 fastserve \
    && useradd --system --uid 10001 --gid fastserve --no-create-home --home-dir /app fastserve
COPY --from=build /opt/fastserve /opt/fastserve
WORKDIR /app
COPY examples/ examples/
ENV PATH="/opt/fastserve/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FASTSERVE_HOST=0.0.0.0 \
    FASTSERVE_PORT=8000
# A numeric user, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
# fastserve runs as PID 1 here: it handles SIGTERM (graceful drain, then exit 0) and reaps
# orphaned processes itself, so no init wrapper is needed.
STOPSIGNAL SIGTERM
# Any HTTP answer below 500 means the server is up; standard library only.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client as h, os; c = h.HTTPConnection('127.0.0.1', int(os.environ.get('FASTSERVE_PORT', '8000')), timeout=4); c.request('GET', os.environ.get('HEALTHCHECK_PATH', '/')); raise SystemExit(c.getresponse().status >= 500)"]
ENTRYPOINT ["fastserve"]
CMD ["examples.hello:app"]
