"""Thin Dagster wiring: partitions, resources, the feature-table asset, sensors, hooks,
executor selection. The work itself is in cpp_dagster.analysis and below."""
