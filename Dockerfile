# The image for the study creator, the workers and the dashboard (see docker-compose.yml).
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tuning ./tuning
RUN pip install --no-cache-dir ".[postgres]"
CMD ["tuning", "--help"]
