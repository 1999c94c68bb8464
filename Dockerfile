# rangefetch: one image for the workers and the producer (see docker-compose.yml).
#
#   docker compose build                     # on python:3.11-slim, dependencies from PyPI
#
# A build that reaches no package index installs wheels built beforehand,
# by the Python the image runs (the same x.y.z: environment markers differ
# between point releases), from a folder in the build context:
#
#   python3 -m pip wheel . -w wheelhouse
#   docker compose build --build-arg WHEELHOUSE=wheelhouse
#
# BASE may be any image with python3 >= 3.11 and its venv module
# (--build-arg BASE=...): tests/test_compose.py, which reaches no image
# registry, builds on a Debian rootfs made with debootstrap that way.
ARG BASE=python:3.11-slim
FROM ${BASE}

# A folder of wheels inside the build context, rangefetch's and all its
# dependencies'; empty: rangefetch is built from the copied source.
ARG WHEELHOUSE=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/rangefetch/bin:$PATH \
    RANGEFETCH_DOWNLOAD_DIR=/downloads

# A virtualenv, so the same steps work on python:3.11-slim and on a distro
# Python that refuses `pip install` into itself (PEP 668).  .dockerignore
# keeps the tests, the benchmarks and local state out of /src.
#
# An unprivileged user owns the download directory; a named volume mounted
# there starts with this ownership.  The working directory is its home, not
# the download directory, so no downloaded file is ever read as a .env file.
COPY . /src
RUN python3 -m venv /opt/rangefetch \
    && if [ -n "$WHEELHOUSE" ]; then \
           pip install --no-index --find-links "/src/$WHEELHOUSE" rangefetch; \
       else \
           pip install /src; \
       fi \
    && rm -rf /src \
    && rangefetch --help >/dev/null \
    && useradd --create-home --uid 1000 rangefetch \
    && mkdir -p /downloads \
    && chown rangefetch:rangefetch /downloads
USER rangefetch
WORKDIR /home/rangefetch

ENTRYPOINT ["rangefetch"]
CMD ["--help"]
