"""Bulk writes of `Catalog.record_result`: many metrics and arrays in few statements, nothing lost or reordered."""

from __future__ import annotations

import math

import numpy as np

from audit.catalog.store import _ARRAYS_BATCHED_UP_TO, Catalog
from conftest import stored_result


def stored(run_id: str, metrics, arrays):
    return stored_result(run_id, metrics=metrics, arrays=arrays)


def test_many_metrics_keep_their_order_values_and_labels(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    metrics = [
        (f"metric_{i}", [float(i), -0.0, float("nan"), np.float32(0.1), 3, None][i % 6],
         None if i % 2 else f"m{i % 5}", None if i % 3 else "d")
        for i in range(5000)
    ]  # fmt: skip
    rid, _ = cat.record_result(stored(cat.start_run({}), metrics, {}))
    (view,) = cat.result_views([rid])
    assert len(view.metrics) == len(metrics)
    for got, (name, value, model, dataset) in zip(view.metrics, metrics, strict=True):
        assert (got.name, got.model, got.dataset) == (name, model, dataset)
        want = math.nan if value is None else float(value)
        assert repr(got.value) == repr(want)  # -0.0 and NaN kept, float32 exactly widened
    _, nulls = cat.query("select count(*) from metric_values where value is null")
    assert nulls == [(len(metrics) // 6 + (len(metrics) % 6 > 5),)]


def test_small_and_large_arrays_keep_their_order_and_bits(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    rng = np.random.default_rng(1)
    arrays = {
        "a": np.array(-0.0),
        "b": np.zeros((0, 4)),
        "strings": np.array(["x", "y"], dtype=object),
        "big": rng.normal(size=_ARRAYS_BATCHED_UP_TO + 1).astype(np.float32),
        "c": np.array([np.nan, -np.inf, 5e-324]),
        "unicode": np.array(["ä", "b"]),
        "ints": np.arange(-3, 3, dtype=np.int16).reshape(2, 3),
        "big_strings": np.array([str(i) for i in range(_ARRAYS_BATCHED_UP_TO + 1)], dtype=object),
        "last": np.ones((2, 2), dtype=np.uint8),
    }
    rid, _ = cat.record_result(stored(cat.start_run({}), [], arrays))
    back = cat.load_arrays(rid)
    assert list(back) == list(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape, name
        if a.dtype.kind in "OU":
            assert back[name].tolist() == a.tolist()
        else:
            assert back[name].tobytes() == a.tobytes(), name


def test_one_small_array_alone(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    rid, _ = cat.record_result(stored(cat.start_run({}), [("x", 1.0, None, None)], {"m": np.eye(2)}))
    np.testing.assert_array_equal(cat.load_arrays(rid)["m"], np.eye(2))
