"""Calling every plugin's renderer on its own: the figures of `audit report`, the views of `audit show`.

pluggy's normal call stops at the first exception and loses the other plugins' answers; a report must
survive one broken renderer, so each implementation is called and caught separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from audit.api.figures import Figure
from audit.api.results import ResultView
from audit.registry import plugin_manager


@dataclass(frozen=True)
class RenderOutcome:
    """Every plugin's figures for one stored result, and one line per renderer that failed."""

    figures: tuple[Figure, ...]
    failures: tuple[str, ...]


def _implementations(hook_name: str) -> list[tuple[str, Callable[..., Any], Sequence[str]]]:
    pm = plugin_manager()
    caller = getattr(pm.hook, hook_name)
    return [
        (impl.plugin_name, impl.function, impl.argnames)
        for impl in caller.get_hookimpls()
        if not (impl.hookwrapper or impl.wrapper)  # wrappers wrap a call; they answer nothing themselves
    ]


def call_each(hook_name: str, **kwargs: Any) -> list[tuple[str, Any, BaseException | None]]:
    """Call every implementation of a hook on its own: [(plugin name, returned value, exception)].

    pluggy's normal call stops at the first exception and loses the other plugins' answers; a report
    must survive one broken renderer, so each implementation is called and caught separately.
    Implementations run in registration order (stable from run to run).
    """
    out: list[tuple[str, Any, BaseException | None]] = []
    for plugin, function, argnames in _implementations(hook_name):
        try:
            out.append((plugin, function(**{a: kwargs[a] for a in argnames}), None))
        except Exception as e:
            out.append((plugin, None, e))
    return out


def collect_figures(result: ResultView) -> RenderOutcome:
    """The figures every installed plugin renders for one stored result (see the render_figures hook)."""
    figures: list[Figure] = []
    failures: list[str] = []
    for plugin, returned, error in call_each("render_figures", result=result):
        if error is not None:
            failures.append(f"plugin {plugin!r}: {type(error).__name__}: {error}")
            continue
        if returned is None:
            continue
        items = list(returned) if isinstance(returned, (list, tuple)) else [returned]
        bad = [x for x in items if not isinstance(x, Figure)]
        if bad:
            failures.append(
                f"plugin {plugin!r}: render_figures returned {type(bad[0]).__name__}, not audit.Figure"
            )
            items = [x for x in items if isinstance(x, Figure)]
        figures += items
    return RenderOutcome(tuple(figures), tuple(failures))
