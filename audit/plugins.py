"""The plugin manager: loads every plugin of the ``model_audit`` entry-point group, built-ins included.

A plugin that fails to import or to register is skipped with a recorded error (shown by the CLI as a
warning) instead of taking the whole tool down: one broken third-party probe must not stop `audit gate`.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import pluggy

from audit import hookspecs
from audit.errors import UsageError
from audit.probe import Probe

if TYPE_CHECKING:
    from audit.executors import Executor

_errors: list[str] = []
_origins: dict[str, str] = {}  # plugin name -> "distribution version"


@lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for ep in entry_points(group=hookspecs.PROJECT):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as e:  # a broken plugin is reported, not fatal
            _errors.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}")
            continue
        pm.register(plugin, name=ep.name)
        _origins[ep.name] = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.name
    return pm


def plugin_errors() -> list[str]:
    """Plugins that could not be loaded or failed to register their probes, one line each."""
    _registrations()
    return list(_errors)


@lru_cache(maxsize=1)
def _registrations() -> tuple[tuple[Probe, str], ...]:
    """Every (probe, origin) pair, origin being the distribution (or plugin name) that registered it.

    Each plugin's hook is called on its own so that a name clash can name both plugins.
    """
    pm = plugin_manager()
    seen: dict[str, str] = {}
    out = []
    for plugin in pm.get_plugins():
        impl = getattr(plugin, "register_probes", None)
        if impl is None:
            continue
        name = pm.get_name(plugin) or repr(plugin)
        origin = _origins.get(name, name)
        registered: list[Probe] = []
        try:
            impl(registered.append)
        except Exception as e:
            _errors.append(f"plugin {name!r} failed to register its probes: {type(e).__name__}: {e}")
            continue
        for probe in registered:
            if not isinstance(probe, Probe):
                raise UsageError(f"plugin {origin!r} registered {probe!r}, which is not an audit.Probe")
            if probe.name in seen:
                raise UsageError(
                    f"probe name {probe.name!r} is registered twice (by {seen[probe.name]!r} and {origin!r})"
                )
            seen[probe.name] = origin
            out.append((probe, origin))
    return tuple(sorted(out, key=lambda pair: pair[0].name))


def installed_probes() -> dict[str, Probe]:
    """All registered probes by name, sorted by name."""
    return {probe.name: probe for probe, _ in _registrations()}


def probe_origins() -> dict[str, str]:
    """Probe name → the distribution that registered it (shown by `audit probes`)."""
    return {probe.name: origin for probe, origin in _registrations()}


@lru_cache(maxsize=1)
def installed_executors() -> dict[str, Executor]:
    """Every executor by name: the built-in ``inline`` and ``local``, then those plugins register."""
    from audit.executors import BUILTIN, Executor

    found: dict[str, Executor] = {cls.name: cls() for cls in BUILTIN}
    origin = {name: "model-audit" for name in found}
    pm = plugin_manager()
    for plugin in pm.get_plugins():
        impl = getattr(plugin, "register_executors", None)
        if impl is None:
            continue
        name = pm.get_name(plugin) or repr(plugin)
        registered: list[Executor] = []
        try:
            impl(registered.append)
        except Exception as e:
            _errors.append(f"plugin {name!r} failed to register its executors: {type(e).__name__}: {e}")
            continue
        for executor in registered:
            if not isinstance(executor, Executor):
                raise UsageError(f"plugin {name!r} registered {executor!r}, which is not an audit executor")
            if executor.name in found:
                raise UsageError(
                    f"executor name {executor.name!r} is registered twice (by {origin[executor.name]!r} and {name!r})"
                )
            found[executor.name] = executor
            origin[executor.name] = name
    return found
