"""The command line as its ecosystem expects it (issue 18): machine-readable output (`--format json` on run,
gate, show, catalog import), logs that are not wrapped at 80 columns, one line per finished job when piped,
result ids where `audit show` needs them, `audit show` listing the latest results, `audit probes NAME`,
`audit run --dry-run`, shell completion, flags shown as flags, `-V`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import SUBPROCESS_ENV, audit_cli, run_audit


def _json(r) -> object:
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def test_run_json_names_every_job_and_its_result_id(mini_project):
    first = audit_cli("run", "--executor", "inline", "--format", "json", cwd=mini_project)
    summary = _json(first)
    assert summary["computed"] == 2 and summary["reused"] == 0 and summary["run_id"]
    assert {j["status"] for j in summary["jobs"]} == {"ok"}
    ids = {j["result_id"] for j in summary["jobs"]}
    assert len(ids) == 2 and all(ids)
    for job in summary["jobs"]:
        assert f"result {job['result_id']}" in first.stderr  # the log line names it too
    again = _json(audit_cli("run", "--executor", "inline", "-f", "json", cwd=mini_project))
    assert again["reused"] == 2 and {j["result_id"] for j in again["jobs"]} == ids


def test_dry_run_lists_jobs_and_writes_nothing(mini_project):
    catalog = mini_project / ".audit" / "catalog.duckdb"
    before = _json(audit_cli("run", "--dry-run", "--format", "json", cwd=mini_project))
    assert before["dry_run"] and before["to_run"] == 2 and before["cached"] == 0
    assert not catalog.exists()  # nothing created
    assert audit_cli("run", "--executor", "inline", cwd=mini_project).returncode == 0
    size, mtime = catalog.stat().st_size, catalog.stat().st_mtime_ns
    after = _json(audit_cli("run", "--dry-run", "-f", "json", cwd=mini_project))
    assert after["to_run"] == 0 and all(j["cached_result_id"] for j in after["jobs"])
    table = audit_cli("run", "--dry-run", cwd=mini_project)
    assert table.returncode == 0 and "0 job(s) to run, 2 held" in table.stdout
    forced = _json(audit_cli("run", "--dry-run", "--force", "-f", "json", cwd=mini_project))
    assert forced["to_run"] == 2
    assert (catalog.stat().st_size, catalog.stat().st_mtime_ns) == (size, mtime)


def test_show_lists_latest_results_and_speaks_json(mini_ran):
    listed = audit_cli("show", cwd=mini_ran)
    assert listed.returncode == 0 and "audit show ID" in listed.stdout
    rows = _json(audit_cli("show", "--format", "json", cwd=mini_ran))
    assert len(rows) == 2 and {r["probe"] for r in rows} == {"cka"}
    newest = rows[0]["result_id"]
    assert newest in listed.stdout
    one = _json(audit_cli("show", newest[:8], "-f", "json", cwd=mini_ran))
    assert one["result_id"] == newest and one["params"]["batch_size"] == 45
    assert any(m["metric"] == "accuracy" for m in one["metrics"])
    assert len(_json(audit_cli("show", "--limit", "1", "-f", "json", cwd=mini_ran))) == 1


def test_gate_json_has_every_verdict_and_the_exit_code(mini_ran):
    r = audit_cli("gate", "--format", "json", cwd=mini_ran)
    verdicts = _json(r)
    assert verdicts["exit_code"] == r.returncode
    assert {v["gate"] for v in verdicts["verdicts"]} == {"every layer has a defined CKA", "in-distribution accuracy"}
    accuracy = next(v for v in verdicts["verdicts"] if v["metric"] == "accuracy")
    assert accuracy["status"] == "pass" and accuracy["min"] == 0.7 and accuracy["value"] > 0.7
    assert "gate check(s) passed" in r.stderr  # stdout stays JSON


def test_catalog_import_json(mini_ran, tmp_path):
    assert audit_cli("catalog", "export", str(tmp_path / "shard"), cwd=mini_ran).returncode == 0
    other = tmp_path / "other.duckdb"
    first = _json(audit_cli("catalog", "import", str(tmp_path / "shard"), "--catalog", str(other), "-f", "json"))
    assert first["tables"]["results"] == {"added": 2, "skipped": 0}
    again = _json(audit_cli("catalog", "import", str(tmp_path / "shard"), "--catalog", str(other), "-f", "json"))
    assert again["tables"]["results"] == {"added": 0, "skipped": 2}


def test_probes_name_lists_parameters_with_types_defaults_and_descriptions():
    r = audit_cli("probes", "cka")
    assert r.returncode == 0
    for text in ("batch_size", "int", "256", ">= 4", "examples per minibatch", "unbiased | biased"):
        assert text in r.stdout
    described = _json(audit_cli("probes", "cka", "--format", "json"))
    assert described["name"] == "cka" and "accuracy" in described["key_metrics"]
    bad = audit_cli("probes", "ckaa")
    assert bad.returncode == 2 and "unknown probe 'ckaa'" in bad.stderr


def test_piped_output_is_not_wrapped_and_has_no_bars(mini_project):
    """A CI log: a long table row stays on one line, and `audit run` prints one line per job, no bar."""
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k != "COLUMNS"}
    probes = subprocess.run(
        [sys.executable, "-m", "audit.face.cli", "probes", "cka"], env=env, capture_output=True, text=True, timeout=120
    )
    row = next(line for line in probes.stdout.splitlines() if "batch_size" in line)
    assert "examples per minibatch (the HSIC estimate's batch)" in row  # the whole description, one line
    ran = run_audit("run", "--executor", "inline", cwd=mini_project, env={"COLUMNS": ""})
    assert ran.returncode == 0, ran.stderr
    lines = [line for line in ran.stderr.splitlines() if line.startswith("done ")]
    assert len(lines) == 2 and all(" result " in line for line in lines)
    assert "━" not in ran.stderr  # no progress bar in a log


def test_help_shows_flags_as_flags_and_version_short_option():
    r = audit_cli("run", "--help")
    assert r.returncode == 0 and "--force" in r.stdout and "--dry-run" in r.stdout
    assert "<bool>" not in r.stdout
    assert "<path>" in r.stdout  # options that take a value still say what
    v = audit_cli("-V")
    assert v.returncode == 0 and v.stdout.startswith("model-audit ")


def test_shell_completion_completes_commands(tmp_path):
    env = {**SUBPROCESS_ENV, "_AUDIT_COMPLETE": "complete_bash", "COMP_WORDS": "audit ru", "COMP_CWORD": "1"}
    script = "from audit.face.cli import main; import sys; sys.argv[0] = 'audit'; main()"
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["run"], r.stdout + r.stderr
    shown = audit_cli("--show-completion", "bash")
    assert "_audit_completion" in shown.stdout
    assert os.environ.get("_AUDIT_COMPLETE") is None
