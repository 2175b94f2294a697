"""The layout shared by the terminal tables and the HTML report (audit/face/tables.py)."""

from __future__ import annotations

from audit.face.tables import number, pivot, short_label


def test_a_long_job_label_is_shortened_to_its_first_names_and_a_count():
    assert short_label("a,b,c") == "a,b,c"
    assert short_label("a,b,c,d,e") == "a,b,c,… (5 models)"
    assert short_label("a,b,c,d", keep=1) == "a,… (4 models)"
    assert short_label(None) == short_label("") == "—"


def test_a_metric_value_is_written_with_six_significant_digits():
    assert number(1 / 3) == "0.333333"
    assert number(float("nan")) == "NaN"
    assert number(None) == "—"


def test_rows_become_a_grid_of_the_ordered_metrics_that_occur():
    rows = [("m1", "d", "b", 1.0), ("m1", "d", "a", 2.0), ("m2", None, "a", 3.0), (None, "d", "z", 4.0)]
    grid = pivot(rows, ("a", "b", "absent"))
    assert grid.metrics == ("a", "b")
    assert list(grid.cells) == [("m1", "d"), ("m2", "—")]  # rows of other metrics are left out
    assert grid.value(("m2", "—"), "a") == 3.0 and grid.value(("m2", "—"), "b") is None
    assert grid.metrics_as_columns
    everything = pivot(rows)  # no order: every metric, sorted
    assert everything.metrics == ("a", "b", "z") and ("—", "d") in everything.cells
    assert not pivot([("m", "d", k, 0.0) for k in "abc"]).metrics_as_columns  # more metrics than pairs
