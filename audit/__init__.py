"""model-audit: audit trained neural networks like scientific instruments.

The public API a probe plugin needs is re-exported here, so a plugin imports only ``audit``:

    from audit import hookimpl, Probe, Param, Needs, ProbeResult

and a plugin that draws figures for `audit report` returns ``audit.Figure`` values from the
``render_figures`` hook, reading the stored result through ``audit.ResultView``.
"""

from audit.figures import Figure
from audit.hookspecs import hookimpl
from audit.probe import Needs, Param, Probe, ProbeResult
from audit.results import ResultView, StoredMetric

__version__ = "0.1.0"

__all__ = [
    "Figure",
    "Needs",
    "Param",
    "Probe",
    "ProbeResult",
    "ResultView",
    "StoredMetric",
    "__version__",
    "hookimpl",
]
