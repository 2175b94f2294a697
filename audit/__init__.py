"""model-audit: audit trained neural networks like scientific instruments.

The public API a probe plugin needs is re-exported here (it lives in :mod:`audit.api`), so a plugin imports
only ``audit``:

    from audit import hookimpl, Probe, Param, Needs, ProbeResult

and a plugin that draws figures for `audit report` returns ``audit.Figure`` values from the
``render_figures`` hook, reading the stored result through ``audit.ResultView``.

The Python API for notebooks and scripts (:mod:`audit.notebook`) is here too: ``audit.run_probe("cka",
models, data)`` runs one probe on in-memory modules and arrays, ``audit.open_catalog(path)`` reads a catalog
into data frames.

The names are imported on first use (PEP 562), so ``audit --version`` and ``audit query`` start without
NumPy or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Figure": "audit.api.figures",
    "hookimpl": "audit.api.hookspecs",
    "Needs": "audit.api.probe",
    "Param": "audit.api.probe",
    "Probe": "audit.api.probe",
    "ProbeResult": "audit.api.probe",
    "ResultView": "audit.api.results",
    "StoredMetric": "audit.api.results",
    # the Python API (notebooks, scripts): a probe on in-memory models and data; a catalog as data frames
    "run_probe": "audit.notebook",
    "open_catalog": "audit.notebook",
    "ProbeRun": "audit.notebook",
    "CatalogReader": "audit.notebook",
}

if TYPE_CHECKING:
    from audit.api.figures import Figure
    from audit.api.hookspecs import hookimpl
    from audit.api.probe import Needs, Param, Probe, ProbeResult
    from audit.api.results import ResultView, StoredMetric
    from audit.notebook import CatalogReader, ProbeRun, open_catalog, run_probe


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audit' has no attribute {name!r}")


__all__ = [
    "CatalogReader",
    "Figure",
    "Needs",
    "Param",
    "Probe",
    "ProbeResult",
    "ProbeRun",
    "ResultView",
    "StoredMetric",
    "__version__",
    "hookimpl",
    "open_catalog",
    "run_probe",
]
