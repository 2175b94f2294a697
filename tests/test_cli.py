"""The `audit` CLI end to end: real catalog files and exit codes, the commands run in this process (`audit_cli`)
on the mini project, and through the console script where the process itself is what is tested."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from conftest import SUBPROCESS_ENV, audit_cli


def q(project, sql, *fmt):
    return audit_cli("query", sql, *fmt, "--config", str(project / "audit.toml"))


def test_run_records_every_result_and_a_second_run_reuses_them(demo_ran):
    """On the demo project after `audit demo`: every probe's jobs ok; a rerun computes nothing; --force with a
    filter recomputes exactly the matching job (in worker processes of the default executor)."""
    out = q(
        demo_ran,
        "select probe, status, len(models) as models, len(datasets) as datasets from results "
        "order by probe, models, datasets",
        "--format",
        "json",
    )
    assert json.loads(out.stdout) == [
        {"probe": "cka", "status": "ok", "models": 1, "datasets": 2},
        {"probe": "cka", "status": "ok", "models": 2, "datasets": 1},
        {"probe": "embedding", "status": "ok", "models": 1, "datasets": 2},
        {"probe": "embedding", "status": "ok", "models": 1, "datasets": 2},  # the text instrument
        {"probe": "emulator", "status": "ok", "models": 2, "datasets": 2},
        {"probe": "entk", "status": "ok", "models": 1, "datasets": 3},
        {"probe": "trimmed_ks", "status": "ok", "models": 15, "datasets": 1},
    ]
    again = audit_cli("run", "--config", str(demo_ran / "audit.toml"))
    assert again.returncode == 0 and "0 computed, 7 reused" in again.stderr
    forced = audit_cli("run", "--config", str(demo_ran / "audit.toml"), "--force", "--model", "mlp_b")
    assert forced.returncode == 0 and "1 computed, 0 reused" in forced.stderr, forced.stderr
    runs = q(
        demo_ran, "select status, computed, reused from run_summary order by started_at", "--format", "csv"
    )
    assert runs.stdout.splitlines()[1:] == ["ok,7,0", "ok,0,7", "ok,1,0"]


def test_a_rerun_of_the_mini_project_reuses_and_force_recomputes_what_the_filter_names(mini_ran):
    config = str(mini_ran / "audit.toml")
    again = audit_cli("run", "--config", config, "-x", "inline")
    assert again.returncode == 0 and "0 computed, 2 reused" in again.stderr, again.stderr
    forced = audit_cli("run", "--config", config, "-x", "inline", "--force", "--model", "mlp_b")
    assert forced.returncode == 0 and "1 computed, 0 reused" in forced.stderr, forced.stderr
    runs = q(
        mini_ran, "select status, computed, reused from run_summary order by started_at", "--format", "csv"
    )
    assert runs.stdout.splitlines()[1:] == ["ok,2,0", "ok,0,2", "ok,1,0"]


def test_query_formats(mini_catalog):
    sql = (
        "select model, dataset, metric, value from metrics where metric = 'accuracy' order by model, dataset"
    )
    as_json = json.loads(q(mini_catalog, sql, "--format", "json").stdout)
    as_csv = list(csv.DictReader(io.StringIO(q(mini_catalog, sql, "--format", "csv").stdout)))
    assert [r["model"] for r in as_json] == [r["model"] for r in as_csv]
    assert {(r["model"], r["dataset"]) for r in as_json} >= {
        ("mlp_a", "digits_test"),
        ("mlp_b", "digits_test"),
    }
    # csv prints the float with repr precision; its round trip is exact up to the last digit printed
    assert float(as_csv[0]["value"]) == pytest.approx(as_json[0]["value"], rel=1e-12)
    table = q(mini_catalog, sql)
    assert table.returncode == 0 and "digits_test" in table.stdout and "accuracy" in table.stdout


def test_query_refuses_writes_with_exit_2_and_changes_nothing(mini_ran):
    before = q(mini_ran, "select count(*) as n from metric_values", "--format", "csv").stdout
    for sql in ("delete from metric_values", "drop view metrics", "create table x(a int)"):
        r = q(mini_ran, sql)
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1 and "read-only" in r.stderr
        assert "Traceback" not in r.stderr
    assert q(mini_ran, "select count(*) as n from metric_values", "--format", "csv").stdout == before


FAILING_GATE = '\n[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmodel = "mlp_a"\ndataset = "digits_rotated"\nmin = 0.9\n'


def test_gate_exit_codes_junit_and_markdown(mini_ran, tmp_path):
    config = mini_ran / "audit.toml"
    reports = ("--junit", str(tmp_path / "j.xml"), "--markdown", str(tmp_path / "g.md"))
    ok = audit_cli("gate", "--config", str(config), *reports)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("failures") == "0"
    assert "all gates pass" in (tmp_path / "g.md").read_text()

    config.write_text(config.read_text() + FAILING_GATE)  # the OOD digits are rotated: accuracy near chance
    failed = audit_cli("gate", "--config", str(config), *reports)
    assert failed.returncode == 1
    md = (tmp_path / "g.md").read_text()
    assert "❌ fail" in md and "mlp_a | digits_rotated" in md and ">= 0.9" in md
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("failures") == "1"

    config.write_text(config.read_text() + '\n[[gates]]\nprobe = "cka"\nmetric = "accuracy"\n')
    bad = audit_cli("gate", "--config", str(config))
    assert bad.returncode == 2 and re.search(r"gates\[\d+\]: a gate needs min and/or max", bad.stderr)


def console_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `audit` console script (audit.face.cli:main), as a user runs it."""
    script = Path(sys.executable).with_name("audit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "audit.face.cli"]
    return subprocess.run(
        [*command, *args], cwd=cwd, env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # three real processes
def test_the_console_script_exits_0_1_and_2_with_one_line_on_stderr(mini_ran):
    """What CI sees: the process's own exit code for a passing gate, a failing gate and a bad config."""
    (mini_ran / "failing.toml").write_text((mini_ran / "audit.toml").read_text() + FAILING_GATE)
    passed = console_script("gate", cwd=mini_ran)
    assert passed.returncode == 0, passed.stderr
    failed = console_script("gate", "--config", "failing.toml", cwd=mini_ran)
    assert failed.returncode == 1 and failed.stderr.strip().splitlines() == ["4 of 5 gate check(s) passed"]
    bad = console_script("gate", "--config", "nope.toml", cwd=mini_ran)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "file not found" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--config", "nope.toml"], "file not found"),
        (["run", "--device", "cuda:7"], "cuda"),
        (["run", "--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
        (["run", "nosuchprobe"], "unknown probe 'nosuchprobe'"),
        (["run", "--model", "ghost"], "unknown model 'ghost'"),
        (["query", "select * from nosuchtable"], "query failed"),
        (["query", "select 1", "--catalog", "/nonexistent/c.duckdb"], "no catalog"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(mini_project, args, message):
    if args[0] == "query" and "nosuchtable" in args[1]:  # a catalog that exists, with no such table
        assert audit_cli("run", "-x", "inline", cwd=mini_project).returncode == 0
    r = audit_cli(*args, cwd=mini_project)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "executor", ["inline", pytest.param("local", marks=pytest.mark.slow)]
)
def test_weights_that_do_not_fit_stop_the_run_with_exit_2_and_keep_the_catalog(mini_ran, executor):
    """The model is loaded where the job runs: in this process, or in a worker that reports the error back."""
    config = mini_ran / "audit.toml"
    before = q(mini_ran, "select count(*) from results", "--format", "csv").stdout
    assert "kwargs = { width = 32" in config.read_text()
    config.write_text(config.read_text().replace("kwargs = { width = 32", "kwargs = { width = 33"))
    r = audit_cli("run", "--config", str(config), "--executor", executor)
    assert r.returncode == 2
    assert "do not fit the module" in r.stderr and "Traceback" not in r.stderr
    assert q(mini_ran, "select count(*) from results", "--format", "csv").stdout == before


def test_probes_lists_parameters():
    r = audit_cli("probes", "--format", "json")
    cka = next(p for p in json.loads(r.stdout) if p["name"] == "cka")
    params = {p["name"]: p for p in cka["params"]}
    assert params["batch_size"]["default"] == 256 and params["batch_size"]["min"] == 4
    assert params["estimator"]["choices"] == ["unbiased", "biased"]
    assert cka["needs"] == {"models": [1, 2], "datasets": [1, 2], "gpus": 1.0}
    table = audit_cli("probes")
    assert table.returncode == 0 and "cka" in table.stdout and "batch_size" in table.stdout


def test_query_table_prints_brackets_in_values_literally(tmp_path):
    from audit.catalog.store import Catalog

    catalog = tmp_path / "c.duckdb"
    Catalog(catalog).start_run({})  # creates the schema
    r = audit_cli("query", "select 'w[hidden.weight].spikes' as m, '[bold]x' as n", "--catalog", str(catalog))
    assert r.returncode == 0, r.stderr
    assert "w[hidden.weight].spikes" in r.stdout and "[bold]x" in r.stdout
