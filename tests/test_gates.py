"""Gates: verdicts from the latest stored values, baselines, missing values, JUnit and Markdown."""

from __future__ import annotations

import math
from xml.etree import ElementTree as ET

import pytest

from audit import gates
from audit.catalog.store import Catalog
from audit.config import GateSpec
from conftest import stored_result


def put(cat: Catalog, run: str, model: str, dataset: str, value: float, key: str) -> None:
    cat.record_result(
        stored_result(
            run,
            cache_key=key,
            probe="cka",
            models=[(model, model)],
            datasets=[(dataset, dataset)],
            metrics=[("acc", value, None, None)],
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


# ---------------------------------------------------------------- model patterns and context


def record(
    cat: Catalog, run: str, probe: str, models: list[str], dataset: str | None, metrics: dict, key: str
):
    cat.record_result(
        stored_result(
            run,
            cache_key=key,
            probe=probe,
            models=[(m, m) for m in models],
            datasets=[(dataset, dataset)] if dataset else [],
            metrics=[(name, value, None, None) for name, value in metrics.items()],
        )
    )


KEYS = {"tks": ("alpha_hat", "accuracy", "churn_mean", "ece"), "other": ()}


@pytest.fixture
def ens(tmp_path):
    """trimmed_ks-like results: candidates with their key metrics, and a job labelled by all its models."""
    c = Catalog(tmp_path / "e.duckdb")
    run = c.start_run({})
    record(
        c,
        run,
        "tks",
        ["cand_a"],
        "test",
        {"alpha_hat": 0.02, "accuracy": 0.962, "churn_mean": 0.031, "ece": 0.018, "ks_distance": 0.4},
        "1",
    )
    record(c, run, "tks", ["cand_b"], "test", {"alpha_hat": 0.30, "accuracy": 0.91}, "2")
    record(c, run, "tks", ["cand_b"], "ood", {"accuracy": 0.5}, "3")  # another dataset: not its context
    record(c, run, "tks", ["other"], "test", {"alpha_hat": 0.9}, "4")
    record(c, run, "tks", ["cand_a", "seed/s0", "seed/s1"], "test", {"alpha_hat": 0.05}, "5")
    record(c, run, "other", ["cand_a"], "test", {"x": 1.0, "y": 2.0, "z": 3.0}, "6")
    record(c, run, "other", ["cand_a"], "ood", {"x": 4.0}, "7")
    record(c, run, "other", ["cand_a"], None, {"y": 2.5}, "8")  # a metric of no dataset
    return c


def tks(**kw) -> GateSpec:
    return GateSpec(index=0, probe="tks", metric="alpha_hat", **kw)


def test_a_model_pattern_applies_the_gate_to_every_matching_row(ens):
    v = gates.evaluate([tks(max=0.1, model="cand_?", dataset="test")], ens)
    assert [(x.model, x.status) for x in v] == [("cand_a", "pass"), ("cand_b", "fail")]
    assert v[1].reason == "0.3 > max 0.1"
    # `*` matches the whole stored label, commas included: a job over an ensemble
    job = gates.evaluate([tks(max=0.1, model="cand_a,seed/*")], ens)
    assert [(x.model, x.status) for x in job] == [("cand_a,seed/s0,seed/s1", "pass")]
    exact = gates.evaluate([tks(max=0.1, model="cand_a")], ens)  # an exact name is matched exactly
    assert [(x.model, x.status) for x in exact] == [("cand_a", "pass")]
    none = gates.evaluate([tks(max=0.1, model="zz*")], ens)
    assert [(x.model, x.status) for x in none] == [("zz*", "missing")]


def test_each_model_a_pattern_names_in_the_config_must_have_a_value(ens):
    v = gates.evaluate([tks(max=0.5, model="cand_*", expected_models=("cand_a", "cand_b", "cand_c"))], ens)
    assert [(x.model, x.status) for x in v] == [
        ("cand_a", "pass"),
        ("cand_a,seed/s0,seed/s1", "pass"),
        ("cand_b", "pass"),
        ("cand_c", "missing"),
    ]
    assert v[-1].reason == (
        "no stored value of tks.alpha_hat for model 'cand_c' (matched by 'cand_*'; run `audit run` first)"
    )
    assert gates.exit_code(v) == 1


def test_context_shows_the_other_key_metrics_of_the_same_model_and_dataset(ens):
    v = gates.evaluate([tks(max=0.1, model="cand_*", dataset="test")], ens, key_metrics=KEYS)
    by_model = {x.model: x for x in v}
    # declared order, the gated metric left out, ks_distance is no key metric
    assert by_model["cand_a"].context == (("accuracy", 0.962), ("churn_mean", 0.031), ("ece", 0.018))
    assert by_model["cand_a"].context_text == "accuracy 0.962 · churn_mean 0.031 · ece 0.018"
    assert by_model["cand_b"].context == (("accuracy", 0.91),)  # missing metrics are left out; not ood
    assert by_model["cand_a,seed/s0,seed/s1"].context == ()
    assert gates.evaluate([tks(max=0.1, model="cand_a")], ens)[0].context == ()  # no key metrics given


def test_context_of_a_metric_without_a_dataset_labels_metrics_of_several_datasets(ens):
    # a probe with no declared key metrics: its other metrics, alphabetically
    no_dataset, on_test = gates.evaluate([GateSpec(0, "other", "y", max=5, model="cand_a")], ens, KEYS)
    assert on_test.dataset == "test" and on_test.context == (("x", 1.0), ("z", 3.0))
    assert not no_dataset.dataset
    assert no_dataset.context == (("x (ood)", 4.0), ("x (test)", 1.0), ("z", 3.0))


def test_markdown_and_junit_carry_the_context(ens):
    v = gates.evaluate([tks(max=0.1, model="cand_?", dataset="test"), tks(max=1, model="zz*")], ens, KEYS)
    md = gates.markdown(v)
    assert "| verdict | gate | model | dataset | observed | threshold | detail | context |" in md
    assert (
        "| ✅ pass | `tks.alpha_hat` | cand_a | test | 0.02 | <= 0.1 | 0.02 <= 0.1 | "
        "accuracy 0.962 · churn_mean 0.031 · ece 0.018 |"
    ) in md
    assert (
        "| ❌ fail | `tks.alpha_hat` | cand_b | test | 0.3 | <= 0.1 | 0.3 > max 0.1 | accuracy 0.91 |" in md
    )
    assert md.rstrip().splitlines()[-1].endswith("run `audit run` first) | — |")
    suite = ET.fromstring(gates.junit_xml(v)).find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "1"
    cases = suite.findall("testcase")
    assert cases[0].find("system-out").text == "context: accuracy 0.962 · churn_mean 0.031 · ece 0.018"
    assert cases[1].find("failure") is not None and cases[1].find("system-out").text.endswith("0.91")
    assert cases[2].find("system-out") is None


def test_markdown_of_a_baseline_gate_says_what_the_observed_value_is(cat):
    md = gates.markdown(gates.evaluate([gate(min=-0.05, baseline="base", dataset="id")], cat))
    assert "| ❌ fail | `cka.acc` | b | id | -0.1 | >= -0.05 on value − base's (0.8 − 0.9) |" in md
