"""Terminal views a probe may return from ``render_terminal`` (`audit show`): a labelled matrix coloured by
value, and the colour scale it uses. Rich objects only; no matplotlib."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from rich.console import Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

__all__ = ["colour", "matrix_grid"]

# viridis at 9 stops (matplotlib's), interpolated linearly: a perceptually uniform scale that reads in
# colour-blind and greyscale terminals alike, without importing matplotlib for a terminal view
_VIRIDIS = np.array(
    [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ],
    dtype=float,
)


def colour(value: float, vmin: float = 0.0, vmax: float = 1.0) -> tuple[int, int, int] | None:
    """The viridis RGB of a value on [vmin, vmax] (clipped); None for NaN."""
    if not math.isfinite(value):
        return None
    t = 0.0 if vmax <= vmin else min(max((value - vmin) / (vmax - vmin), 0.0), 1.0)
    pos = t * (len(_VIRIDIS) - 1)
    i = min(int(pos), len(_VIRIDIS) - 2)
    rgb = _VIRIDIS[i] + (pos - i) * (_VIRIDIS[i + 1] - _VIRIDIS[i])
    r, g, b = (round(float(c)) for c in rgb)
    return r, g, b


def matrix_grid(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    *,
    title: str = "",
    vmin: float = 0.0,
    vmax: float = 1.0,
    width: int | None = None,
) -> Group:
    """A labelled matrix as a rich grid (with its colour legend below): one cell per entry, background
    coloured by value (viridis).

    Cells show the value to two decimals while the grid fits ``width`` columns (default: no limit);
    wider matrices get blank colour cells (the colour carries the value, the legend under the grid the
    scale). NaN cells read "nan" on no colour.
    """
    m = np.asarray(matrix, dtype=np.float64)
    cols = list(rows if cols is None else cols)
    rows = list(rows)
    if m.shape != (len(rows), len(cols)):
        raise ValueError(f"matrix of shape {m.shape} with {len(rows)} row and {len(cols)} column labels")
    numbered = any(len(c) > 4 for c in cols)  # labels too long for a column head: number the columns
    shared = cols == rows
    if numbered and shared:
        rows = [f"{r} [{i}]" for i, r in enumerate(rows)]
    label_w = max((len(r) for r in rows), default=1)
    numbers = width is None or label_w + 1 + 5 * len(cols) <= width
    cell_w = 4 if numbers else 2
    grid = Table(
        title=title or None,
        caption=None
        if shared or not numbered
        else "columns: " + ", ".join(f"[{j}] {c}" for j, c in enumerate(cols)),
        show_header=True,
        box=None,
        padding=0,
        pad_edge=False,
        collapse_padding=True,
    )
    grid.add_column("", justify="right", no_wrap=True)
    for j, c in enumerate(cols):
        head = f"[{j}]" if numbered or len(c) > cell_w else c
        grid.add_column(head, justify="center", width=cell_w + 1, no_wrap=True)
    for i, r in enumerate(rows):
        cells: list[RenderableType] = [Text(f"{r} ", style="bold")]
        for j in range(len(cols)):
            v = float(m[i, j])
            rgb = colour(v, vmin, vmax)
            if rgb is None:
                cells.append(Text("nan".center(cell_w + 1) if numbers else " " * (cell_w + 1), style="dim"))
                continue
            fg = (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else (255, 255, 255)
            text = f"{v:.2f}"[-cell_w:] if numbers else ""
            style = Style(bgcolor=f"rgb({rgb[0]},{rgb[1]},{rgb[2]})", color=f"rgb({fg[0]},{fg[1]},{fg[2]})")
            cells.append(Text(text.center(cell_w + 1), style=style))
        grid.add_row(*cells)
    legend = Text(f"  {vmin:g} ")
    for k in range(12):
        rgb = colour(vmin + (vmax - vmin) * k / 11, vmin, vmax)
        legend.append("  ", style=Style(bgcolor=f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"))  # type: ignore[index]
    legend.append(f" {vmax:g}")
    return Group(grid, legend)
