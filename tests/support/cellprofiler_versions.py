"""A second CellProfiler "version" for tests: an executable wrapping the installed one
that reports another version, as a deployment with two environments would have."""

from __future__ import annotations

from pathlib import Path

from cpp_dagster.settings import PROJECT_ROOT

REAL = PROJECT_ROOT / ".venv-cp" / "bin" / "cellprofiler"


def wrapper(folder: Path, reports: str) -> Path:
    """An executable that says it is CellProfiler `reports` and runs the real one, noting each call."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "cellprofiler"
    exe.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{folder}/calls"\n'
        f'if [ "$1" = "--version" ]; then echo "{reports}"; exit 0; fi\n'
        f'exec "{REAL}" "$@"\n'
    )
    exe.chmod(0o755)
    python = folder / "python"  # the pipeline check's interpreter: the same environment's
    python.write_text(f'#!/bin/sh\nexec "{REAL.with_name("python")}" "$@"\n')
    python.chmod(0o755)
    return exe
