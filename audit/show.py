"""`audit show RESULT`: one stored result in the terminal — metrics, parameters, warnings, and the
probe's own terminal views (e.g. the `cka` matrix as a coloured grid).

Why a separate hook from the report's: a terminal cannot show images, so a probe that wants to be
seen here renders rich objects (``render_terminal``); :func:`matrix_grid` is the shared helper for the
most common one, a labelled matrix coloured by value. The core still knows no probe.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.style import Style
from rich.table import Table
from rich.text import Text

from audit.figures import call_each
from audit.results import ResultView

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


def _short(label: str, keep: int = 3) -> str:
    """A job of many models (an ensemble) labelled by its first few names and a count."""
    names = label.split(",")
    return label if len(names) <= keep else f"{','.join(names[:keep])},… ({len(names)} models)"


def _fmt(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.6g}"


def result_header(v: ResultView) -> Table:
    """Who, what, when of a stored result, as a two-column table."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    status = "[green]ok[/]" if v.status == "ok" else f"[red]{v.status}[/]"
    rows: list[tuple[str, str]] = [
        ("result", f"{v.result_id} ({status})"),
        ("probe", f"{v.probe} {v.version}"),
        ("models", ", ".join(v.models) or "—"),
        ("datasets", ", ".join(v.datasets) or "—"),
        ("run", v.run_id),
        ("created", v.created_at.isoformat(sep=" ", timespec="seconds") if v.created_at else "—"),
        (
            "computed on",
            f"{v.device or '—'}" + ("" if v.duration_s is None else f" in {v.duration_s:.2f} s"),
        ),
    ]
    for k, val in rows:
        head.add_row(k, Text(val) if k != "result" else val)
    return head


def params_table(params: dict[str, Any]) -> Table:
    table = Table(title="parameters", title_justify="left")
    table.add_column("parameter")
    table.add_column("value", overflow="fold")
    for k, val in sorted(params.items()):
        table.add_row(k, json.dumps(val))
    return table


def metrics_table(v: ResultView, key_metrics: Sequence[str] = ()) -> Table:
    """The result's metrics (model, dataset, metric, value), the probe's key metrics first and bold; a
    metric of the job as a whole is labelled as the ``metrics`` view labels it (the job's models, datasets)."""
    order = {k: i for i, k in enumerate(key_metrics)}
    job_model, job_data = _short(v.label) or "—", ",".join(v.datasets) or "—"
    rows = sorted(
        ((m.model or job_model, m.dataset or job_data, m.name, m.value) for m in v.metrics),
        key=lambda r: (order.get(r[2], len(order)), r[2] if r[2] not in order else "", r[0], r[1]),
    )
    table = Table(title=f"metrics ({len(rows)})", title_justify="left")
    for col, justify in (("model", "left"), ("dataset", "left"), ("metric", "left"), ("value", "right")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for model, dataset, name, value in rows:
        style = "bold" if name in order else None
        table.add_row(model, dataset, name, _fmt(value), style=style)
    return table


def show(v: ResultView, console: Console, key_metrics: Sequence[str] = ()) -> list[str]:
    """Print one stored result; returns one line per plugin view that failed (the caller warns)."""
    console.print(result_header(v))
    if v.params:
        console.print(params_table(dict(v.params)))
    if v.status != "ok":
        console.print(f"[red]error:[/] {v.error or 'no message'}", highlight=False)
    if v.metrics:
        console.print(metrics_table(v, key_metrics))
    for w in v.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    failures = []
    if v.status == "ok":
        for plugin, returned, error in call_each("render_terminal", result=v):
            if error is not None:
                failures.append(f"plugin {plugin!r}: {type(error).__name__}: {error}")
                continue
            for item in returned or ():
                console.print(item)
    return failures
