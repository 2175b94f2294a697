"""What the terminal tables (`audit demo`, `audit show`) and the HTML report share: how a job label and a
metric value are written, and how (model, dataset, metric, value) rows are laid out as a grid.

Only the layout lives here; each side renders it its own way (rich tables, HTML).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


def short_label(label: str | None, keep: int = 3) -> str:
    """A job label (comma-joined model names) of more than `keep` models — an ensemble job — shortened to its
    first `keep` names and a count: ``"a,b,c,… (12 models)"``; "—" for none."""
    names = (label or "—").split(",")
    return label or "—" if len(names) <= keep else f"{','.join(names[:keep])},… ({len(names)} models)"


def number(value: float | None) -> str:
    """A metric value as tables show it: six significant digits, "NaN" for NaN, "—" for none."""
    if value is None:
        return "—"
    return "NaN" if math.isnan(value) else f"{value:.6g}"


@dataclass(frozen=True)
class Pivot:
    """Metric values as a grid: ``cells[(model, dataset)][metric]``, a cell per (model, dataset) pair in the
    order first seen, and the metrics in the order to show them. Model labels are kept whole (shorten them
    with :func:`short_label` when rendering); a missing model or dataset is "—"."""

    metrics: tuple[str, ...]
    cells: dict[tuple[str, str], dict[str, float]]

    @property
    def metrics_as_columns(self) -> bool:
        """A row per (model, dataset) and a column per metric, unless there are more metrics than pairs: then
        transposed, so that the table grows down the page rather than off its side."""
        return len(self.metrics) <= len(self.cells)

    def value(self, key: tuple[str, str], metric: str) -> float | None:
        return self.cells[key].get(metric)


def pivot(rows: Iterable[Sequence[Any]], order: Sequence[str] = ()) -> Pivot:
    """(model, dataset, metric, value) rows as a :class:`Pivot`: the metrics of `order` that occur, in that
    order (when none does, every metric, sorted); rows of other metrics are left out."""
    rows = list(rows)
    present = {r[2] for r in rows}
    metrics = tuple(m for m in order if m in present) or tuple(sorted(present))
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for model, dataset, metric, value in rows:
        if metric in metrics:
            cells.setdefault((model or "—", dataset or "—"), {})[metric] = value
    return Pivot(metrics, cells)
