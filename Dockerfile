# One image for every marketbus service; the service is chosen by the command, e.g.
#   docker run marketbus python -m services.ingest_finx
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock requirements-nodeps.txt pyproject.toml ./
RUN pip install --no-cache-dir uv==0.13.8 \
 && uv pip install --system --no-cache -r requirements.lock
COPY shared ./shared
COPY services ./services
RUN uv pip install --system --no-cache --no-deps -e .
# uid 1000: the owner of the 0600 secret files (deploy/secrets) docker compose mounts
RUN useradd --create-home --uid 1000 marketbus && mkdir -p /data && chown marketbus /data
USER marketbus
ENV MARKETBUS_DATA_DIR=/data
CMD ["marketbus", "--help"]
