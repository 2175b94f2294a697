"""Faults: a run killed mid-way resumes without duplicates; concurrent writers never duplicate a result;
a probe that raises records its error and the run goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from audit.catalog.store import Catalog
from conftest import SUBPROCESS_ENV, audit_cli, run_audit
from external_plugin import install_external_plugin

# every test here needs real processes: a run killed mid-way, two runs at once, a plugin on PYTHONPATH
pytestmark = pytest.mark.slow

SLOW_ENTRY = (
    '\n[[probes]]\nprobe = "output_mean"\nmodels = ["mlp_a", "mlp_b"]\ndatasets = ["digits_test", "digits_rotated"]\n'
    "params = {{ sleep = {sleep}{extra} }}\n"
)


def slow_project(mini_project, tmp_path, sleep: float, extra: str = ""):
    """The mini project with only the external `output_mean` probe: 2 models × 2 datasets = 4 jobs."""
    site = install_external_plugin(tmp_path / "site")
    config = mini_project / "audit.toml"
    text = config.read_text()
    text = text[: text.index("[[probes]]")]  # drop the cka entries and gates
    config.write_text(text + SLOW_ENTRY.format(sleep=sleep, extra=extra))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return config, env


def results(config) -> list[dict]:
    r = audit_cli(
        "query", "select cache_key, status, run_id from results", "--format", "json", "--config", str(config)
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_killing_audit_run_mid_way_then_rerunning_completes_without_duplicates(mini_project, tmp_path):
    config, env = slow_project(mini_project, tmp_path, sleep=1.5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit.face.cli", "run", "--config", str(config)],
        env={**SUBPROCESS_ENV, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    catalog = Catalog(mini_project / ".audit" / "catalog.duckdb", wait_s=30)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if catalog.path.exists():
            try:
                done = catalog.query("select count(*) from results")[1][0][0]
            except Exception:  # the tables may not exist yet in the first instants
                continue
            if done >= 1:
                break
    assert proc.poll() is None, "the run finished before it could be killed; raise the sleep"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = results(config)
    assert 1 <= len(killed) < 4 and all(r["status"] == "ok" for r in killed)

    again = run_audit("run", "--config", str(config), env=env)
    assert again.returncode == 0, again.stderr
    assert f"{4 - len(killed)} computed, {len(killed)} reused" in again.stderr
    final = results(config)
    assert len(final) == 4 and len({r["cache_key"] for r in final}) == 4
    runs = audit_cli(
        "query",
        "select status from run_summary order by started_at",
        "--format",
        "csv",
        "--config",
        str(config),
    )
    assert runs.stdout.split() == ["status", "interrupted", "ok"]


def test_two_concurrent_runs_store_every_result_exactly_once(mini_project, tmp_path):
    config, env = slow_project(mini_project, tmp_path, sleep=0.3)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "audit.face.cli", "run", "--config", str(config)],
            env={**SUBPROCESS_ENV, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    final = results(config)
    ok = [r for r in final if r["status"] == "ok"]
    assert len(ok) == 4 and len({r["cache_key"] for r in ok}) == 4
    # a reader during neither run still works
    assert audit_cli("query", "select count(*) from metrics", "--config", str(config)).returncode == 0


def test_a_probe_that_raises_records_its_error_and_the_run_continues(mini_project, tmp_path):
    config, env = slow_project(mini_project, tmp_path, sleep=0, extra=', fail_on = "mlp_b"')
    r = run_audit("run", "--config", str(config), env=env)
    assert r.returncode == 1
    assert "2 computed, 0 reused from the catalog, 2 failed" in r.stderr
    rows = json.loads(
        audit_cli(
            "query",
            "select status, error from results order by status",
            "--format",
            "json",
            "--config",
            str(config),
        ).stdout
    )
    assert [x["status"] for x in rows] == ["error", "error", "ok", "ok"]
    assert "deliberate failure for mlp_b" in rows[0]["error"]
    # errors are not cached: the next run reuses the successes and retries (here: fails) only the failed jobs
    again = run_audit("run", "--config", str(config), env=env)
    assert again.returncode == 1
    assert "0 computed, 2 reused from the catalog, 2 failed" in again.stderr
