FROM python:3.12-slim

# ffmpeg gives ffprobe (metadata); dumb-init forwards SIGTERM so shutdown is clean.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg dumb-init \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamup ./streamup
RUN pip install --no-cache-dir .

RUN useradd --create-home --uid 10001 streamup \
    && mkdir -p /data/watch /data/state \
    && chown -R streamup:streamup /data
USER streamup

ENV WATCH_DIR=/data/watch \
    STATE_DIR=/data/state \
    PROM_HOST=0.0.0.0 \
    PROM_PORT=8000
EXPOSE 8000
VOLUME ["/data/state"]

# The image has python but no curl: the health check asks /healthz with python itself.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["dumb-init", "--"]
CMD ["streamup", "run"]
