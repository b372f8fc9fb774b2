# User-code image of cpp-dagster: the project (Dagster side) and CellProfiler, each in its
# own virtualenv and each from its lock only. The same image runs the code server, the run
# workers and every step pod, whose root filesystem is read-only (all bytecode is compiled
# here; at run time only /tmp and the mounted volumes are written: cpp_dagster/k8s/pod_config.py).
# One image per CellProfiler version. `make image` builds it (deploy/image/build.sh); by hand:
#   docker build --build-arg CP_VERSION=5.0.0.dev784 --build-arg PROJECT_VERSION=0.1.0 \
#       -t registry.example.org/cpp-dagster:0.1.0-cp5.0.0.dev784 .
ARG BASE_IMAGE=debian:bookworm-slim

# One stage: every RUN is cached by its own text, so a build with nothing changed is quick
# (a COPY --from of the virtualenvs between stages would hash their 2.5 GB on every build).
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*

ARG UV_VERSION=0.13.8
# CA bundles for pip and uv during the build only (the build script passes the host's where it
# trusts extra CAs, e.g. a TLS-inspecting proxy); build arguments, not kept in the image's env.
ARG PIP_CERT
ARG SSL_CERT_FILE
ENV UV_COMPILE_BYTECODE=1 UV_NO_CACHE=1
RUN python3.11 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --quiet uv==${UV_VERSION}

# CellProfiler: its own virtualenv (numpy<2) from its lock; cellprofiler-nightly itself with
# --no-deps (its declared dependencies include wxPython and mysqlclient). CP_VERSION must be
# the version the lock holds.
ARG CP_VERSION
ARG CP_LOCK=requirements-cellprofiler.lock
COPY ${CP_LOCK} /opt/locks/cellprofiler.lock
RUN test -n "${CP_VERSION}" || { echo "error: CP_VERSION is not set (--build-arg CP_VERSION=...)" >&2; exit 1; } \
 && grep -qx "cellprofiler-core-nightly==${CP_VERSION}" /opt/locks/cellprofiler.lock \
 || { echo "error: CP_VERSION=${CP_VERSION} is not the CellProfiler version ${CP_LOCK} holds ($(grep '^cellprofiler-core-nightly==' /opt/locks/cellprofiler.lock))" >&2; exit 1; }
RUN /opt/uv/bin/uv venv --quiet --python /usr/bin/python3.11 /opt/cellprofiler \
 && VIRTUAL_ENV=/opt/cellprofiler /opt/uv/bin/uv pip sync --quiet /opt/locks/cellprofiler.lock \
 && VIRTUAL_ENV=/opt/cellprofiler /opt/uv/bin/uv pip install --quiet --no-deps "cellprofiler-nightly==${CP_VERSION}" \
 && test "$(/opt/cellprofiler/bin/cellprofiler --version 2>/dev/null | tail -n 1)" = "${CP_VERSION}"

# The Dagster side: its own virtualenv from requirements.lock, then the project without deps.
COPY requirements.lock /opt/locks/requirements.lock
RUN /opt/uv/bin/uv venv --quiet --python /usr/bin/python3.11 /opt/cpp-dagster \
 && VIRTUAL_ENV=/opt/cpp-dagster /opt/uv/bin/uv pip sync --quiet /opt/locks/requirements.lock
ARG PROJECT_VERSION
COPY pyproject.toml README.md /src/
COPY cpp_dagster /src/cpp_dagster
RUN VIRTUAL_ENV=/opt/cpp-dagster /opt/uv/bin/uv pip install --quiet --no-deps /src \
 && test "$(/opt/cpp-dagster/bin/python -c 'import importlib.metadata as m; print(m.version("cpp-dagster"))')" = "${PROJECT_VERSION}"

LABEL org.opencontainers.image.title="cpp-dagster" \
      org.opencontainers.image.version="${PROJECT_VERSION}" \
      org.cellprofiler.version="${CP_VERSION}"
RUN useradd --uid 1000 --user-group --no-create-home --home-dir /tmp/home cpp \
 && mkdir -p /opt/dagster/dagster_home
ENV PATH=/opt/cpp-dagster/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CPP_CELLPROFILER=/opt/cellprofiler/bin/cellprofiler \
    CPP_EXECUTOR=k8s \
    DAGSTER_HOME=/opt/dagster/dagster_home
USER 1000:1000
WORKDIR /tmp
