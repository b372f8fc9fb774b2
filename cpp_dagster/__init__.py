"""cpp-dagster: continuous Cell Painting analysis on Dagster."""
