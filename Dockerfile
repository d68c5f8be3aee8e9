# One image for every process of the service (see Procfile and docker-compose.yml).
# The build stage turns the source into a wheel (and wheels of its dependencies); the runtime
# stage installs only those, so the image runs exactly the built package, as a non-root user.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The metrics folder exists in the image, owned by the service's user, so that a named volume
# mounted there (compose shares one between web and workers) starts writable.
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels metering \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 1000 --create-home --home-dir /home/metering metering \
    && install -d -o metering /var/lib/metering/metrics
USER metering
WORKDIR /home/metering
EXPOSE 8000 5555
CMD ["uvicorn", "metering.web:app", "--host", "0.0.0.0", "--port", "8000"]
