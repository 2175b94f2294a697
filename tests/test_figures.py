"""Figures: the Figure value, the plugin collection (a broken renderer costs only its own figures), and each
built-in probe's figure functions on small hand-made arrays (no catalog, no model)."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime

import numpy as np
import pytest

from audit import Figure, ResultView, StoredMetric, hookimpl
from audit.api.figures import canvas
from audit.face.rendering import collect_figures
from audit.registry import plugin_manager

PNG = b"\x89PNG\r\n\x1a\n"


def view(probe: str, arrays: dict, metrics=(), models=("m",), datasets=("d",), params=None) -> ResultView:
    return ResultView(
        result_id="r" * 16,
        run_id="u" * 16,
        probe=probe,
        version="1.0.0",
        params=params or {},
        models=tuple(models),
        datasets=tuple(datasets),
        status="ok",
        error=None,
        warnings=(),
        created_at=datetime.now(UTC),
        duration_s=0.1,
        device="cpu",
        metrics=tuple(StoredMetric(*m) for m in metrics),
        _load_arrays=lambda: {k: np.asarray(v) for k, v in arrays.items()},
    )


def is_png(f: Figure) -> bool:
    return f.png is not None and f.png.startswith(PNG) and len(f.png) > 1000


# ---------------------------------------------------------------- the Figure value and its collection


def test_figure_holds_exactly_one_image_and_embeds_as_a_data_uri():
    with pytest.raises(ValueError, match="exactly one"):
        Figure("t")
    with pytest.raises(ValueError, match="exactly one"):
        Figure("t", png=b"x", svg="<svg/>")
    with pytest.raises(ValueError, match="non-empty"):
        Figure("t", png=b"")
    svg = Figure("t", svg="<svg xmlns='http://www.w3.org/2000/svg'/>")
    assert svg.data_uri().startswith("data:image/svg+xml;base64,")
    assert base64.b64decode(svg.data_uri().split(",", 1)[1]).startswith(b"<svg")
    fig = canvas(3, 2)
    fig.axes[0].plot([0, 1], [1, 0])
    png = Figure.from_matplotlib(fig, "line", "a caption", model="m", dataset="d")
    assert is_png(png) and png.data_uri().startswith("data:image/png;base64,iVBOR")
    assert (png.model, png.dataset, png.caption) == ("m", "d", "a caption")


def test_the_result_view_is_read_only_and_picks_metrics_by_attribution():
    v = view(
        "p",
        {"a": np.arange(3.0)},
        metrics=[("x", 1.0, None, "id"), ("x", 2.0, None, "ood"), ("y", 3.0, None, None)],
    )
    assert v.metric("x", dataset="ood") == 2.0 and v.metric("x") == 1.0 and v.metric("y") == 3.0
    assert math.isnan(v.metric("nope"))
    with pytest.raises(ValueError):
        v.arrays["a"][0] = 5.0  # stored arrays are not writeable
    with pytest.raises(AttributeError):
        v.probe = "other"  # type: ignore[misc]


class _Raising:
    @hookimpl
    def render_figures(self, result):
        if result.probe == "figtest":
            raise RuntimeError("renderer exploded")
        return None


class _Drawing:
    @hookimpl
    def render_figures(self, result):
        if result.probe != "figtest":
            return None
        return [Figure("good", svg="<svg xmlns='http://www.w3.org/2000/svg'/>"), "not a figure"]


def test_a_raising_renderer_costs_only_its_own_figures():
    pm = plugin_manager()
    raising, drawing = _Raising(), _Drawing()
    pm.register(raising, name="test-raising")
    pm.register(drawing, name="test-drawing")
    try:
        out = collect_figures(view("figtest", {}))
        assert [f.title for f in out.figures] == ["good"]
        assert any("test-raising" in f and "renderer exploded" in f for f in out.failures)
        assert any("test-drawing" in f and "not audit.Figure" in f for f in out.failures)
        # other probes' results are untouched by both plugins
        assert collect_figures(view("someone_else", {})).failures == ()
    finally:
        pm.unregister(raising)
        pm.unregister(drawing)


# ---------------------------------------------------------------- cka


def test_cka_figures_for_one_dataset_an_id_ood_pair_and_two_models():
    from model_audit_probes.cka.figures import render, terminal

    rng = np.random.default_rng(0)
    a = rng.uniform(0.3, 1, (5, 5))
    m = (a + a.T) / 2
    np.fill_diagonal(m, 1.0)
    m[4, :] = m[:, 4] = np.nan  # an undefined layer is drawn grey, not dropped
    eig = np.linalg.eigvalsh(np.nan_to_num(m))[::-1]
    layers = np.array(["l0", "l1", "l2", "l3", "output"], dtype=object)
    single = render(view("cka", {"matrix": m, "eigenvalues": eig, "layers": layers}))
    assert [f.title for f in single] == ["layer×layer CKA", "off-diagonal CKA and eigenvalue spectrum"]
    assert all(is_png(f) for f in single)
    pair = render(
        view(
            "cka",
            {
                "matrix_id": m,
                "matrix_ood": m**2,
                "eigenvalues_id": eig,
                "eigenvalues_ood": eig / 2,
                "layers": layers,
            },
            metrics=[
                ("offdiag_mean", 0.8, None, "id"),
                ("offdiag_mean", 0.9, None, "ood"),
                ("accuracy", 0.97, None, "id"),
            ],
            datasets=("id", "ood"),
        )
    )
    assert len(pair) == 2 and all(is_png(f) for f in pair)
    assert "0.8 → 0.9" in pair[0].caption and "in distribution (id, left)" in pair[0].caption
    cross = render(
        view(
            "cka",
            {"matrix": m[:, :3], "layers_a": layers, "layers_b": layers[:3]},
            metrics=[("cross_mean", 0.7, None, None)],
            models=("a", "b"),
        )
    )
    assert [f.title for f in cross] == ["CKA between two models", "distribution of the cross-model CKA"]
    assert "Mean 0.7" in cross[0].caption
    grids = terminal(view("cka", {"matrix_id": m, "matrix_ood": m, "layers": layers}, datasets=("id", "ood")))
    assert len(grids) == 2


# ---------------------------------------------------------------- entk: Marchenko–Pastur and the tail


@pytest.mark.parametrize(
    ("n", "p", "sigma2"), [(1000, 250, 1.0), (128, 64, 2.5), (300, 300, 0.5), (50, 7, 1.0)]
)
def test_marchenko_pastur_edges_follow_the_formula(n, p, sigma2):
    from model_audit_probes.entk.spectra import marchenko_pastur_edges

    lo, hi = marchenko_pastur_edges(n, p, sigma2)
    assert lo == pytest.approx(sigma2 * (1 - math.sqrt(p / n)) ** 2, rel=1e-12, abs=1e-15)
    assert hi == pytest.approx(sigma2 * (1 + math.sqrt(p / n)) ** 2, rel=1e-12)
    assert marchenko_pastur_edges(p, n, sigma2) == (lo, hi)  # a wide matrix is transposed first


@pytest.mark.parametrize(("q", "sigma2"), [(0.25, 1.0), (0.5, 2.0), (1.0, 1.0), (0.08, 0.7)])
def test_marchenko_pastur_density_is_a_distribution_with_mean_sigma2(q, sigma2):
    from scipy.integrate import quad

    from model_audit_probes.entk.figures import mp_density, mp_survival

    lo, hi = sigma2 * (1 - math.sqrt(q)) ** 2, sigma2 * (1 + math.sqrt(q)) ** 2

    def f(x):
        return float(mp_density(np.array([x]), q, sigma2)[0])

    assert quad(f, lo, hi, limit=200)[0] == pytest.approx(1.0, abs=1e-6)
    assert quad(lambda x: x * f(x), lo, hi, limit=200)[0] == pytest.approx(sigma2, rel=1e-6)
    s = mp_survival(np.array([lo, (lo + hi) / 2, hi, hi * 2]), q, sigma2)
    assert (
        s[0] == pytest.approx(1.0)
        and s[2] == pytest.approx(0.0, abs=1e-12)
        and s[3] == pytest.approx(0.0, abs=1e-15)
    )
    mid = (lo + hi) / 2
    assert s[1] == pytest.approx(quad(f, mid, hi, limit=200)[0], abs=1e-6)


def test_marchenko_pastur_survival_matches_the_eigenvalues_of_a_random_matrix():
    from model_audit_probes.entk.figures import mp_survival, survival

    rng = np.random.default_rng(1)
    n, p = 2000, 500
    x = rng.standard_normal((n, p))
    eig = np.linalg.eigvalsh(x.T @ x / n)
    values, empirical = survival(eig)
    assert np.max(np.abs(empirical - mp_survival(values, p / n))) < 0.02


def test_tail_line_starts_at_the_tail_share_with_slope_one_minus_alpha():
    from model_audit_probes.entk.figures import tail_line

    x, y = tail_line(alpha=2.5, xmin=3.0, n_tail=20, n=100, x_max=300.0)
    assert x[0] == pytest.approx(3.0, rel=1e-15) and y[0] == pytest.approx(0.2)
    slope = np.diff(np.log(y)) / np.diff(np.log(x))
    assert np.allclose(slope, 1 - 2.5)


def test_entk_figures_from_stored_spectra():
    from model_audit_probes.entk.figures import render
    from model_audit_probes.entk.spectra import kernel_spectrum, weight_spectrum

    rng = np.random.default_rng(2)
    g = rng.standard_normal((60, 40))
    k = g @ g.T
    y = rng.integers(0, 3, 60)
    km, ka = kernel_spectrum(k, y)
    wm, wl = weight_spectrum(rng.standard_normal((80, 30)))
    arrays = {
        "ntk_eigenvalues": ka["eigenvalues"],
        "ntk_target_captured": ka["target_captured"],
        "w[fc.weight].eigenvalues": wl,
    }
    metrics = [(f"ntk_{k_}", v, None, None) for k_, v in km.items()]
    metrics += [(f"w[fc.weight].{k_}", v, None, None) for k_, v in wm.items()]
    metrics += [("network_accuracy", 0.9, None, "test"), ("kernel_regression_accuracy", 0.85, None, "test")]
    figures = render(view("entk", arrays, metrics=metrics, datasets=("train", "test")))
    assert [f.title for f in figures] == ["kernel spectra", "weight spectra", "kernel surrogates"]
    assert all(is_png(f) for f in figures)
    assert "λ₊ = (1 + √q)²" in figures[1].caption


# ---------------------------------------------------------------- trimmed_ks


def test_trimmed_cdf_follows_the_stored_weights_and_ends_at_one():
    from model_audit_probes.trimmed_ks.figures import trimmed_cdf

    atoms, f, g = trimmed_cdf(np.array([3.0, 1.0, 2.0, 2.0]), np.array([0.5, 0.5, 0.0]))
    assert atoms.tolist() == [1.0, 2.0, 3.0]
    assert f.tolist() == [0.25, 0.75, 1.0] and g.tolist() == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="2 trimming weights for 3 distinct scores"):
        trimmed_cdf(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5]))


def test_the_ecdf_figure_with_the_optimal_trimming_is_a_png():
    from model_audit_probes.trimmed_ks import dalpha
    from model_audit_probes.trimmed_ks.figures import candidate_figure, trimmed_cdf

    rng = np.random.default_rng(3)
    ref = rng.normal(0, 1, 400)
    x = np.concatenate([rng.normal(0, 1, 75), rng.normal(4, 0.3, 25)])  # 25 % outliers: α̂ under 0.25
    problem = dalpha.TrimmedKS(x, ref)
    a_hat = dalpha.alpha_hat(x, "ks_asymptotic", ref)
    weights = problem.trimming(a_hat)
    _, f, g = trimmed_cdf(x, weights)
    assert 0.0 < a_hat < 0.3 and g[-1] == pytest.approx(1.0)
    assert np.all(
        np.diff(np.concatenate(([0.0], g))) <= np.diff(np.concatenate(([0.0], f))) / (1 - a_hat) + 1e-12
    )
    alphas = np.linspace(0, 0.5, 11)
    fig = candidate_figure(
        "cand",
        x,
        ref,
        weights,
        a_hat,
        alphas=alphas,
        curve=problem.curve(alphas),
        null_curves=[problem.curve(alphas) / 2],
        threshold=dalpha.threshold("ks_asymptotic", x.size, ref.size),
        limit=problem.limit(),
    )
    assert len(fig.axes) == 3
    assert is_png(Figure.from_matplotlib(fig, "eCDF"))
    no_trim = candidate_figure("cand", x, ref, None, 1.0)  # α̂ = 1: nothing to shade, no curve: two panels
    assert len(no_trim.axes) == 2 and is_png(Figure.from_matplotlib(no_trim, "eCDF"))


def test_trimmed_ks_render_draws_an_overview_and_one_figure_per_candidate():
    from model_audit_probes.trimmed_ks import dalpha
    from model_audit_probes.trimmed_ks.figures import render

    rng = np.random.default_rng(4)
    ref = rng.normal(0, 1, 300)
    cand = rng.normal(0.5, 1, 100)
    alphas = np.linspace(0, 0.5, 6)
    problem = dalpha.TrimmedKS(cand, ref)
    arrays = {
        "score_kind": np.array(["margin"]),
        "reference_models": np.array(["s/0", "s/1"]),
        "reference:scores": ref,
        "d_alpha:alphas": alphas,
        "cand:scores": cand,
        "cand:d_alpha": problem.curve(alphas),
        "cand:trimming": problem.trimming(0.2),
        "s/0:scores": ref[:100],
        "s/0:d_alpha": problem.curve(alphas) / 3,
        "s/1:scores": ref[100:200],
        "s/1:d_alpha": problem.curve(alphas) / 4,
    }
    metrics = [
        ("alpha_hat", 0.2, "cand", None),
        ("alpha_hat", 0.0, "s/0", None),
        ("alpha_hat", 0.01, "s/1", None),
    ]
    metrics += [("null_alpha_hat_max", 0.01, None, None), ("ks_threshold", 0.15, "cand", None)]
    figures = render(
        view(
            "trimmed_ks",
            arrays,
            metrics=metrics,
            models=("s/0", "s/1", "cand"),
            params={"rule": "ks_asymptotic"},
        )
    )
    assert [f.title for f in figures] == ["α̂ of each model", "cand against the reference"]
    assert figures[1].model == "cand" and all(is_png(f) for f in figures)


# ---------------------------------------------------------------- embedding


@pytest.mark.parametrize("lda_dims", [1, 2])
def test_embedding_figures_scatter_by_source(lda_dims):
    from model_audit_probes.embedding.figures import render

    rng = np.random.default_rng(5)
    source = np.repeat(np.arange(3 if lda_dims == 2 else 2), 50)
    pca = rng.normal(size=(source.size, 2)) + source[:, None]
    arrays = {
        "pca_2d": pca,
        "lda_2d": pca[:, :lda_dims],
        "source": source,
        "source_names": np.array([f"s{i}" for i in range(source.max() + 1)]),
        "pca_explained_variance_ratio": np.array([0.5, 0.3, 0.2]),
        "lda_null_accuracy": rng.uniform(0.4, 0.6, 50),
        "association_source": np.array([0.9, 0.1, 0.0]),
    }
    figures = render(view("embedding", arrays, metrics=[("lda_cv_accuracy", 0.95, None, None)]))
    assert [f.title for f in figures] == ["sources in PCA and LDA", "separability against chance"]
    assert all(is_png(f) for f in figures)
