"""Stored results as read back from the catalog: the read-only records reports and renderers see.

Kept apart from :mod:`audit.catalog.store` (and DuckDB) so that a plugin importing ``audit`` for these types
pays nothing for the database driver; the catalog builds them (``Catalog.result_views``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the arrays are NumPy's; `audit gate` and `audit query` never load one
    import numpy as np


@dataclass(frozen=True)
class StoredMetric:
    """One stored metric of a result; ``model``/``dataset`` None means the result's job as a whole."""

    name: str
    value: float
    model: str | None
    dataset: str | None


@dataclass(frozen=True, eq=False)
class ResultView:
    """A stored result read back from the catalog: what reports, `audit show` and figure renderers see.

    Read-only by construction (frozen; arrays are loaded on first use, through a read-only connection,
    and are not writeable), so a renderer cannot change what the catalog holds. ``metrics`` keep the
    attribution the probe gave them (None: the job as a whole), unlike the ``metrics`` view, which fills
    in the job's comma-joined labels.
    """

    result_id: str
    run_id: str
    probe: str
    version: str
    params: Mapping[str, Any]
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    status: str  # "ok" | "error"
    error: str | None
    warnings: tuple[str, ...]
    created_at: datetime
    duration_s: float | None
    device: str | None
    metrics: tuple[StoredMetric, ...]
    _load_arrays: Callable[[], dict[str, np.ndarray]] = field(repr=False, default=lambda: {})
    # what tells results of two [[probes]] entries of one probe apart: their parameters' fingerprint and the
    # label of the entry that computed the result (the probe's name unless the config gave another)
    params_fingerprint: str = ""
    entry: str = ""

    @cached_property
    def arrays(self) -> Mapping[str, np.ndarray]:
        """The result's stored arrays by name (bit-exact as stored), loaded once, read-only."""
        loaded = self._load_arrays()
        for a in loaded.values():
            a.setflags(write=False)
        return loaded

    @property
    def label(self) -> str:
        """The job's label as the ``metrics`` view writes it: the comma-joined model names."""
        return ",".join(self.models)

    def metric(self, name: str, *, model: str | None = None, dataset: str | None = None) -> float:
        """The value of a metric, narrowed by model and/or dataset when given; NaN when not stored."""
        for m in self.metrics:
            if m.name == name and model in (None, m.model) and dataset in (None, m.dataset):
                return m.value
        return float("nan")
