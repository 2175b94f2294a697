"""Parameters reach SQL (migration 3): results keep a parameters fingerprint and the entry's label; `metrics`
and `latest_metrics` carry them; two entries of one probe that differ only in parameters are both kept, and a
gate reads the entry it names."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import audit.catalog.store
from audit.api.errors import ConfigError
from audit.catalog.migrations import MIGRATIONS
from audit.catalog.store import Catalog, StoredResult
from audit.config import load_config
from audit.gates import evaluate
from audit.registry import installed_probes
from audit.specs import params_fingerprint, params_json

VERSION = next(i for i, (name, _) in enumerate(MIGRATIONS, start=1) if name == "parameters in SQL")
METRICS_V1 = ["run_id", "result_id", "probe", "model", "dataset", "metric", "value", "created_at", "probe_version"]


def _result(run: str, key: str, params: dict, value: float, entry: str = "") -> StoredResult:
    return StoredResult(
        run_id=run,
        cache_key=key,
        probe="cka",
        probe_version="1",
        params=params,
        models=[("m", "fpm")],
        datasets=[("d", "fpd")],
        status="ok",
        error=None,
        warnings=[],
        duration_s=0.1,
        device="cpu",
        metrics=[("accuracy", value, "m", "d")],
        arrays={},
        entry=entry,
    )


def test_the_fingerprint_is_the_sha256_of_the_stored_json():
    params = {"b": [1, 2.5], "a": "x é", "c": None}
    assert params_json(params) == '{"a": "x \\u00e9", "b": [1, 2.5], "c": null}'
    assert len(params_fingerprint(params)) == 16
    assert params_fingerprint(params) == params_fingerprint(dict(reversed(params.items())))  # order-free
    assert params_fingerprint({"a": 1}) != params_fingerprint({"a": 2})


def test_migration_backfills_older_results_and_latest_keeps_both_entries(tmp_path, monkeypatch):
    path = tmp_path / "c.duckdb"
    monkeypatch.setattr(audit.catalog.store, "MIGRATIONS", MIGRATIONS[: VERSION - 1])
    monkeypatch.setattr(audit.catalog.store, "_RESULT_COLUMNS", audit.catalog.store._RESULT_COLUMNS[:16])
    monkeypatch.setattr(audit.catalog.store, "_COMPLETE", "status = 'ok'")
    old = Catalog(path)
    run = old.start_run({})
    small, large = {"batch_size": 64}, {"batch_size": 512}
    old.record_result(_result(run, "k1", small, 0.5))
    old.record_result(_result(run, "k2", large, 0.7))  # newer: the only row the old latest_metrics kept
    assert old.query("select value from latest_metrics")[1] == [(0.7,)]
    monkeypatch.undo()

    new = Catalog(path)
    new.record_result(_result(new.start_run({}), "k3", {"batch_size": 8}, 0.9, entry="tiny"))
    cols, rows = new.query("select * from metrics order by value")
    assert cols[: len(METRICS_V1)] == METRICS_V1  # the contract: new columns only, at the end
    got = {r[cols.index("value")]: (r[cols.index("params_fingerprint")], r[cols.index("entry")]) for r in rows}
    assert got == {
        0.5: (params_fingerprint(small), "cka"),
        0.7: (params_fingerprint(large), "cka"),
        0.9: (params_fingerprint({"batch_size": 8}), "tiny"),
    }
    latest = new.query("select value, params from latest_metrics order by value")[1]
    assert [v for v, _ in latest] == pytest.approx([0.5, 0.7, 0.9])
    assert json.loads(latest[0][1]) == small


MINI = """
[models.m]
factory = "models:mlp"
[datasets.d]
factory = "models:data"
{probes}
{gates}
"""


def _config(tmp_path, probes: str, gates: str = ""):
    (tmp_path / "models.py").write_text(
        textwrap.dedent(
            """
            import numpy as np, torch
            def mlp():
                return torch.nn.Sequential(torch.nn.Linear(4, 3))
            def data():
                return {"x": np.zeros((8, 4), np.float32), "y": np.zeros(8, np.int64)}
            """
        )
    )
    path = tmp_path / "audit.toml"
    path.write_text(MINI.format(probes=probes, gates=gates))
    return load_config(path, installed_probes())


TWO_ENTRIES = """
[[probes]]
probe = "cka"
[[probes]]
probe = "cka"
params = {batch_size = 64}
"""


def test_entries_of_one_probe_with_different_params_get_distinct_labels(tmp_path):
    cfg = _config(tmp_path, TWO_ENTRIES)
    assert [e.label for e in cfg.probes] == ["cka", "cka(batch_size=64)"]
    assert len({e.params_fingerprint for e in cfg.probes}) == 2
    one = _config(tmp_path, '[[probes]]\nprobe = "cka"\nlabel = "main"')
    assert [e.label for e in one.probes] == ["main"]


def test_a_gate_on_a_probe_with_two_parameter_sets_must_name_its_entry(tmp_path):
    gate = '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = 0.5\n'
    with pytest.raises(ConfigError, match=r"gates\[0\].*entry = LABEL"):
        _config(tmp_path, TWO_ENTRIES, gate)
    with pytest.raises(ConfigError, match=r"gates\[0\]\.entry.*no \[\[probes\]\] entry"):
        _config(tmp_path, TWO_ENTRIES, gate + 'entry = "nope"\n')
    cfg = _config(tmp_path, TWO_ENTRIES, gate + 'entry = "cka(batch_size=64)"\n')
    assert cfg.gates[0].params_fingerprint == cfg.probes[1].params_fingerprint
    assert cfg.gates[0].label.startswith("cka(batch_size=64).accuracy")


def test_two_entries_may_not_share_a_label_with_different_params(tmp_path):
    probes = TWO_ENTRIES.replace('probe = "cka"\n', 'probe = "cka"\nlabel = "same"\n')
    with pytest.raises(ConfigError, match=r"probes\[1\]\.label.*also the label of probes\[0\]"):
        _config(tmp_path, probes)


def test_a_gate_reads_its_own_entry_not_the_latest_of_the_probe(tmp_path):
    gate = '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmin = 0.6\nentry = "{}"\n'
    cfg = _config(tmp_path, TWO_ENTRIES, gate.format("cka") + gate.format("cka(batch_size=64)"))
    cat = Catalog(tmp_path / "c.duckdb")
    run = cat.start_run({})
    defaults, small = cfg.probes[0], cfg.probes[1]
    cat.record_result(_result(run, "k1", defaults.params, 0.8, defaults.label))
    cat.record_result(_result(run, "k2", small.params, 0.4, small.label))  # newer, and failing
    verdicts = evaluate(cfg.gates, cat)
    assert [(v.gate.entry, v.status) for v in verdicts] == [("cka", "pass"), ("cka(batch_size=64)", "fail")]
    assert [v.value for v in verdicts] == pytest.approx([0.8, 0.4])
    assert np.isfinite([v.value for v in verdicts]).all()


def test_a_result_missing_metric_rows_is_not_a_cached_success(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    rid, _ = cat.record_result(_result(cat.start_run({}), "k", {}, 0.5))
    assert cat.cached_results(["k"]) == {"k": rid} and cat.cached_result("k") == rid
    with cat.writer() as con:  # what an incomplete import of an older shard could leave behind
        con.execute("delete from metric_values where result_id = ?", [rid])
    assert cat.cached_results(["k"]) == {} and cat.cached_result("k") is None
    assert cat.query("select n_metrics, n_arrays from results")[1] == [(1, 0)]


def _older_catalog(path, monkeypatch) -> None:
    """A catalog written by the model-audit before migration 3 (two results), then this version's code back."""
    monkeypatch.setattr(audit.catalog.store, "MIGRATIONS", MIGRATIONS[: VERSION - 1])
    monkeypatch.setattr(audit.catalog.store, "_RESULT_COLUMNS", audit.catalog.store._RESULT_COLUMNS[:16])
    monkeypatch.setattr(audit.catalog.store, "_COMPLETE", "status = 'ok'")
    old = Catalog(path)
    run = old.start_run({})
    defaults = installed_probes()["cka"].validate_params({})  # what a gate with no [[probes]] entry reads
    old.record_result(_result(run, "k1", defaults, 0.5))
    old.record_result(_result(run, "k2", {**defaults, "batch_size": 8}, 0.7))
    monkeypatch.undo()


def test_read_only_commands_upgrade_an_older_catalog_first(tmp_path, monkeypatch):
    """`audit gate`, `audit query` and the report only read — but they read columns migration 3 added: an
    older catalog is upgraded once (additively) instead of failing on a missing column."""
    from conftest import audit_cli

    path = tmp_path / "c.duckdb"
    _older_catalog(path, monkeypatch)
    r = audit_cli("query", "--catalog", str(path), "select count(distinct params_fingerprint) as n from metrics")
    assert r.returncode == 0, r.stderr
    assert "2" in r.stdout and "Traceback" not in r.stderr
    cat = Catalog(path)
    assert cat.query("select max(version) from schema_migrations")[1] == [(len(MIGRATIONS),)]
    _config(tmp_path, "", '[[gates]]\nprobe = "cka"\nmetric = "accuracy"\nmodel = "m"\ndataset = "d"\nmin = 0.4')
    gate = audit_cli("gate", "--config", str(tmp_path / "audit.toml"), "--catalog", str(path))
    assert gate.returncode == 0 and "Traceback" not in gate.stderr, gate.stdout + gate.stderr


def test_a_database_that_is_no_catalog_is_refused_untouched(tmp_path):
    import duckdb

    from conftest import audit_cli

    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("create table sales (x integer)")
    r = audit_cli("query", "--catalog", str(path), "select 1")
    assert r.returncode == 2 and r.stderr.strip().endswith("is not a model-audit catalog (no schema_migrations table)")
    assert len(r.stderr.strip().splitlines()) == 1
    with duckdb.connect(str(path), read_only=True) as con:
        assert [t for (t,) in con.execute("show tables").fetchall()] == ["sales"]  # nothing was added


def test_a_newer_catalog_is_one_line_from_read_only_commands(tmp_path):
    from conftest import audit_cli

    path = tmp_path / "c.duckdb"
    Catalog(path).start_run({})
    import duckdb

    with duckdb.connect(str(path)) as con:
        con.execute("insert into schema_migrations values (999, 'future', now())")
    r = audit_cli("query", "--catalog", str(path), "select 1")
    assert r.returncode == 2 and "newer than this model-audit knows" in r.stderr and "Traceback" not in r.stderr
