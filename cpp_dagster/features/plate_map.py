"""A plate map: a heatmap of a per-well number (cells per well) as a small PNG, and the
markdown that embeds it (a base64 `data:` URI) for Dagster's `MetadataValue.md`.

- Wells are named like `B02` / `B2` (row letters, then column number; `AA01` for 1536).
- The format is 96 (8 x 12, A-H / 1-12) when every well fits it, else 384 (16 x 24), else
  1536 (32 x 48); or the one given. A well outside the format raises ValueError.
- Wells without a value (not in the mapping, or None) are drawn light grey and hatched
  ("no data"); wells with 0 get a red cross ("0 objects"), on top of the colour scale.
- Rendered with matplotlib's Agg canvas (no pyplot, no display, no global state).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping

import numpy as np

FORMATS = {96: (8, 12), 384: (16, 24), 1536: (32, 48)}
MISSING_COLOR = (0.85, 0.85, 0.85)
_WELL = re.compile(r"^\s*([A-Za-z]{1,2})0*(\d+)\s*$")


def parse_well(well: str) -> tuple[int, int]:
    """`B02` -> (1, 1): zero-based row and column. ValueError if it is not a well name."""
    m = _WELL.match(str(well))
    if not m or int(m.group(2)) < 1:
        raise ValueError(f"not a well name: {well!r}")
    letters = m.group(1).upper()
    row = ord(letters[-1]) - ord("A") + (26 * (ord(letters[0]) - ord("A") + 1) if len(letters) == 2 else 0)
    return row, int(m.group(2)) - 1


def well_sort_key(well: str):
    """Sort wells by row, then column (`B2` < `B10`); names that are not wells go last."""
    try:
        return (0, *parse_well(well), "")
    except ValueError:
        return (1, 0, 0, str(well))


def row_label(row: int) -> str:
    return chr(ord("A") + row) if row < 26 else chr(ord("A") + row // 26 - 1) + chr(ord("A") + row % 26)


def plate_format_for(wells) -> int:
    """The smallest plate format every well fits in."""
    positions = [parse_well(w) for w in wells]
    for fmt, (rows, cols) in FORMATS.items():
        if all(r < rows and c < cols for r, c in positions):
            return fmt
    raise ValueError(f"wells beyond a 1536-well plate: {sorted(wells, key=well_sort_key)[-3:]}")


def plate_grid(counts_by_well: Mapping[str, int | float | None], plate_format: int | None = None):
    """(masked rows x columns array of the values, plate format); masked = no data."""
    fmt = plate_format or plate_format_for(counts_by_well)
    if fmt not in FORMATS:
        raise ValueError(f"plate format must be one of {sorted(FORMATS)}, not {fmt}")
    rows, cols = FORMATS[fmt]
    grid = np.ma.masked_all((rows, cols), dtype=float)
    for well, value in counts_by_well.items():
        r, c = parse_well(well)
        if r >= rows or c >= cols:
            raise ValueError(f"well {well} is not on a {fmt}-well plate")
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            grid[r, c] = value
    return grid, fmt


def plate_map_png(
    counts_by_well: Mapping[str, int | float | None],
    plate_format: int | None = None,
    *,
    title: str = "Cells per well",
    label: str = "cells",
) -> bytes:
    """The heatmap of `counts_by_well` as PNG bytes."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: nothing global, renders with Agg
    from matplotlib.patches import Patch, Rectangle

    grid, fmt = plate_grid(counts_by_well, plate_format)
    rows, cols = grid.shape
    fig = Figure(figsize=(7.2, 4.6), dpi=80)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=MISSING_COLOR)
    image = ax.imshow(
        grid,
        cmap=cmap,
        aspect="equal",
        interpolation="nearest",
        vmin=0,
        vmax=max(float(grid.max()) if grid.count() else 1.0, 1.0),
    )
    missing = np.ma.getmaskarray(grid)
    for r, c in zip(*np.nonzero(missing)):
        ax.add_patch(
            Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///", linewidth=0, edgecolor=(0.6, 0.6, 0.6))
        )
    zero_r, zero_c = np.nonzero(~missing & (grid.filled(1) == 0))
    ax.scatter(zero_c, zero_r, marker="x", color="red", s=60 if fmt == 96 else 18, linewidths=1.5)
    step = 1 if fmt <= 384 else 2
    ax.set_xticks(range(0, cols, step), [str(c + 1) for c in range(0, cols, step)], fontsize=8 if fmt == 96 else 6)
    ax.set_yticks(range(0, rows, step), [row_label(r) for r in range(0, rows, step)], fontsize=8 if fmt == 96 else 6)
    ax.xaxis.tick_top()
    ax.set_title(f"{title} ({fmt}-well plate)", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    handles = [Patch(facecolor=MISSING_COLOR, hatch="///", edgecolor=(0.6, 0.6, 0.6), label="no data")]
    if len(zero_r):
        handles.append(ax.scatter([], [], marker="x", color="red", label=f"0 {label}"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def plate_map_markdown(png: bytes, alt: str = "plate map") -> str:
    """Markdown showing `png` inline (a data: URI), e.g. for `MetadataValue.md`."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
