# CPL Studio: the app and its training worker in one image (runs start as detached `cpl` processes).
#   docker build -t cpl-studio .
#   docker run --gpus all --shm-size 8g -p 127.0.0.1:8501:8501 \
#       -v "$PWD/runs:/runs" -v /path/to/datasets:/data cpl-studio
# The install steps are the Makefile's (`make install`), the same ones the README's commands run.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CPL_RUNS_ROOT=/runs \
    CPL_DATA_ROOTS=/data \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/runs/_cache/torch

# tini reaps the detached training processes the app starts; curl serves the health check.
# Debian point releases replace package versions, so apt packages are not pinned (requirements.txt is).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini curl make \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 cpl \
    && mkdir -p /opt/venv /runs /data \
    && chown cpl:cpl /opt/venv /runs /data

WORKDIR /app
COPY --chown=cpl:cpl . /app
USER 1000
RUN make install PYTHON=python3 VENV=/opt/venv

VOLUME ["/runs", "/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["curl", "--fail", "--silent", "http://127.0.0.1:8501/_stcore/health"]

ENTRYPOINT ["/usr/bin/tini", "--"]
# Inside the container the app must listen on all interfaces for -p to reach it; publish the port on
# 127.0.0.1 as above unless you mean to expose it (see README).
CMD ["python", "-m", "streamlit", "run", "streamlit_app.py", "--server.address=0.0.0.0", "--server.port=8501"]
