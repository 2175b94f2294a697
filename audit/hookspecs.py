"""The plugin contract (pluggy). Every hook a plugin may implement is declared and documented here.

Plugins are found through the ``model_audit`` entry-point group; the built-in probes register through
the same group, so they are ordinary plugins. A plugin module implements hooks with ``@hookimpl``::

    from audit import hookimpl

    @hookimpl
    def register_probes(register):
        register(MyProbe())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from audit.probe import Probe

PROJECT = "model_audit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_probes(register: Callable[[Probe], None]) -> None:
    """Register probes by calling ``register(probe_instance)`` once per probe.

    A probe's name must be unique among installed plugins; a clash is reported as an error naming both.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add commands to the ``audit`` CLI, e.g. ``app.command()(fn)`` or ``app.add_typer(sub, name=...)``.

    Typer vendors Click from 0.26 on, so Click-level plugins cannot hook in; plugins get the Typer app.
    """
