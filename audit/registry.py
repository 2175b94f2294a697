"""The plugin manager: loads every plugin of the ``model_audit`` entry-point group, built-ins included.

A plugin that fails to import or to register is skipped with a recorded error (shown by the CLI as a
warning) instead of taking the whole tool down: one broken third-party probe must not stop `audit gate`.

Loading the plugins imports each entry point's module (a built-in plugin's ``__init__``: nothing heavy);
the probes are registered, importing their probe modules, only when :func:`installed_probes` is first
called, so `audit --help` and `audit query` register none.
"""

from __future__ import annotations

from functools import cache, lru_cache
from importlib.metadata import Distribution, entry_points
from typing import Any

import pluggy

from audit.api import hookspecs
from audit.api.errors import UsageError
from audit.api.probe import Probe

_errors: list[str] = []
_dists: dict[str, Distribution] = {}  # plugin name -> the distribution that installed it


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
        if ep.dist is not None:
            _dists[ep.name] = ep.dist
    return pm


def _origin(plugin: str) -> str:
    """The distribution that installed a plugin, as "name version" (else the plugin's name)."""
    dist = _dists.get(plugin)
    return plugin if dist is None else _describe(dist)


@cache
def _describe(dist: Distribution) -> str:
    # one parse of the distribution's METADATA (it holds the README), shared by every plugin it installs;
    # read when probes are registered, not when the plugins load (`audit --version` reads none)
    meta = dist.metadata
    return f"{meta['Name']} {meta['Version']}"


def plugin_errors() -> list[str]:
    """Plugins that could not be loaded, or failed to register their probes or executors, one line each.

    Loads the plugins but registers nothing: a registration failure is listed once :func:`installed_probes`
    (or ``installed_executors``) has run.
    """
    plugin_manager()
    return list(_errors)


def collect(hook: str, what: str, kind: type, kind_label: str, seen: dict[str, str]) -> list[tuple[Any, str]]:
    """Call every plugin's `hook` on its own and return the (object, origin) pairs it registered.

    One plugin's failure is recorded and skipped; an object of the wrong type, or a name already in `seen`
    (name → origin), is an error naming both plugins. Shared by probes and executors.
    """
    pm = plugin_manager()
    out = []
    for plugin in pm.get_plugins():
        impl = getattr(plugin, hook, None)
        if impl is None:
            continue
        name = pm.get_name(plugin) or repr(plugin)
        origin = _origin(name)
        registered: list[Any] = []
        try:
            impl(registered.append)
        except Exception as e:
            _errors.append(f"plugin {name!r} failed to register its {what}s: {type(e).__name__}: {e}")
            continue
        for obj in registered:
            if not isinstance(obj, kind):
                raise UsageError(f"plugin {origin!r} registered {obj!r}, which is not {kind_label}")
            if obj.name in seen:
                raise UsageError(
                    f"{what} name {obj.name!r} is registered twice (by {seen[obj.name]!r} and {origin!r})"
                )
            seen[obj.name] = origin
            out.append((obj, origin))
    return out


@lru_cache(maxsize=1)
def _registrations() -> tuple[tuple[Probe, str], ...]:
    """Every (probe, origin) pair, origin being the distribution (or plugin name) that registered it.

    Each plugin's hook is called on its own so that a name clash can name both plugins.
    """
    out = collect("register_probes", "probe", Probe, "an audit.Probe", {})
    return tuple(sorted(out, key=lambda pair: pair[0].name))


def installed_probes() -> dict[str, Probe]:
    """All registered probes by name, sorted by name."""
    return {probe.name: probe for probe, _ in _registrations()}


def probe_origins() -> dict[str, str]:
    """Probe name → the distribution that registered it (shown by `audit probes`)."""
    return {probe.name: origin for probe, origin in _registrations()}
