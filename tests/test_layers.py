"""The architecture, checked from the source: no import cycle in `audit/`, and arrows that point one way.

Every import counts — at module level, inside functions (a lazy import is still a dependency) and under
``if TYPE_CHECKING:`` (an annotation that names a module is a dependency of the reader too), and a package's
``__init__`` counts as a module: a submodule importing its package while the package imports it is a
cycle. The layers (README, Architecture):

    audit.api       what a probe author imports; imports nothing else of `audit`
    audit.specs     plain data; imports nothing else of `audit`
    audit.catalog   storage; never imports the runner or the face
    audit.run       planning, driver, worker, executors; never imports the face
    audit.face      the command line, display, report, demo; nothing outside it imports it
    model_audit_probes (plugins/)  the built-in probes: only `audit`, `audit.api` and their own modules
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "plugins"):
        parts = ("model_audit_probes", *path.relative_to(ROOT / "plugins").with_suffix("").parts)
    else:
        parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            parts = name.split(".")
            for k in range(len(parts), 0, -1):
                candidate = ".".join(parts[:k])
                if candidate in known:
                    found.add(candidate)
                    break
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = [*ROOT.joinpath("audit").rglob("*.py"), *ROOT.joinpath("plugins").rglob("*.py")]
    files = [f for f in files if "templates" not in f.parts]
    known = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, known) - {_module_name(f)} for f in files}


def test_no_import_cycle(graph):
    edges = {m: {t for t in ts if t.startswith("audit")} for m, ts in graph.items() if m.startswith("audit")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def _violations(graph, source_prefixes, forbidden_prefixes, allowed=()) -> list[str]:
    out = []
    for m, targets in graph.items():
        if not any(m == p or m.startswith(p + ".") for p in source_prefixes):
            continue
        for t in targets:
            if t in allowed:
                continue
            if any(t == p or t.startswith(p + ".") for p in forbidden_prefixes):
                out.append(f"{m} imports {t}")
    return sorted(out)


def test_the_probe_api_imports_nothing_else_of_audit(graph):
    others = ["audit.run", "audit.catalog", "audit.face", "audit.config", "audit.gates", "audit.registry"]
    assert _violations(graph, ["audit.api", "audit.specs"], others) == []


def test_nothing_below_the_face_imports_it(graph):
    below = ["audit.api", "audit.specs", "audit.run", "audit.catalog", "audit.config", "audit.gates",
             "audit.registry", "model_audit_probes"]
    assert _violations(graph, below, ["audit.face"]) == []


def test_storage_and_running_stay_apart(graph):
    assert _violations(graph, ["audit.catalog"], ["audit.run", "audit.gates"]) == []


def test_a_worker_reads_no_config_and_opens_no_catalog(graph):
    """A job is data: the worker imports the probe contract, the plugin manager and the sources only."""
    assert _violations(graph, ["audit.run.worker", "audit.run.sources", "audit.run.libraries"],
                       ["audit.config", "audit.catalog", "audit.run.runner", "audit.run.plan"]) == []


def test_probes_import_only_the_api(graph):
    assert _violations(
        graph, ["model_audit_probes"],
        ["audit.run", "audit.catalog", "audit.face", "audit.config", "audit.gates"],
        allowed={"audit.run.worker", "audit.run.executors"},  # the ray executor plugin implements the contract
    ) == []
