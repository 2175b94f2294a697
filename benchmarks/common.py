"""Helpers shared by the benchmark scripts: loading our module under test, best-of-N timing, and the
versions of the packages compared.

Standard library only, so that a script may import it before it pins threads or imports NumPy. A script
run as ``python benchmarks/bench_x.py`` finds this module next to it (its folder is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_ours(module: str) -> ModuleType:
    """Our module ``model_audit_probes.<module>`` (e.g. ``"cka.hsic"``): the installed package if present, else
    the source file of this checkout (``plugins/cka/hsic.py``), so the project need not be installed in a
    benchmark's venv. The checkout's ``audit`` package is then put on the path too: the probes' mathematics
    imports the probe author's API (``audit.api``), which needs nothing beyond NumPy."""
    try:
        return importlib.import_module(f"model_audit_probes.{module}")
    except ImportError:
        if str(REPO) not in sys.path:
            sys.path.append(str(REPO))  # an installed `audit` still comes first
        name = "model_audit_bench_" + module.replace(".", "_")
        spec = importlib.util.spec_from_file_location(name, REPO / "plugins" / f"{module.replace('.', '/')}.py")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(loaded)
        return loaded


def best_time(fn: Callable[[], object], repeats: int, min_total: float = 0.2) -> tuple[float, int, object]:
    """Best wall time of `fn` over at least `repeats` calls, more while the calls took < `min_total` s."""
    best, count, total, out = math.inf, 0, 0.0, None
    while count < repeats or (total < min_total and count < 1000):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best, count, total = min(best, dt), count + 1, total + dt
    return best, count, out


def versions(*packages: str) -> dict[str, str]:
    """The installed version of each of `packages` that is installed (a report's provenance line)."""
    found = {}
    for pkg in packages:
        with contextlib.suppress(PackageNotFoundError):
            found[pkg] = version(pkg)
    return found
