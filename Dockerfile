# One image for the three services (python -m services.<name>) and the Locust load generator.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY chaosbed ./chaosbed
COPY rundir ./rundir
COPY services ./services
COPY loadtests ./loadtests
COPY faults ./faults
COPY slos ./slos
COPY dashboards ./dashboards
RUN pip install .

RUN useradd --create-home --uid 10001 chaosbed && mkdir -p /data && chown chaosbed /data
USER chaosbed
VOLUME ["/data"]

# services listen on CHAOSBED_HOST:CHAOSBED_PORT; docker-compose.yml sets both
HEALTHCHECK --interval=5s --timeout=2s --retries=10 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CHAOSBED_PORT', '8000') + '/healthz', timeout=2)" || exit 1
CMD ["python", "-m", "services.order"]
