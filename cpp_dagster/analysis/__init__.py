"""The analysis domain: one sub-analysis from imagedb's rows to its results folder.

`planning` (image sets and batches, typed options) -> `loaddata` (one LoadData CSV per
batch) -> `pipeline_check` (can the pipeline run on this plan?) -> `cellprofiler` (one
batch, headless) -> `lifecycle` (prepare, run a batch, merge, derived tables, complete)
-> `features/` (the tables). `sub_analysis` is the typed object a run resolves once and
passes along; `work_area` cleans the shared scratch folder; `lab_overview` formats the
table of plate acquisitions x pipelines. Nothing here imports Dagster, the wiring or the
local deployment (import-linter contracts in pyproject.toml).
"""
