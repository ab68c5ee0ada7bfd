# Multi-stage build: dependencies from the lock file, then a slim non-root runtime.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY bridge ./bridge
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app bridge
WORKDIR /app
COPY --from=build /src/.venv /app/.venv
COPY bridge.toml /app/bridge.toml
ENV PATH="/app/.venv/bin:$PATH" PYTHONUNBUFFERED=1
USER bridge
EXPOSE 8080
ENTRYPOINT ["bridge"]
CMD ["run", "--config", "/app/bridge.toml", "--log-format", "json"]
