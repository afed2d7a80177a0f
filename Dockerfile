# One image for both programs: `python -m manager_bot` (default) or `python -m runtime`.
# Builder stage installs the dependencies into a virtualenv; the final stage has
# no compiler, no pip cache and runs as a non-root user with a read-only root FS.
FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY migrations ./migrations
COPY manager_bot ./manager_bot
COPY runtime ./runtime
# Dependencies only: the code itself is copied to /app below, beside migrations/.
# Bytecode is compiled here: at run time the filesystem is read-only, and without .pyc
# files every start would compile the dependencies again (seconds of the manager's start).
# The `tools` extra (the MCP client) is imported only by runtimes whose agent has tools.
RUN pip install --no-compile ".[tools]" && pip uninstall -y hatchbot \
    && python -m compileall -q -j 0 /opt/venv/lib

FROM python:3.11.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --create-home --home-dir /home/hatchbot hatchbot \
    && mkdir -p /app/data && chown 10001:10001 /app/data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Alembic's scripts live beside the packages, as in the repository.
COPY migrations ./migrations
COPY manager_bot ./manager_bot
COPY runtime ./runtime
RUN python -m compileall -q -j 0 /app/migrations /app/manager_bot /app/runtime
USER 10001:10001
EXPOSE 8080
# The manager writes only under /app/data (mount a volume); the runtime writes nothing.
VOLUME ["/app/data"]
ENTRYPOINT ["python", "-m"]
CMD ["manager_bot"]
