# rangefetch: one image for the workers and the producer (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY rangefetch ./rangefetch
COPY producer ./producer
COPY worker ./worker
RUN pip install . && rm -rf /src

# An unprivileged user owns the download directory; a named volume mounted
# there starts with this ownership.  The working directory is its home, not
# the download directory, so no downloaded file is ever read as a .env file.
RUN useradd --create-home --uid 1000 rangefetch \
    && mkdir -p /downloads \
    && chown rangefetch:rangefetch /downloads
USER rangefetch
WORKDIR /home/rangefetch
ENV RANGEFETCH_DOWNLOAD_DIR=/downloads

ENTRYPOINT ["rangefetch"]
CMD ["--help"]
