# One image for every process of the service (see Procfile and docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
# Editable, so that `metering db upgrade` finds migrations/ beside the source, as in a checkout.
# The metrics folder exists in the image, owned by the service's user, so that a named volume
# mounted there (compose shares one between web and workers) starts writable.
RUN pip install --no-cache-dir -e . \
    && useradd --system --uid 1000 --home-dir /app metering \
    && install -d -o metering /var/lib/metering/metrics

USER metering
EXPOSE 8000 5555
CMD ["uvicorn", "metering.web:app", "--host", "0.0.0.0", "--port", "8000"]
