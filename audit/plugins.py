"""The plugin manager: loads every plugin of the ``model_audit`` entry-point group, built-ins included."""

from __future__ import annotations

from functools import lru_cache

import pluggy

from audit import hookspecs
from audit.errors import UsageError
from audit.probe import Probe


@lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    return pm


@lru_cache(maxsize=1)
def _registrations() -> tuple[tuple[Probe, str], ...]:
    """Every (probe, origin) pair, origin being the distribution (or plugin name) that registered it.

    Each plugin's hook is called on its own so that a name clash can name both plugins.
    """
    pm = plugin_manager()
    dists = {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}
    seen: dict[str, str] = {}
    out = []
    for plugin in pm.get_plugins():
        impl = getattr(plugin, "register_probes", None)
        if impl is None:
            continue
        origin = dists.get(id(plugin)) or pm.get_name(plugin) or repr(plugin)
        registered: list[Probe] = []
        impl(registered.append)
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
