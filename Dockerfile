# User-code image of cpp-dagster: the project (Dagster side) plus CellProfiler in its
# own virtualenv. The same image runs the code server, run workers and every step pod.
#   docker build --build-arg CELLPROFILER_VERSION=5.0.0.dev784 -t registry.example.org/cpp-dagster:0.1.0-cp5.0.0.dev784 .
FROM python:3.11-slim-bookworm

ARG CELLPROFILER_VERSION=5.0.0.dev784
ARG UV_VERSION=0.13.8

ENV PYTHONUNBUFFERED=1 \
    CPP_CELLPROFILER=/opt/cellprofiler/bin/cellprofiler \
    CPP_EXECUTOR=k8s \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    MPLCONFIGDIR=/tmp/matplotlib \
    UV_COMPILE_BYTECODE=1
# UV_COMPILE_BYTECODE: every .pyc is written at build time, since step pods run with a
# read-only root filesystem (only /tmp is writable, see cpp_dagster/k8s/pod_config.py).

RUN pip install --no-cache-dir uv==${UV_VERSION}

WORKDIR /opt/cpp-dagster
COPY requirements.lock requirements-cellprofiler.in ./

# Dagster side: the locked versions, into the image's Python.
RUN uv pip install --system --no-cache -r requirements.lock

# CellProfiler: its own virtualenv (numpy<2); cellprofiler itself without its
# wxPython/mysqlclient dependencies (headless).
RUN uv venv /opt/cellprofiler \
 && sed "s/5\.0\.0\.dev784/${CELLPROFILER_VERSION}/" requirements-cellprofiler.in > /tmp/cp.in \
 && VIRTUAL_ENV=/opt/cellprofiler uv pip install --no-cache -r /tmp/cp.in \
 && VIRTUAL_ENV=/opt/cellprofiler uv pip install --no-cache --no-deps "cellprofiler-nightly==${CELLPROFILER_VERSION}" \
 && /opt/cellprofiler/bin/cellprofiler --version \
 && /opt/cellprofiler/bin/python -c "import imagecodecs, numpy; assert numpy.__version__ < '2'"  # LZW/Deflate/Zstd TIFFs

COPY pyproject.toml README.md ./
COPY cpp_dagster ./cpp_dagster
RUN uv pip install --system --no-cache --no-deps . \
 && mkdir -p ${DAGSTER_HOME} \
 && useradd --uid 1000 --create-home cpp
USER 1000
