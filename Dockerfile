# The bridge as a container image: dependencies from the lock file in a build stage, then a slim
# runtime holding only the virtual environment, run as an unprivileged user.
#
#   docker build -t bridge .
#   docker run --rm -e BRIDGE_AMQP__URL=amqp://user:pass@rabbitmq:5672/ \
#     -v "$PWD/my-bridge.toml:/app/bridge.toml:ro" -p 8080:8080 bridge
#
# The image's /app/bridge.toml is the demo configuration (it polls the fake provider); mount
# your own over it, or pass `run --config /path/to/file.toml`.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# uv comes from PyPI (no other download); pinned for reproducible builds.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
# Build where the runtime will live: a venv's entry scripts carry its absolute path.
WORKDIR /app
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
# Dependencies first (a layer that survives source edits), then the project itself.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY bridge ./bridge
COPY fakeprovider ./fakeprovider
RUN uv sync --frozen --no-dev --no-editable

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home bridge
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY bridge.toml /app/bridge.toml
COPY examples /app/examples
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_HTTP__LISTEN=0.0.0.0:8080
# Numeric uid so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
# Slim images have no curl: ask /healthz with the Python that is already there. The port is
# the default of http.listen; change both together.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
# SIGTERM = graceful stop: stop accepting, finish the notification in hand, drain confirms, exit 0.
STOPSIGNAL SIGTERM
# By absolute path: `bridge` is also iproute2's /sbin/bridge, should a derived image add it.
ENTRYPOINT ["/app/.venv/bin/bridge"]
CMD ["run", "--config", "/app/bridge.toml", "--log-format", "json"]
