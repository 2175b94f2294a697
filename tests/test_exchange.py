"""`audit catalog export|import`: exact round trips, idempotent merges of shards, clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from audit.api.errors import UsageError
from audit.catalog import exchange
from audit.catalog.exchange import export_catalog, import_catalog, import_catalogs
from audit.catalog.migrations import MIGRATIONS
from audit.catalog.store import Catalog, StoredResult
from conftest import audit_cli

TABLES = (
    "runs", "run_ends", "models", "datasets", "results", "metric_values", "arrays", "model_outputs", "run_reuses",
    "accepted",
)
PAYLOAD_NAN = np.frombuffer(np.uint64(0x7FF8_0000_0000_0001).tobytes(), dtype=np.float64)[0]


def stored(
    run_id: str, key: str, *, status: str = "ok", model: str = "m1", **arrays: np.ndarray
) -> StoredResult:
    return StoredResult(
        run_id=run_id,
        cache_key=key,
        probe="p",
        probe_version="1",
        params={"key": key, "nested": [1, 2.5, None]},
        models=[(model, f"fp-{model}")],
        datasets=[("d", "fp-d"), ("d_ood", "fp-d_ood")],
        status=status,
        error=None if status == "ok" else "boom",
        warnings=["careful"] if status == "ok" else [],
        duration_s=0.25 if status == "ok" else -0.0,
        device="cpu",
        metrics=[
            ("x", 1.5, None, None),
            ("neg_zero", -0.0, None, "d_ood"),
            ("nan", float("nan"), model, None),
        ]
        + [(f"m{i:03d}", i / 7, None, None) for i in range(50)],
        arrays=arrays,
    )


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.normal(size=(3, 4)).astype(np.float32),
        "f64": np.array([np.pi, np.nan, -np.inf, -0.0, 0.0, 1e-310, PAYLOAD_NAN]),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "scalar": np.array(-0.0),
        "empty": np.zeros((0, 3)),
        "names": np.array(["layer.0", "output", "it's"], dtype=object),
        "big": rng.normal(size=5000),
    }


@pytest.fixture
def source(tmp_path: Path) -> tuple[Catalog, dict[str, str]]:
    """A catalog with two runs: ok, failed and force-recomputed results, sources, cached outputs."""
    cat = Catalog(tmp_path / "source" / "catalog.duckdb")
    run1 = cat.start_run({"tool_version": "t", "argv": "audit run", "host": "node-a"})
    cat.record_sources("models", [("fp-m1", "m1", {"factory": "f:g"}, None)])
    cat.record_sources("datasets", [("fp-d", "d", {"path": "d.npz"}, 100), ("fp-d_ood", "d_ood", {}, 50)])
    first, _ = cat.record_result(stored(run1, "k1", **arrays()))
    cat.record_result(stored(run1, "k2", status="error"))
    forced, written = cat.record_result(stored(run1, "k1", **arrays()), force=True)  # `audit run --force`
    assert written
    cat.store_outputs("fp-m1", "fp-d", "logits", np.array([[-0.0, np.nan], [1.0, PAYLOAD_NAN]]))
    cat.finish_run(run1, "failed", 2, 0, 1)
    run2 = cat.start_run({"tool_version": "t", "argv": "audit run --model m2"})  # never finished
    cat.record_sources("models", [("fp-m2", "m2", {}, None)])
    third, _ = cat.record_result(stored(run2, "k3", model="m2", **arrays()))
    cat.store_outputs("fp-m2", "fp-d", "logits", np.ones(3))
    cat.store_outputs("fp-m9", "fp-d", "logits", np.ones(2))  # a model no result of run2 used
    return cat, {"run1": run1, "run2": run2, "first": first, "forced": forced, "third": third}


def rows(cat: Catalog, table: str) -> list[str]:
    """A table's rows, sorted, as reprs: -0.0 and NaN compare as they print."""
    return sorted(repr(r) for r in cat.query(f"select * from {table}")[1])


def snapshot(cat: Catalog) -> dict[str, list[str]]:
    return {t: rows(cat, t) for t in TABLES}


def test_export_then_import_into_a_new_catalog_reproduces_every_table(source, tmp_path):
    src, ids = source
    counts = export_catalog(src, tmp_path / "export")
    assert set(counts) == set(TABLES)  # discovered from the schema, schema_migrations left out
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["schema_version"] == len(MIGRATIONS) and manifest["tables"] == counts
    assert manifest["format_version"] == exchange.FORMAT_VERSION and manifest["tool_version"]
    assert counts["results"] == 4 and counts["metric_values"] == 4 * 53

    dst = Catalog(tmp_path / "new" / "dir" / "catalog.duckdb")  # does not exist yet: created and migrated
    report = import_catalog(dst, tmp_path / "export")
    assert report.added == counts and report.rows_skipped == 0 and report.duplicate_jobs == 0
    assert snapshot(dst) == snapshot(src)
    for rid in (ids["first"], ids["forced"], ids["third"]):
        want, got = src.load_arrays(rid), dst.load_arrays(rid)
        assert list(got) == list(want)  # order kept too
        for name, a in want.items():
            assert got[name].dtype == a.dtype and got[name].shape == a.shape
            if a.dtype.kind == "O":
                assert got[name].tolist() == a.tolist()
            else:
                assert got[name].tobytes() == a.tobytes()  # bit-exact: -0.0, NaN payloads, subnormals
    logits = dst.cached_outputs("fp-m1", "fp-d", "logits")
    assert logits.tobytes() == src.cached_outputs("fp-m1", "fp-d", "logits").tobytes()
    (view,) = dst.result_views([ids["first"]])
    assert [m.name for m in view.metrics] == [m.name for m in src.result_views([ids["first"]])[0].metrics]
    # the forced recomputation is kept, and stays the latest
    assert dst.query("select count(*) from results where cache_key = 'k1' and status = 'ok'")[1] == [(2,)]
    assert dst.query("select result_id from latest_metrics where metric = 'x' and model = 'm1'")[1] == [
        (ids["forced"],)
    ]


def test_importing_the_same_export_twice_adds_nothing(source, tmp_path):
    src, _ = source
    export_catalog(src, tmp_path / "export")
    dst = Catalog(tmp_path / "dst.duckdb")
    import_catalog(dst, tmp_path / "export")
    before = snapshot(dst)
    again = import_catalog(dst, tmp_path / "export")
    assert again.rows_added == 0 and again.added == dict.fromkeys(TABLES, 0)
    assert again.skipped == {t: len(before[t]) for t in TABLES}
    assert snapshot(dst) == before
    twice = import_catalogs(dst, [tmp_path / "export", tmp_path / "export"])  # one call, the same dir twice
    assert twice.rows_added == 0 and snapshot(dst) == before


def worker_shard(tmp_path: Path, name: str, keys: list[str]) -> tuple[Path, list[str]]:
    """A worker's own catalog with one run computing ``keys``, exported as a shard."""
    cat = Catalog(tmp_path / name / "catalog.duckdb")
    run = cat.start_run({"host": name})
    rids = [cat.record_result(stored(run, key, matrix=np.eye(3)))[0] for key in keys]
    cat.finish_run(run, "ok", len(keys), 0, 0)
    export_catalog(cat, tmp_path / f"{name}-shard")
    return tmp_path / f"{name}-shard", rids


@pytest.mark.parametrize("one_call", [True, False])
def test_two_shards_with_the_same_job_keep_one_result(tmp_path, one_call):
    a, (a_shared, a_only) = worker_shard(tmp_path, "node-a", ["shared", "only-a"])
    b, (b_shared, b_only) = worker_shard(tmp_path, "node-b", ["shared", "only-b"])  # retried on node b
    assert a_shared != b_shared
    driver = Catalog(tmp_path / "driver.duckdb")
    if one_call:
        report = import_catalogs(driver, [a, b])
    else:
        import_catalog(driver, a)
        report = import_catalog(driver, b)
    assert report.duplicate_jobs == 1
    _, found = driver.query("select cache_key, count(*) from results group by 1 order by 1")
    assert found == [("only-a", 1), ("only-b", 1), ("shared", 1)]
    _, kept = driver.query("select distinct result_id from metric_values")
    assert {r[0] for r in kept} == {a_shared, a_only, b_only}  # the skipped result brought no metrics
    assert driver.query("select count(*) from arrays")[1] == [(3,)]
    assert driver.query("select count(*) from runs")[1] == [(2,)]  # both runs are recorded
    assert import_catalogs(driver, [b, a]).rows_added == 0


def test_export_of_one_run_holds_only_its_rows(source, tmp_path):
    src, ids = source
    counts = export_catalog(src, tmp_path / "run2", run_ids=[ids["run2"]])
    assert counts["runs"] == 1 and counts["run_ends"] == 0 and counts["results"] == 1
    assert counts["metric_values"] == 53 and counts["arrays"] == len(arrays())
    dst = Catalog(tmp_path / "dst.duckdb")
    import_catalog(dst, tmp_path / "run2")
    assert dst.query("select run_id from runs")[1] == [(ids["run2"],)]
    assert dst.query("select result_id from results")[1] == [(ids["third"],)]
    assert dst.query("select name from models")[1] == [("m2",)]
    assert dst.query("select name from datasets order by name")[1] == [("d",), ("d_ood",)]
    assert dst.query("select model_fingerprint from model_outputs")[1] == [("fp-m2",)]
    with pytest.raises(UsageError, match="no run with id"):
        export_catalog(src, tmp_path / "none", run_ids=["nope"])


def test_cli_export_with_a_run_prefix_and_import(source, tmp_path):
    src, ids = source
    r = audit_cli(
        "catalog", "export", str(tmp_path / "out"), "--catalog", str(src.path), "--run", ids["run1"][:8]
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["run_ids"] == [ids["run1"]]
    target = tmp_path / "dst.duckdb"
    r = audit_cli("catalog", "import", str(tmp_path / "out"), str(tmp_path / "out"), "--catalog", str(target))
    assert r.returncode == 0, r.stderr
    assert "results" in r.stdout and "imported 2 directories" in r.stdout
    assert Catalog(target).query("select count(*) from results")[1] == [(3,)]


def test_a_corrupt_parquet_file_is_one_line_exit_2_and_changes_nothing(source, tmp_path):
    src, _ = source
    export_catalog(src, tmp_path / "export")
    target = tmp_path / "dst.duckdb"
    worker, _ = worker_shard(tmp_path, "node-a", ["w1"])
    import_catalog(Catalog(target), worker)
    before = snapshot(Catalog(target))
    (tmp_path / "export" / "metric_values.parquet").write_bytes(b"PAR1 not really parquet")
    r = audit_cli("catalog", "import", str(worker), str(tmp_path / "export"), "--catalog", str(target))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "metric_values.parquet" in lines[0]
    assert "Traceback" not in r.stderr
    assert snapshot(Catalog(target)) == before
    fresh = tmp_path / "fresh" / "catalog.duckdb"
    assert audit_cli("catalog", "import", str(tmp_path / "export"), "--catalog", str(fresh)).returncode == 2
    assert not fresh.exists()  # refused before the catalog was created


def test_a_failure_part_way_through_rolls_everything_back(source, tmp_path, monkeypatch):
    src, _ = source
    export_catalog(src, tmp_path / "export")
    shard, _ = worker_shard(tmp_path, "node-a", ["w1"])
    dst = Catalog(tmp_path / "dst.duckdb")
    import_catalog(dst, shard)
    before = snapshot(dst)
    real = exchange._merge_results
    calls = []

    def failing(con, stage, report):
        calls.append(stage)
        real(con, stage, report)  # rows are in the catalog's transaction now
        raise duckdb.IOException("disk full")

    monkeypatch.setattr(exchange, "_merge_results", failing)
    with pytest.raises(UsageError, match=r"disk full.*nothing was imported"):
        import_catalog(dst, tmp_path / "export")
    assert calls and snapshot(dst) == before


def test_a_newer_schema_or_a_broken_export_is_refused(source, tmp_path):
    src, _ = source
    export = tmp_path / "export"
    export_catalog(src, export)
    dst = Catalog(tmp_path / "dst.duckdb")
    manifest = json.loads((export / "manifest.json").read_text())

    def refused(pattern: str, **changes) -> None:
        (export / "manifest.json").write_text(json.dumps({**manifest, **changes}))
        with pytest.raises(UsageError, match=pattern):
            import_catalog(dst, export)
        assert not dst.path.exists()

    refused(
        f"schema version {len(MIGRATIONS) + 1}, newer than this model-audit knows",
        schema_version=len(MIGRATIONS) + 1,
    )
    refused("export format version 99", format_version=99)
    refused("not a model-audit catalog export", format="something else")
    refused("holds 2 rows where the manifest says 3", tables={**manifest["tables"], "runs": 3})
    refused("expected a table name", tables={"runs; drop table results": 1})
    (export / "manifest.json").write_text(json.dumps(manifest))
    shutil.move(export / "arrays.parquet", tmp_path / "arrays.parquet")
    with pytest.raises(UsageError, match=r"arrays\.parquet: missing"):
        import_catalog(dst, export)
    (export / "manifest.json").unlink()
    with pytest.raises(UsageError, match=r"no manifest\.json"):
        import_catalog(dst, export)
    with pytest.raises(UsageError, match="no such directory"):
        import_catalog(dst, tmp_path / "nowhere")
    assert not dst.path.exists()


def test_an_export_into_an_existing_export_replaces_it(source, tmp_path):
    src, ids = source
    export_catalog(src, tmp_path / "export")
    counts = export_catalog(src, tmp_path / "export", run_ids=[ids["run2"]])
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["tables"] == counts and counts["results"] == 1


def test_exporting_a_missing_catalog_is_refused_before_writing(tmp_path):
    with pytest.raises(UsageError, match="no catalog"):
        export_catalog(Catalog(tmp_path / "none.duckdb"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "none.duckdb").exists()


def test_cli_refuses_a_newer_schema_in_one_line(source, tmp_path):
    src, _ = source
    export_catalog(src, tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    manifest["schema_version"] = len(MIGRATIONS) + 5
    (tmp_path / "export" / "manifest.json").write_text(json.dumps(manifest))
    r = audit_cli("catalog", "import", str(tmp_path / "export"), "--catalog", str(tmp_path / "dst.duckdb"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "newer than this model-audit" in r.stderr
    assert not (tmp_path / "dst.duckdb").exists()


@pytest.mark.parametrize("loss", ["rows", "file"])
def test_a_shard_whose_results_lack_their_metric_rows_is_refused(source, tmp_path, loss):
    """Each result row counts its metric rows (n_metrics): a shard that lost some is refused, nothing imported."""
    src, _ = source
    export = tmp_path / "export"
    export_catalog(src, export)
    manifest = json.loads((export / "manifest.json").read_text())
    file = export / "metric_values.parquet"
    if loss == "rows":  # a consistent file and manifest, but one result's rows gone
        with duckdb.connect() as con:
            first = con.execute(f"select result_id from read_parquet('{file}') limit 1").fetchone()[0]
            con.execute(
                f"copy (select * from read_parquet('{file}') where result_id <> '{first}') to '{file}.new' (format parquet)"
            )
        Path(f"{file}.new").replace(file)
        with duckdb.connect() as con:
            manifest["tables"]["metric_values"] = con.execute(f"select count(*) from read_parquet('{file}')").fetchone()[0]
    else:  # the file and its manifest entry both gone
        file.unlink()
        del manifest["tables"]["metric_values"]
    (export / "manifest.json").write_text(json.dumps(manifest))
    target = tmp_path / "dst.duckdb"
    r = audit_cli("catalog", "import", str(export), "--catalog", str(target))
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "metric_values rows" in r.stderr
    assert not target.exists() or Catalog(target).query("select count(*) from results")[1] == [(0,)]
