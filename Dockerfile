# One image for every marketbus service; the service is chosen by the command, e.g.
#   docker run marketbus python -m services.ingest_finx
# Two stages: the build stage installs the pinned runtime dependencies (requirements.lock: no test
# or dev packages) and the project into a virtualenv; the runtime stage copies only that venv.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
# a C compiler for the contract checks' extension (setup.py); the runtime stage gets only the built venv
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv==0.13.8 && uv venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN uv pip install --python /opt/venv/bin/python --no-cache -r requirements.lock
COPY pyproject.toml setup.py ./
COPY shared ./shared
COPY services ./services
RUN uv pip install --python /opt/venv/bin/python --no-cache --no-deps .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 MARKETBUS_DATA_DIR=/data
ENV PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
# uid 1000: the owner of the 0600 secret files (deploy/secrets) docker compose mounts
RUN useradd --create-home --uid 1000 marketbus && mkdir -p /data /app && chown marketbus /data
WORKDIR /app
# the example consumers (docs/consumers.md): `faststream run examples.vwap_bars:app` from /app
COPY examples ./examples
USER marketbus
CMD ["marketbus", "--help"]
