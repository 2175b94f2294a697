"""The plugin contract (pluggy). Every hook a plugin may implement is declared and documented here.

Plugins are found through the ``model_audit`` entry-point group; the built-in probes register through
the same group, so they are ordinary plugins. A plugin module implements hooks with ``@hookimpl``::

    from audit import hookimpl

    @hookimpl
    def register_probes(register):
        register(MyProbe())

    @hookimpl
    def render_figures(result):
        if result.probe != "my_probe":
            return None
        return [Figure.from_matplotlib(...)]

An implementation may accept fewer arguments than the spec names (pluggy passes only those it asks for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import typer
    from rich.console import RenderableType

    from audit.api.figures import Figure
    from audit.api.probe import Probe
    from audit.api.results import ResultView

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


@hookspec
def render_figures(result: ResultView) -> list[Figure] | None:
    """Figures of one stored result for `audit report`; return None for a result of another probe.

    ``result`` (:class:`audit.api.results.ResultView`) is read back from the catalog: ``probe``, ``version``,
    ``result_id``, ``run_id``, ``params``, ``models``, ``datasets``, ``warnings``, ``metrics`` (rows of
    name, value, model, dataset; ``result.metric(name, model=..., dataset=...)`` picks one) and
    ``arrays`` (loaded on first use). Draw only from these — a report never recomputes a probe or loads a
    model — and check ``result.probe`` (and, if the stored arrays changed across versions,
    ``result.version``) first. Return :class:`audit.Figure` values (PNG or SVG; ``Figure.from_matplotlib``
    renders a ``matplotlib.figure.Figure``, see :func:`audit.api.figures.canvas`).

    Every plugin is asked about every result, so a third-party plugin may also draw figures for another
    probe's results. A renderer that raises loses only its own figures: the report says "figure failed"
    in that section and the command warns on stderr.
    """


@hookspec
def render_terminal(result: ResultView) -> list[RenderableType] | None:
    """Rich renderables shown by `audit show RESULT` below the result's metrics; None for other probes.

    Same ``result`` and rules as :func:`render_figures`; e.g. the `cka` probe shows its layer×layer
    matrix as a coloured grid with :func:`audit.api.terminal.matrix_grid`. A renderer that raises is reported
    as a warning and the rest of the view is still shown.
    """


@hookspec
def register_executors(register: Callable[[Any], None]) -> None:
    """Register executors (where a run's jobs execute) by calling ``register(executor_instance)``.

    The built-in ``inline`` and ``local`` executors and the optional ``ray`` one register this way; an
    executor's name must be unique. See :mod:`audit.run.executors` for the contract.
    """
