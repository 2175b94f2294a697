"""Random-matrix and kernel spectra of the `entk` probe against closed forms and simulation."""

from __future__ import annotations

import numpy as np
import pytest

from model_audit_probes.entk.spectra import (
    kernel_spectrum,
    marchenko_pastur_edges,
    power_law_fit,
    tracy_widom_scale,
    weight_spectrum,
)


def test_mp_edges_closed_form_and_orientation():
    lo, hi = marchenko_pastur_edges(2000, 500)
    assert (lo, hi) == pytest.approx((0.25, 2.25))
    assert marchenko_pastur_edges(500, 2000) == pytest.approx((0.25, 2.25))
    assert marchenko_pastur_edges(2000, 500, sigma2=3.0) == pytest.approx((0.75, 6.75))
    assert marchenko_pastur_edges(100, 100) == pytest.approx((0.0, 4.0))


def test_tracy_widom_scale_closed_form():
    n, m = 2000, 500
    expected = (np.sqrt(n - 1) + np.sqrt(m)) * (1 / np.sqrt(n - 1) + 1 / np.sqrt(m)) ** (1 / 3) / n
    assert tracy_widom_scale(n, m) == pytest.approx(expected)
    assert tracy_widom_scale(m, n) == pytest.approx(expected)


def test_mp_edges_against_simulation():
    n, m = 2000, 500
    lo, hi = marchenko_pastur_edges(n, m)
    tw = tracy_widom_scale(n, m)
    tops, bottoms = [], []
    for seed in range(20):
        x = np.random.default_rng(seed).standard_normal((n, m))
        metrics, lam = weight_spectrum(x)
        assert metrics["spikes"] == 0
        assert np.all(np.diff(lam) <= 0)
        assert lam.mean() == pytest.approx(1.0)
        tops.append(lam[0])
        bottoms.append(lam[-1])
    assert np.all(np.abs(np.array(tops) - hi) < 5 * tw)
    assert np.abs(np.mean(tops) - hi) < 2 * tw  # TW mean is about −1.2σ: well inside two scales
    assert np.all(np.abs(np.array(bottoms) - lo) < 0.02)


def test_rank_one_spike_above_bbp_is_one_spike():
    n, m, ell = 2000, 500, 4.0  # BBP threshold √(m/n) = 0.5
    rng = np.random.default_rng(0)
    u = rng.standard_normal(m)
    u /= np.linalg.norm(u)
    z = rng.standard_normal((n, m))
    x = z + (np.sqrt(1 + ell) - 1) * np.outer(z @ u, u)  # covariance I + ℓuuᵀ
    metrics, _ = weight_spectrum(x)
    assert metrics["spikes"] == 1
    assert metrics["top_edge_ratio"] > 2
    bare, _ = weight_spectrum(z)
    assert bare["spikes"] == 0


def _pareto(rng, n, alpha, xmin=1.0):
    return xmin * (1 - rng.random(n)) ** (-1 / (alpha - 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_law_recovers_alpha(seed):
    fit = power_law_fit(_pareto(np.random.default_rng(seed), 5000, 2.5))
    # the MLE of α from n_tail points has sd (α − 1)/√n_tail (≈ 0.022 for the ~4500 kept here): 4 sd
    assert fit["alpha"] == pytest.approx(2.5, abs=4 * 1.5 / np.sqrt(fit["n_tail"]))
    assert fit["ks"] < 0.05
    assert 10 <= fit["n_tail"] <= 5000


@pytest.mark.parametrize("seed", [0, 1])
def test_power_law_finds_xmin_of_glued_tail(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(0, 2, 3000), _pareto(rng, 2000, 2.5, xmin=2.0)])
    fit = power_law_fit(x)
    assert 1.6 <= fit["xmin"] <= 3.0
    assert fit["alpha"] == pytest.approx(
        2.5, abs=4 * 1.5 / np.sqrt(fit["n_tail"])
    )  # sd (α − 1)/√n_tail: 4 sd
    naive = power_law_fit(x[x > 0], min_tail=4999)  # forcing the whole body in is a much worse fit
    assert naive["ks"] > 3 * fit["ks"]


def test_power_law_too_few_points_is_nan():
    fit = power_law_fit(np.array([1.0, 2.0, 3.0, -1.0, 0.0]))
    assert fit["n_tail"] == 0 and np.isnan(fit["alpha"]) and np.isnan(fit["ks"])
    assert power_law_fit(np.ones(50))["n_tail"] == 0  # no spread, no fit


def test_power_law_matches_brute_force_on_small_sample():
    x = _pareto(np.random.default_rng(3), 60, 2.0)
    fit = power_law_fit(x, min_tail=5)
    xs = np.sort(x)
    best = (np.inf, None, None)
    for i in range(len(xs) - 5 + 1):
        tail = xs[i:]
        a = 1 + tail.size / np.log(tail / xs[i]).sum()
        cdf = 1 - (tail / xs[i]) ** (1 - a)
        k = np.arange(1, tail.size + 1) / tail.size
        d = max(np.max(k - cdf), np.max(cdf - (k - 1 / tail.size)))
        if d < best[0]:
            best = (d, a, xs[i])
    assert fit["ks"] == pytest.approx(best[0])
    assert fit["alpha"] == pytest.approx(best[1])
    assert fit["xmin"] == pytest.approx(best[2])


def test_stable_and_effective_rank():
    metrics, _ = weight_spectrum(np.eye(50))
    assert metrics["stable_rank"] == pytest.approx(50)
    assert metrics["effective_rank"] == pytest.approx(50)
    rng = np.random.default_rng(0)
    one, _ = weight_spectrum(np.outer(rng.standard_normal(80), rng.standard_normal(30)))
    assert one["stable_rank"] == pytest.approx(1, abs=1e-9)
    assert one["effective_rank"] == pytest.approx(1, abs=1e-6)
    wide, _ = weight_spectrum(rng.standard_normal((30, 80)))  # oriented to 80×30
    assert (wide["rows"], wide["cols"]) == (80, 30)


def test_zero_matrix_gives_nan_not_error():
    metrics, _ = weight_spectrum(np.zeros((20, 10)))
    assert np.isnan(metrics["spikes"]) and np.isnan(metrics["stable_rank"])


def test_alignment_of_target_kernel_is_one_and_of_independent_kernel_near_zero():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    y = np.eye(4)[labels]
    metrics, arrays = kernel_spectrum(y @ y.T, labels)
    assert metrics["alignment"] == pytest.approx(1.0)
    assert arrays["target_captured"][3] == pytest.approx(1.0)  # the 4 class indicators span centred Y
    assert np.all(np.diff(arrays["target_captured"]) >= -1e-12)
    z = rng.standard_normal((300, 20))
    indep, arrays = kernel_spectrum(z @ z.T, labels)
    assert abs(indep["alignment"]) < 0.1
    assert arrays["target_captured"].shape == (10,)
    assert arrays["target_captured"][-1] < 0.3


def test_alignment_with_real_targets():
    rng = np.random.default_rng(1)
    t = rng.standard_normal((200, 2))
    metrics, _ = kernel_spectrum(t @ t.T + 5.0, t)  # a constant offset is removed by the centring
    assert metrics["alignment"] == pytest.approx(1.0)
    metrics, _ = kernel_spectrum(np.outer(t[:, 0], t[:, 0]), t[:, 0])
    assert metrics["alignment"] == pytest.approx(1.0)


def test_psd_check_flags_negative_eigenvalue():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    lam = np.linspace(1, 10, 50)
    psd, _ = kernel_spectrum(q @ np.diag(lam) @ q.T)
    assert psd["negative_eigenvalues"] == 0
    lam[0] = -0.5
    bad, arrays = kernel_spectrum(q @ np.diag(lam) @ q.T)
    assert bad["negative_eigenvalues"] == 1
    assert arrays["eigenvalues"][-1] == pytest.approx(-0.5)
    assert "alignment" not in bad


def test_kernel_tail_fit_is_finite():
    x = np.random.default_rng(0).standard_normal((300, 5))
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    metrics, arrays = kernel_spectrum(np.exp(-sq / 10))
    for key in ("alpha", "xmin", "ks", "effective_rank", "top_share"):
        assert np.isfinite(metrics[key]), key
    assert metrics["n_tail"] >= 10
    assert 0 < metrics["top_share"] < 1
    assert np.all(np.diff(arrays["eigenvalues"]) <= 0)
