# One image, four roles: the targets `api`, `worker`, `init-db` and
# `mock-downstream` share every layer up to `runtime` and differ only in their
# command, exposed port and health check. See deploy/README.md.
#
#   docker build --target api -t courier-gateway-api .
#
# The builder and runtime stages must use the same Python image: the venv's
# interpreter symlink points at /usr/local/bin/python3.13.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.13-slim-trixie AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, from the lock file only, so code edits reuse this layer.
# --no-default-groups --no-dev: dev, embedded (mongoeco) and loadtest (Locust)
# are uv default groups and never belong in a production image.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --no-default-groups --no-install-project
COPY README.md ./
COPY shared ./shared
COPY gateway_api ./gateway_api
COPY gateway_worker ./gateway_worker
COPY scripts ./scripts
# --no-editable installs the project into site-packages: /src is not copied on.
RUN uv sync --locked --no-dev --no-default-groups --no-editable

FROM python:3.13-slim-trixie AS runtime
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_LOG_FORMAT=json
WORKDIR /app
# Numeric, so runtimes enforcing runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
ENTRYPOINT ["gateway"]
CMD ["--help"]

FROM runtime AS api
# The settings default to 127.0.0.1, which nothing outside the container reaches.
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000
EXPOSE 8000
# Liveness, not readiness: the API keeps accepting events while MongoDB is down
# (only workers touch it), so a Mongo outage must not mark it unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('GATEWAY_PORT', '8000'), timeout=2)"]
CMD ["api"]

FROM runtime AS worker
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["gateway", "worker-health"]
CMD ["worker"]

FROM runtime AS init-db
# A one-shot job: it exits when the indexes exist, so there is nothing to probe.
HEALTHCHECK NONE
CMD ["init-db"]

FROM runtime AS mock-downstream
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/health', timeout=2)"]
CMD ["mock-downstream", "--host", "0.0.0.0", "--port", "9000"]
