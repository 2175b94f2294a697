"""Start-up: the commands that need no probe computation import no torch, SciPy or probe mathematics.

Each case runs `audit ARGS` in a fresh process (``python -c``: import the CLI, call ``main()`` as the console
script does) and reads ``sys.modules`` afterwards. What is asserted is which modules were imported, never a
wall time (timings belong to the machine; an import that should not happen is a fact):

- `--help` and `--version` load the plugins (their commands appear in the help) but register no probe:
  no torch, NumPy, SciPy, DuckDB or matplotlib, and no module of a plugin beyond its ``__init__``;
- `query` opens the catalog (DuckDB) and registers no probe;
- `gate` and `probes` register the probes (a gate's config validates every ``[[probes]]`` entry's parameters
  against the probe's declaration, and its ``[executor]`` table against the installed executors), which
  imports each probe's and executor's declaration module and nothing it computes with: no torch, SciPy or
  NumPy, no worker;
- `report` draws figures with matplotlib and NumPy, but imports no torch or SciPy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SUBPROCESS_ENV

# runs `audit ARGV` like the console script, then writes the exit code and the imported modules to OUT
SCRIPT = """
import json, sys
argv, out = json.loads(sys.argv[1]), sys.argv[2]
from audit.face.cli import main
sys.argv = ["audit", *argv]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""

HEAVY = ("torch", "numpy", "scipy", "duckdb", "matplotlib", "sklearn", "safetensors", "transformers")
# what a probe or executor is declared from: registering imports these modules of a plugin and no other
DECLARATION = ("probe", "choices", "executor")
# what registering the executors imports of the runner: their declarations, never the worker or the sources
REGISTRATION = ("audit.run", "audit.run.executors")


def start(args: list[str], cwd: Path, tmp_path: Path, env: dict | None = None) -> tuple[int, set[str], str]:
    """(exit code, imported modules, stdout + stderr) of `audit ARGS` in a fresh process."""
    out = tmp_path / "modules.json"
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(args), str(out)],
        cwd=cwd,
        env={**SUBPROCESS_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), r.stdout + r.stderr
    found = json.loads(out.read_text())
    return found["code"], set(found["modules"]), r.stdout + r.stderr


def imported(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if p in modules)


def plugin_modules(modules: set[str]) -> list[str]:
    """Modules of the built-in plugins beyond their packages (`model_audit_probes.cka` is the plugin itself)."""
    return sorted(m for m in modules if m.startswith("model_audit_probes.") and m.count(".") >= 2)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_no_heavy_module_and_register_no_probe(flag, tmp_path):
    code, modules, output = start([flag], tmp_path, tmp_path)
    assert code == 0, output
    assert imported(modules, HEAVY) == []
    assert plugin_modules(modules) == []
    assert "model_audit_probes.cka" in modules  # the plugins are loaded: their commands are in the help
    assert not any(m.startswith(("audit.run", "audit.catalog.", "audit.face.report")) for m in modules)
    assert ("model-audit" in output) if flag == "--version" else ("gate" in output and "query" in output)


def test_query_opens_the_catalog_and_registers_no_probe(mini_catalog, tmp_path):
    code, modules, output = start(["query", "select count(*) as n from metrics"], mini_catalog, tmp_path)
    assert code == 0, output
    assert "duckdb" in modules
    assert imported(modules, HEAVY) == ["duckdb"]
    assert plugin_modules(modules) == []
    assert not any(m.startswith("audit.run") for m in modules)


@pytest.mark.parametrize("args", [["gate"], ["probes", "--format", "json"]])
def test_registering_the_probes_imports_their_declarations_only(args, mini_catalog, tmp_path):
    code, modules, output = start(args, mini_catalog, tmp_path)
    assert code == 0, output
    assert imported(modules, ("torch", "scipy", "numpy", "matplotlib")) == []
    assert "model_audit_probes.cka.probe" in modules  # registered: gate validates the [[probes]] parameters
    assert [m for m in plugin_modules(modules) if m.rsplit(".", 1)[1] not in DECLARATION] == []
    assert [m for m in modules if m.startswith("audit.run") and m not in REGISTRATION] == []
    assert "audit.api.context" not in modules
    if args == ["gate"]:
        assert "gate check(s) passed" in output


def test_report_draws_with_matplotlib_and_imports_no_torch(mini_catalog, tmp_path):
    code, modules, output = start(["report", "--out", str(tmp_path / "r.html")], mini_catalog, tmp_path)
    assert code == 0, output
    assert "matplotlib" in modules and (tmp_path / "r.html").exists()  # the CKA figures were drawn
    assert imported(modules, ("torch", "scipy")) == []
    assert [m for m in modules if m.startswith("audit.run") and m not in REGISTRATION] == []


def test_a_plugin_that_fails_to_register_warns_when_the_probes_are_registered(tmp_path):
    """Registering is deferred to the commands that use probes; its failures still reach the user, once."""
    site = tmp_path / "site"
    info = site / "failing_probe-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "failing_probe.py").write_text(
        "from audit import hookimpl\n\n\n"
        "@hookimpl\n"
        "def register_probes(register):\n"
        "    raise RuntimeError('cannot declare my probe')\n"
    )
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-probe\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[model_audit]\nfailing = failing_probe\n")
    env = {"PYTHONPATH": str(site)}
    warning = "warning: plugin 'failing' failed to register its probes: RuntimeError: cannot declare my probe"

    code, modules, output = start(["probes", "--format", "json"], tmp_path, tmp_path, env)
    assert code == 0, output
    assert output.count(warning) == 1, output
    assert "cka" in output

    code, modules, output = start(["--version"], tmp_path, tmp_path, env)
    assert code == 0 and "failing_probe" in modules  # loaded, but nothing registered: nothing to warn about
    assert warning not in output
