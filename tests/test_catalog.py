"""The DuckDB catalog: migrations, one transaction per result, bit-exact arrays, read-only queries, locks."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest

from audit.api.errors import CatalogBusyError, UsageError
from audit.catalog.migrations import MIGRATIONS
from audit.catalog.store import Catalog, StoredResult, migrate
from conftest import stored_result


def stored(run_id: str, key: str = "k1", status: str = "ok", **arrays) -> StoredResult:
    return stored_result(
        run_id,
        cache_key=key,
        params={"a": 1},
        status=status,
        error=None if status == "ok" else "boom",
        warnings=["w"],
        metrics=[("x", 1.5, None, None), ("y", float("nan"), None, "d_ood")],
        arrays=arrays,
    )


def test_migrations_are_recorded_and_idempotent(tmp_path):
    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    assert migrate(con) == len(MIGRATIONS)
    assert migrate(con) == len(MIGRATIONS)
    rows = con.execute("select version, name from schema_migrations order by version").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    cols = [r[0] for r in con.execute("describe metrics").fetchall()]
    assert cols[:8] == ["run_id", "result_id", "probe", "model", "dataset", "metric", "value", "created_at"]


def test_newer_schema_is_refused_with_a_clear_message(tmp_path):
    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    migrate(con)
    con.execute("insert into schema_migrations values (999, 'future', now())")
    with pytest.raises(UsageError, match="newer than this model-audit"):
        migrate(con)


def test_result_metrics_and_arrays_round_trip(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    run = cat.start_run({"tool_version": "t"})
    arrays = {
        "f32": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32),
        "f64": np.array([np.pi, np.nan, -np.inf, 1e-300]),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "names": np.array(["layer.0", "output"], dtype=object),
    }
    rid, written = cat.record_result(stored(run, **arrays))
    assert written
    back = cat.load_arrays(rid)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        if v.dtype.kind == "f":
            np.testing.assert_array_equal(back[k], v)  # bit-exact, NaN and inf included
        else:
            assert back[k].tolist() == v.tolist()
    _cols, rows = cat.query("select model, dataset, metric, value from metrics order by metric")
    assert rows[0] == ("m", "d", "x", 1.5)
    assert rows[1][:3] == ("m", "d_ood", "y") and np.isnan(rows[1][3])
    assert cat.cached_result("k1") == rid


def test_same_cache_key_is_stored_once_and_errors_do_not_count_as_cached(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    run = cat.start_run({})
    err_id, _ = cat.record_result(stored(run, "k", status="error"))
    assert cat.cached_result("k") is None
    first, w1 = cat.record_result(stored(run, "k"))
    again, w2 = cat.record_result(stored(run, "k"))
    assert (w1, w2) == (True, False) and again == first
    _, rows = cat.query("select count(*) from results where cache_key = 'k' and status = 'ok'")
    assert rows == [(1,)]
    assert err_id != first


def test_a_failing_write_leaves_nothing_half_written(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    run = cat.start_run({})
    bad = stored(run, "k", ok=np.ones(3), bad=np.array([1 + 2j]))  # a complex array cannot be stored
    with pytest.raises(TypeError):
        cat.record_result(bad)
    _, rows = cat.query(
        "select (select count(*) from results), (select count(*) from metric_values), (select count(*) from arrays)"
    )
    assert rows == [(0, 0, 0)]


def test_query_is_read_only_and_cannot_touch_files(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    cat.record_result(stored(cat.start_run({})))
    for sql in (
        "insert into metric_values values ('x', 'm', 1, null, null)",
        "delete from results",
        "drop table results",
        f"copy results to '{tmp_path / 'out.csv'}'",
        f"attach '{tmp_path / 'other.duckdb'}' as other",
    ):
        with pytest.raises(UsageError, match="query failed"):
            cat.query(sql)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()
    assert cat.query("select count(*) from results")[1] == [(1,)]


def test_missing_catalog_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no catalog"):
        Catalog(tmp_path / "none.duckdb").query("select 1")


HOLD_LOCK = (
    "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); time.sleep({})"
)


def _hold_lock(path, seconds):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK.format(seconds), str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_reader_waits_for_the_writer_then_proceeds(tmp_path):
    path = tmp_path / "c.duckdb"
    Catalog(path).record_result(stored(Catalog(path).start_run({})))
    holder = _hold_lock(path, 1.5)
    messages = []
    t0 = time.monotonic()
    _cols, rows = Catalog(path, wait_s=30, on_wait=messages.append).query("select count(*) from results")
    assert rows == [(1,)]
    assert time.monotonic() - t0 > 0.5
    assert len(messages) == 1 and "busy" in messages[0]
    holder.wait()


def test_a_reader_gives_up_with_a_clear_line_after_its_deadline(tmp_path):
    path = tmp_path / "c.duckdb"
    Catalog(path).start_run({})
    holder = _hold_lock(path, 5)
    try:
        with pytest.raises(CatalogBusyError, match="still locked by another process"):
            Catalog(path, wait_s=0.5).query("select 1")
    finally:
        holder.kill()
        holder.wait()
