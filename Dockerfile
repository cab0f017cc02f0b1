FROM python:3.12-slim

# ffmpeg gives ffprobe (metadata); dumb-init forwards SIGTERM so shutdown is clean.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg dumb-init \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The agent's dependencies exactly as pinned and hashed in the lock (the versions the tests ran;
# no moto, no test tools), then streamup itself without resolving anything again.
COPY requirements-runtime.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY streamup ./streamup
RUN pip install --no-cache-dir --no-deps . && pip check

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

# The image has python but no curl: the health check asks /healthz with python itself (a 503
# raises, so the check fails), on whatever PROM_PORT the container was given.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROM_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["dumb-init", "--"]
CMD ["streamup", "run"]
