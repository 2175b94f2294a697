"""Gates: verdicts from the latest stored values, baselines, missing values, JUnit and Markdown."""

from __future__ import annotations

import math
from xml.etree import ElementTree as ET

import pytest

from audit import gates
from audit.catalog import Catalog, StoredResult
from audit.config import GateSpec


def put(cat: Catalog, run: str, model: str, dataset: str, value: float, key: str) -> None:
    cat.record_result(
        StoredResult(
            run_id=run,
            cache_key=key,
            probe="cka",
            probe_version="1",
            params={},
            models=[(model, model)],
            datasets=[(dataset, dataset)],
            status="ok",
            error=None,
            warnings=[],
            duration_s=0,
            device="cpu",
            metrics=[("acc", value, None, None)],
            arrays={},
        )
    )


@pytest.fixture
def cat(tmp_path):
    c = Catalog(tmp_path / "c.duckdb")
    run = c.start_run({})
    put(c, run, "a", "id", 0.50, "1")  # superseded below: gates read the latest value
    put(c, run, "a", "id", 0.95, "2")
    put(c, run, "b", "id", 0.80, "3")
    put(c, run, "base", "id", 0.90, "4")
    put(c, run, "a", "ood", float("nan"), "5")
    return c


def gate(**kw) -> GateSpec:
    return GateSpec(index=0, probe="cka", metric="acc", **kw)


def test_min_max_on_latest_values_with_filters(cat):
    v = gates.evaluate([gate(min=0.9, dataset="id")], cat)
    assert [(x.model, x.status) for x in v] == [("a", "pass"), ("b", "fail"), ("base", "pass")]
    assert v[1].reason == "0.8 < min 0.9"
    assert gates.exit_code(v) == 1
    only_a = gates.evaluate([gate(min=0.9, max=1.0, model="a", dataset="id")], cat)
    assert [x.status for x in only_a] == ["pass"] and gates.exit_code(only_a) == 0


def test_nan_fails_and_missing_values_fail_as_missing(cat):
    nan = gates.evaluate([gate(max=1, model="a", dataset="ood")], cat)
    assert nan[0].status == "fail" and nan[0].reason == "value is NaN"
    missing = gates.evaluate([gate(min=0, model="zzz")], cat)
    assert missing[0].status == "missing" and "run `audit run` first" in missing[0].reason
    assert gates.exit_code(missing) == 1


def test_baseline_thresholds_apply_to_the_difference(cat):
    v = gates.evaluate([gate(min=-0.05, baseline="base", dataset="id")], cat)
    by_model = {x.model: x for x in v}
    assert set(by_model) == {"a", "b"}  # the baseline is not gated against itself
    assert by_model["a"].status == "pass" and by_model["a"].observed == pytest.approx(0.05)
    assert by_model["b"].status == "fail" and by_model["b"].observed == pytest.approx(-0.10)
    no_base = gates.evaluate([gate(min=0, baseline="base", model="a", dataset="ood")], cat)
    assert no_base[0].status == "missing"


def test_junit_and_markdown_explain_the_verdict(cat):
    v = gates.evaluate([gate(min=0.9, dataset="id"), gate(min=0, model="zzz")], cat)
    root = ET.fromstring(gates.junit_xml(v))
    suite = root.find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("errors") == "1"
    failure = suite.find("testcase/failure")
    assert "model b on id: observed 0.8; required >= 0.9" in failure.text
    md = gates.markdown(v)
    assert "❌ 2 of 4 gate checks failed" in md
    assert "| ❌ fail | `cka.acc` | b | id | 0.8 | >= 0.9 | 0.8 < min 0.9 |" in md
    assert not math.isnan(v[0].observed)
