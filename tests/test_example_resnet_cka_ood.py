"""Example 08 (CKA in and out of distribution on a ResNet-18, Gondhalekar et al. at scale) in its reduced form.

Copies examples/08_resnet_cka_ood into tmp_path (without generated files), runs ``python make_data.py --quick``
and ``audit run`` there as the README says, and reads the catalog read-only. The quick models are trained for a
few steps only, so this checks that the pipeline is right on torchvision's ResNet-18 (in-place ReLUs,
``out += identity``, BatchNorm), not the paper's claim (the README gives the full-mode measurements):

* one ``ok`` result per model, over the in-distribution then the out-of-distribution test set, without
  warnings;
* the default layers are every conv / bn / downsample / fc module of the ResNet in module order, plus output;
* each stored matrix is finite, symmetric, bounded by 1 and has a unit diagonal, and CKA(fc, output) = 1;
* the in-distribution matrix equals an independent recomputation: activations cloned inside the forward
  hooks (so no later in-place write can reach them) and the unbiased HSIC by Song et al.'s formula in float64
  (on the full example's models an aliased capture would be up to 0.27 off; the probe is within 1e-8);
* the gates of audit.toml all find a value (their verdicts on barely trained models are not checked, except
  that every layer has a defined CKA).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch

from conftest import run_audit, run_example_quick

EXAMPLE = "08_resnet_cka_ood"
MODELS = ("resnet_plain", "resnet_mixed")
DATASETS = ("plain_test", "textured_test")  # in distribution first, then out of distribution
BATCH = 128  # audit.toml's batch_size


def _resnet_module(dest: Path):
    spec = importlib.util.spec_from_file_location("example08_resnet", dest / "resnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _model(dest: Path, name: str) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = _resnet_module(dest).resnet18(num_classes=6)
    model.load_state_dict(load_file(str(dest / "models" / f"{name}.safetensors")))
    return model.eval()


def _reference_cka(model: torch.nn.Module, layers: list[str], x: np.ndarray) -> np.ndarray:
    """Minibatch linear CKA (unbiased HSIC summed over batches of BATCH), written independently of the probe:
    hooks clone each output as it is produced; HSIC by Song et al. (2012) in float64."""
    modules = dict(model.named_modules())
    grabbed: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: grabbed.__setitem__(name, out.detach().clone())
        )
        for name in layers
        if name != "output"
    ]
    n_layers = len(layers)
    hsic = np.zeros((n_layers, n_layers))
    try:
        for start in range(0, len(x), BATCH):
            grabbed.clear()
            with torch.no_grad():
                out = model(torch.from_numpy(x[start : start + BATCH]))
            feats = [(out if name == "output" else grabbed[name]).double().flatten(1) for name in layers]
            m = feats[0].shape[0]
            assert m >= 4
            grams = torch.stack([f @ f.T for f in feats])  # (L, m, m)
            grams.diagonal(dim1=1, dim2=2).zero_()
            flat = grams.reshape(n_layers, -1)
            rows = grams.sum(dim=2)  # (L, m): K̃1
            totals = rows.sum(dim=1)  # (L,): 1ᵀK̃1
            batch = (
                flat @ flat.T
                + torch.outer(totals, totals) / ((m - 1) * (m - 2))
                - 2 / (m - 2) * (rows @ rows.T)
            ) / (m * (m - 3))
            hsic += batch.numpy()
    finally:
        for h in handles:
            h.remove()
    d = np.sqrt(np.diag(hsic))
    return hsic / np.outer(d, d)


@pytest.mark.slow
def test_resnet_cka_pipeline(tmp_path):
    import duckdb

    dest = run_example_quick(EXAMPLE, tmp_path)
    con = duckdb.connect(str(dest / ".audit" / "catalog.duckdb"), read_only=True)
    try:
        results = con.execute(
            "select result_id, models, datasets, status, error, warnings from results where probe = 'cka'"
        ).fetchall()
        arrays = {
            (rid, name): (dtype, shape, numbers, strings)
            for rid, name, dtype, shape, numbers, strings in con.execute(
                "select result_id, name, dtype, shape, numbers, strings from arrays"
            ).fetchall()
        }
        metrics = {
            (model, dataset, metric): value
            for model, dataset, metric, value in con.execute(
                "select model, dataset, metric, value from latest_metrics where probe = 'cka'"
            ).fetchall()
        }
    finally:
        con.close()

    # one result per model, ok, over ID then OOD, and no warning (a non-positive self-HSIC would be one)
    by_model = {}
    for rid, models, datasets, status, error, warnings in results:
        assert status == "ok", error
        assert tuple(datasets) == DATASETS
        assert not warnings, warnings
        by_model.setdefault(tuple(models), []).append(rid)
    assert sorted(by_model) == sorted((m,) for m in MODELS)
    assert all(len(ids) == 1 for ids in by_model.values())

    # the default layers: every module with parameters (all of them run once per forward), in module order
    reference = _resnet_module(dest).resnet18(num_classes=6)
    owners = [
        n for n, mod in reference.named_modules() if n and any(True for _ in mod.parameters(recurse=False))
    ]
    expected = [*owners, "output"]
    assert len(expected) == 42  # stem conv + bn, 8 blocks × (2 conv + 2 bn), 3 downsamples × 2, fc; output
    for model in MODELS:
        (rid,) = by_model[(model,)]
        layers = list(arrays[(rid, "layers")][3])
        assert layers == expected
        assert {"conv1", "bn1", "layer1.0.bn2", "layer2.0.downsample.1", "layer4.1.bn2", "fc"} <= set(layers)
        assert layers[-2:] == ["fc", "output"]
        for dataset in DATASETS:
            _, shape, numbers, _ = arrays[(rid, f"matrix_{dataset}")]
            matrix = np.asarray(numbers, dtype=np.float64).reshape(shape)
            assert matrix.shape == (42, 42)
            assert np.isfinite(matrix).all()
            assert np.allclose(np.diag(matrix), 1.0, atol=1e-6)
            assert np.allclose(matrix, matrix.T, atol=1e-9)
            assert np.abs(matrix).max() <= 1 + 1e-6  # Cauchy–Schwarz on the summed HSIC
            assert matrix[layers.index("fc"), layers.index("output")] == pytest.approx(1.0, abs=1e-6)
            assert metrics[(model, dataset, "nonpositive_self_hsic_layers")] == 0
            assert metrics[(model, dataset, "layers")] == 42
            assert 0.0 <= metrics[(model, dataset, "accuracy")] <= 1.0
            for key in ("offdiag_mean", "offdiag_skew", "eig_1_share", "effective_rank"):
                assert np.isfinite(metrics[(model, dataset, key)]), key
        for key in ("delta_offdiag_mean", "delta_eig_1_share", "delta_effective_rank", "frobenius_delta"):
            assert np.isfinite(metrics[(model, ",".join(DATASETS), key)]), key

    # the stored ID matrix is the one an independent capture and HSIC give (float32 Grams in the probe)
    with np.load(dest / "data" / "plain_test.npz") as npz:
        x = npz["x"]
    for model in MODELS:
        (rid,) = by_model[(model,)]
        _, shape, numbers, _ = arrays[(rid, "matrix_plain_test")]
        stored = np.asarray(numbers, dtype=np.float64).reshape(shape)
        ref = _reference_cka(_model(dest, model), expected, x)
        assert np.abs(stored - ref).max() < 1e-4, np.abs(stored - ref).max()

    # every gate finds its value (pass or fail on these barely trained models), and no layer is undefined
    gates = run_audit("gate", "--junit", "gates.xml", cwd=dest)
    assert gates.returncode in (0, 1), gates.stdout + gates.stderr
    cases = list(ET.parse(dest / "gates.xml").getroot().iter("testcase"))
    assert len(cases) == 11, [case.get("name") for case in cases]
    for case in cases:
        assert case.find("error") is None, case.get("name")  # "missing": the gate found no stored value
        if case.get("name").startswith("every layer has a defined CKA"):
            assert case.find("failure") is None, case.get("name")
