"""The `audit` CLI end to end on the demo project: real subprocesses, real catalog files, real exit codes."""

from __future__ import annotations

import csv
import io
import json
import re
from xml.etree import ElementTree as ET

import pytest

from conftest import run_audit


@pytest.fixture
def ran(demo_project):
    """The demo project after one `audit run`."""
    r = run_audit("run", "--config", str(demo_project / "audit.toml"))
    assert r.returncode == 0, r.stderr
    return demo_project


def q(project, sql, *fmt):
    return run_audit("query", sql, *fmt, "--config", str(project / "audit.toml"))


def test_run_records_every_result_and_a_second_run_reuses_them(ran):
    out = q(
        ran,
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
    again = run_audit("run", "--config", str(ran / "audit.toml"))
    assert again.returncode == 0 and "0 computed, 7 reused" in again.stderr
    forced = run_audit("run", "--config", str(ran / "audit.toml"), "--force", "--model", "mlp_b")
    assert "1 computed, 0 reused" in forced.stderr
    runs = q(ran, "select status, computed, reused from run_summary order by started_at", "--format", "csv")
    assert runs.stdout.splitlines()[1:] == ["ok,7,0", "ok,0,7", "ok,1,0"]


def test_query_formats(ran):
    sql = (
        "select model, dataset, metric, value from metrics where metric = 'accuracy' order by model, dataset"
    )
    as_json = json.loads(q(ran, sql, "--format", "json").stdout)
    as_csv = list(csv.DictReader(io.StringIO(q(ran, sql, "--format", "csv").stdout)))
    assert [r["model"] for r in as_json] == [r["model"] for r in as_csv]
    assert {(r["model"], r["dataset"]) for r in as_json} >= {
        ("mlp_a", "digits_test"),
        ("mlp_b", "digits_test"),
    }
    assert float(as_csv[0]["value"]) == pytest.approx(as_json[0]["value"])
    table = q(ran, sql)
    assert table.returncode == 0 and "digits_test" in table.stdout and "accuracy" in table.stdout


def test_query_refuses_writes_with_exit_2_and_changes_nothing(ran):
    before = q(ran, "select count(*) as n from metric_values", "--format", "csv").stdout
    for sql in ("delete from metric_values", "drop view metrics", "create table x(a int)"):
        r = q(ran, sql)
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1 and "read-only" in r.stderr
        assert "Traceback" not in r.stderr
    assert q(ran, "select count(*) as n from metric_values", "--format", "csv").stdout == before


def test_gate_exit_codes_junit_and_markdown(ran, tmp_path):
    ok = run_audit(
        "gate",
        "--config",
        str(ran / "audit.toml"),
        "--junit",
        str(tmp_path / "j.xml"),
        "--markdown",
        str(tmp_path / "g.md"),
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("failures") == "0"
    assert "all gates pass" in (tmp_path / "g.md").read_text()

    config = ran / "audit.toml"
    config.write_text(
        config.read_text()
        + '\n[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmodel = "mlp_a"\ndataset = "digits_rotated"\nmin = 0.9\n'
    )
    failed = run_audit(
        "gate",
        "--config",
        str(config),
        "--junit",
        str(tmp_path / "j.xml"),
        "--markdown",
        str(tmp_path / "g.md"),
    )
    assert failed.returncode == 1
    md = (tmp_path / "g.md").read_text()
    assert "❌ fail" in md and "mlp_a | digits_rotated" in md and ">= 0.9" in md
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").get("failures") == "1"

    config.write_text(config.read_text() + '\n[[gates]]\nprobe = "cka"\nmetric = "accuracy"\n')
    bad = run_audit("gate", "--config", str(config))
    assert bad.returncode == 2 and re.search(r"gates\[\d+\]: a gate needs min and/or max", bad.stderr)


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
def test_bad_input_is_one_line_and_exit_2(demo_project, args, message):
    r = run_audit(*args, cwd=demo_project)
    if args[0] == "query" and "nosuchtable" in args[1]:
        run_audit("run", cwd=demo_project)
        r = run_audit(*args, cwd=demo_project)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_weights_that_do_not_fit_stop_the_run_with_exit_2_and_keep_the_catalog(ran):
    config = ran / "audit.toml"
    before = q(ran, "select count(*) from results", "--format", "csv").stdout
    config.write_text(config.read_text().replace("kwargs = { width = 96", "kwargs = { width = 97"))
    r = run_audit("run", "--config", str(config))
    assert r.returncode == 2
    assert "do not fit the module" in r.stderr and "Traceback" not in r.stderr
    assert q(ran, "select count(*) from results", "--format", "csv").stdout == before


def test_probes_lists_parameters(tmp_path):
    r = run_audit("probes", "--format", "json")
    cka = next(p for p in json.loads(r.stdout) if p["name"] == "cka")
    params = {p["name"]: p for p in cka["params"]}
    assert params["batch_size"]["default"] == 256 and params["batch_size"]["min"] == 4
    assert params["estimator"]["choices"] == ["unbiased", "biased"]
    assert cka["needs"] == {"models": [1, 2], "datasets": [1, 2], "gpus": 1.0}
    table = run_audit("probes")
    assert table.returncode == 0 and "cka" in table.stdout and "batch_size" in table.stdout


def test_query_table_prints_brackets_in_values_literally(tmp_path):
    from audit.catalog import Catalog

    catalog = tmp_path / "c.duckdb"
    Catalog(catalog).start_run({})  # creates the schema
    r = run_audit("query", "select 'w[hidden.weight].spikes' as m, '[bold]x' as n", "--catalog", str(catalog))
    assert r.returncode == 0, r.stderr
    assert "w[hidden.weight].spikes" in r.stdout and "[bold]x" in r.stdout
