"""Feature tables: merging per-batch CellProfiler outputs into Parquet."""
