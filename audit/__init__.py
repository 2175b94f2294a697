"""model-audit: audit trained neural networks like scientific instruments.

The public API a probe plugin needs is re-exported here, so a plugin imports only ``audit``:

    from audit import hookimpl, Probe, Param, Needs, ProbeResult
"""

from audit.hookspecs import hookimpl
from audit.probe import Needs, Param, Probe, ProbeResult

__version__ = "0.1.0"

__all__ = ["Needs", "Param", "Probe", "ProbeResult", "__version__", "hookimpl"]
