"""Scripts that run inside the CellProfiler environment (its own interpreter, numpy<2),
by path: they import only the standard library and cellprofiler_core / cellprofiler."""
