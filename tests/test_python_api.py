"""The Python API (`audit.run_probe`, `audit.open_catalog`): a probe on in-memory models and arrays gives the
numbers `audit run` stores for the same models and data; with a catalog it records and reuses results; the
catalog reads back as data frames. Models: the mini project's digits MLPs and torchvision's ResNet-18."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from architectures import resnet18

import audit
from audit.api.errors import UsageError
from audit.catalog.store import Catalog
from conftest import MINI_MODELS, audit_cli, build_mini_project  # noqa: F401


def _mini_inputs(project):
    """The mini project's two MLPs (as its factory builds them, with its weights) and its test digits."""
    import importlib.util

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("mini_demo_models", project / "demo_models.py")
    factories = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factories)
    models = {}
    for name, m in MINI_MODELS.items():
        model = factories.mlp(width=m["width"], depth=m["depth"])
        model.load_state_dict(load_file(str(project / "models" / f"{name}.safetensors")))
        models[name] = model
    with np.load(project / "data" / "digits_test.npz") as f:
        data = (f["x"], f["y"])
    return models, data


def test_run_probe_measures_what_audit_run_stores(mini_catalog):
    """Same probe, parameters, weights and data: the API's metrics and arrays equal the stored result's."""
    models, data = _mini_inputs(mini_catalog)
    got = audit.run_probe("cka", models, {"digits_test": data}, params={"batch_size": 45}, device="cpu")
    cat = Catalog(mini_catalog / ".audit" / "catalog.duckdb")
    _, rows = cat.query("select result_id from results where models = ['mlp_a', 'mlp_b']")
    (stored,) = cat.result_views([rows[0][0]])
    assert got.result_id is None and not got.reused and got.models == ("mlp_a", "mlp_b")
    assert {m.name for m in got.metrics} == {m.name for m in stored.metrics}
    for m in stored.metrics:
        value = got.metric(m.name, model=m.model, dataset=m.dataset)
        assert value == pytest.approx(m.value, rel=1e-6, abs=1e-9, nan_ok=True)
    np.testing.assert_allclose(got.arrays["matrix"], stored.arrays["matrix"], rtol=1e-6, atol=1e-9)
    frame = got.to_frame()
    assert list(frame.columns) == ["probe", "model", "dataset", "metric", "value"]
    assert len(frame) == len(got.metrics) and set(frame["probe"]) == {"cka"}


def test_user_modules_are_left_as_they_were(mini_source):
    models, data = _mini_inputs(mini_source)
    model = models["mlp_a"].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    audit.run_probe("cka", model, data, params={"batch_size": 45}, device="cpu")
    assert model.training  # put back in training mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_a_resnet18_compared_with_itself_has_unit_cka_on_the_diagonal():
    """torchvision's ResNet-18 (random weights) on 32 seeded 32×32 images, against itself: CKA(X, X) = 1."""
    model = resnet18(seed=0)
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layers = ["layer1", "layer2", "layer3", "layer4"]
    # one module under two names: the API copies it for the second
    r = audit.run_probe("cka", {"a": model, "b": model}, x, params={"layers": layers, "batch_size": 16}, device="cpu")
    diagonal = np.diag(np.asarray(r.arrays["matrix"]))
    np.testing.assert_allclose(diagonal, 1.0, atol=1e-6)


def test_a_catalog_records_once_and_reuses(mini_source, tmp_path):
    models, data = _mini_inputs(mini_source)
    path = tmp_path / "nb.duckdb"
    first = audit.run_probe("cka", models, data, params={"batch_size": 45}, device="cpu", catalog=path)
    again = audit.run_probe("cka", models, data, params={"batch_size": 45}, device="cpu", catalog=path)
    assert first.result_id and not first.reused
    assert again.reused and again.result_id == first.result_id and again.cache_key == first.cache_key
    np.testing.assert_array_equal(again.arrays["matrix"], first.arrays["matrix"])
    forced = audit.run_probe("cka", models, data, params={"batch_size": 45}, device="cpu", catalog=path, force=True)
    assert forced.result_id != first.result_id and not forced.reused

    models["mlp_b"] = models["mlp_b"].double().float()  # the same weights: same fingerprint, a reuse
    assert audit.run_probe("cka", models, data, params={"batch_size": 45}, device="cpu", catalog=path).reused
    with torch.no_grad():
        next(models["mlp_b"].parameters()).add_(1e-3)  # other weights: a new result
    assert not audit.run_probe("cka", models, data, params={"batch_size": 45}, device="cpu", catalog=path).reused

    reader = audit.open_catalog(path)
    latest = reader.latest_metrics(probe="cka", metric="accuracy")
    assert len(latest) == 2 and set(latest["model"]) == {"mlp_a", "mlp_b"}  # one row per model: the latest
    everything = reader.metrics(probe="cka")
    assert len(everything) > len(latest)
    assert reader.result(first.result_id[:8]).metric("accuracy", model="mlp_a") == pytest.approx(
        first.metric("accuracy", model="mlp_a")
    )
    runs = reader.sql("select count(*) as n from runs")
    assert int(runs["n"][0]) == 3  # first, forced, other weights; a reuse writes nothing
    r = audit_cli("query", "--catalog", str(path), "select count(*) from results")  # a catalog like any other
    assert r.returncode == 0 and "3" in r.stdout


def test_bad_input_is_a_usage_error_naming_what(mini_source):
    models, data = _mini_inputs(mini_source)
    with pytest.raises(UsageError, match="unknown probe 'nope'"):
        audit.run_probe("nope", models, data)
    with pytest.raises(UsageError, match="batch_sise"):
        audit.run_probe("cka", models, data, params={"batch_sise": 4})
    with pytest.raises(UsageError, match="takes"):
        audit.run_probe("entk", models, data)  # one model per job
    x, y = data
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(UsageError, match="1 of 90 rows hold NaN"):
        audit.run_probe("cka", models, (bad, y))
    with pytest.raises(UsageError, match="model 'm'"):
        audit.run_probe("cka", {"m": "not a module"}, data)
    with pytest.raises(UsageError, match="device"):
        audit.run_probe("cka", models, data, device="gpu")
    with pytest.raises(UsageError, match="no catalog"):
        audit.open_catalog(mini_source / "missing.duckdb")


def test_reader_refuses_unknown_columns_and_writes(mini_catalog):
    reader = audit.open_catalog(mini_catalog / ".audit" / "catalog.duckdb")
    with pytest.raises(UsageError, match="no column modle"):
        reader.metrics(modle="mlp_a")
    with pytest.raises(UsageError):
        reader.sql("delete from results")
    assert len(reader.metrics()) > 0
