"""The emulator probe's arithmetic against direct float64 formulas (numpy inverses, scipy distributions)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from model_audit_probes.emulator import chi2


def spd(rng, p, decay=0.8):
    a = rng.normal(size=(p, p))
    return a @ a.T / p + np.diag(decay ** np.arange(p))


def draw(rng, cov, n):
    return rng.multivariate_normal(np.zeros(len(cov)), cov, size=n)


# ------------------------------------------------------------------------------------------ χ² itself


def test_chi2_full_covariance_matches_the_explicit_inverse():
    rng = np.random.default_rng(0)
    sigma = spd(rng, 14)
    r = rng.normal(size=(50, 14))
    res = chi2.chi2_per_sample(r, chi2.Covariance.from_matrix(sigma))
    direct = np.array([ri @ np.linalg.inv(sigma) @ ri for ri in r])
    np.testing.assert_allclose(res.chi2, direct, rtol=1e-10)
    np.testing.assert_allclose(res.p_values, stats.chi2.sf(direct, 14), rtol=1e-9)
    np.testing.assert_array_equal(res.dof, 14)
    assert res.mean_per_bin == pytest.approx(
        direct.sum() / (50 * 14), rel=1e-12
    )  # Nadler & To's normalisation


def test_diagonal_errors_give_the_sum_of_squared_pulls():
    rng = np.random.default_rng(1)
    s = rng.uniform(0.1, 2.0, size=9)
    r = rng.normal(size=(20, 9))
    res = chi2.chi2_per_sample(r, chi2.Covariance.from_errors(s))
    np.testing.assert_allclose(res.chi2, ((r / s) ** 2).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(chi2.pulls(r, s), r / s)


def test_chi2_is_invariant_under_a_joint_linear_change_of_bins():
    """r → A r and Σ → A Σ Aᵀ (any invertible A: units, bin mixing) leave every χ² unchanged."""
    rng = np.random.default_rng(2)
    sigma = spd(rng, 8)
    a = rng.normal(size=(8, 8)) + 3 * np.eye(8)
    r = rng.normal(size=(30, 8))
    before = chi2.chi2_per_sample(r, chi2.Covariance.from_matrix(sigma)).chi2
    after = chi2.chi2_per_sample(r @ a.T, chi2.Covariance.from_matrix(a @ sigma @ a.T)).chi2
    np.testing.assert_allclose(after, before, rtol=1e-8)


def test_hartlap_factor_known_values():
    assert chi2.hartlap_factor(100, 10) == pytest.approx(88 / 99)
    assert chi2.hartlap_factor(400, 14) == pytest.approx(384 / 399)
    cov = chi2.Covariance.from_realisations(np.random.default_rng(0).normal(size=(30, 10)))
    assert cov.hartlap == pytest.approx(18 / 29)
    assert cov.n_realisations == 30


def test_sample_covariance_is_the_unbiased_estimate():
    x = np.random.default_rng(3).normal(size=(40, 5))
    np.testing.assert_allclose(
        chi2.Covariance.from_realisations(x).matrix, np.cov(x, rowvar=False), rtol=1e-12
    )


def test_hartlap_makes_the_mean_chi2_p_and_hotelling_makes_p_values_uniform():
    """Monte Carlo under the null: Σ̂ from n_s = 30 realisations of p = 10 bins, a fresh r ~ N(0, Σ) each time.
    Uncorrected, E[rᵀΣ̂⁻¹r] = p (n_s − 1)/(n_s − p − 2) ≈ 16.1; with the Hartlap factor ≈ p. The p-values from
    Hotelling's F are uniform; those from χ²(p) of the same statistic are not (the pitfall)."""
    rng = np.random.default_rng(4)
    p, n_s, trials = 10, 30, 3000
    sigma = spd(rng, p)
    raw, corrected, hotelling = np.empty(trials), np.empty(trials), np.empty(trials)
    chol = np.linalg.cholesky(sigma)
    for t in range(trials):
        cov = chi2.Covariance.from_realisations(rng.normal(size=(n_s, p)) @ chol.T)
        r = (chol @ rng.normal(size=p))[None, :]
        res = chi2.chi2_per_sample(r, cov)
        corrected[t], hotelling[t] = res.chi2[0], res.p_values[0]
        raw[t] = cov.raw_chi2(r)[0]
    se = corrected.std() / np.sqrt(trials)
    assert abs(corrected.mean() - p) < 4 * se
    assert raw.mean() == pytest.approx(p * (n_s - 1) / (n_s - p - 2), rel=0.08)
    assert stats.kstest(hotelling, "uniform").pvalue > 0.01
    assert stats.kstest(stats.chi2.sf(raw, p), "uniform").pvalue < 1e-6


def test_under_the_null_p_values_are_uniform_and_reduced_chi2_is_one():
    rng = np.random.default_rng(5)
    sigma = spd(rng, 14)
    r = draw(rng, sigma, 4000)
    res = chi2.chi2_per_sample(r, chi2.Covariance.from_matrix(sigma))
    # reduced χ² of one sample has variance 2/p; the mean over n has standard error sqrt(2/(p n))
    assert abs(res.reduced.mean() - 1) < 4 * np.sqrt(2 / (14 * 4000))
    ks, p_ks = chi2.calibration(res.p_values)
    assert p_ks > 0.01 and ks < 0.03
    assert res.fail_fraction(0.05) == pytest.approx(0.05, abs=4 * np.sqrt(0.05 * 0.95 / 4000))
    mean_pull, rms_pull = chi2.pull_summary(chi2.pulls(r, np.sqrt(np.diag(sigma))))
    assert np.all(np.abs(mean_pull) < 4 / np.sqrt(4000))
    np.testing.assert_allclose(rms_pull, 1.0, atol=0.06)


def test_a_biased_emulator_is_caught():
    rng = np.random.default_rng(6)
    sigma = spd(rng, 14)
    s = np.sqrt(np.diag(sigma))
    r = draw(rng, sigma, 1000) + 0.5 * s  # the emulator under-predicts by half an error bar in every bin
    res = chi2.chi2_per_sample(r, chi2.Covariance.from_matrix(sigma))
    assert res.mean_per_bin > 1.1
    assert chi2.calibration(res.p_values)[1] < 1e-6
    assert res.fail_fraction(0.05) > 0.1
    mean_pull, _ = chi2.pull_summary(chi2.pulls(r, s))
    np.testing.assert_allclose(mean_pull, 0.5, atol=0.15)


# ------------------------------------------------------------------------------ bad covariances


def test_singular_covariance_is_an_error_naming_rank_and_condition():
    rng = np.random.default_rng(7)
    b = rng.normal(size=(6, 4))
    with pytest.raises(chi2.CovarianceError, match=r"rank 4 of 6.*pinv"):
        chi2.Covariance.from_matrix(b @ b.T)
    with pytest.raises(chi2.CovarianceError, match="rank 2 of 3"):
        chi2.Covariance.from_errors([1.0, 0.0, 2.0])


def test_pseudo_inverse_measures_the_supported_subspace_with_dof_rank_and_warns():
    rng = np.random.default_rng(8)
    b = rng.normal(size=(6, 4))
    sigma = b @ b.T
    cov = chi2.Covariance.from_matrix(sigma, singular="pinv")
    assert cov.pseudo and cov.rank == 4 and cov.warnings and "pseudo-inverse" in cov.warnings[0]
    r = rng.normal(size=(25, 6))
    res = chi2.chi2_per_sample(r, cov)
    direct = np.einsum("ij,jk,ik->i", r, np.linalg.pinv(sigma, rcond=1e-10, hermitian=True), r)
    np.testing.assert_allclose(res.chi2, direct, rtol=1e-8)
    assert np.all(np.isfinite(res.p_values))
    np.testing.assert_allclose(res.p_values, stats.chi2.sf(direct, 4), rtol=1e-7)
    # under the null on the supported subspace the pseudo-inverse χ² is χ²(rank)
    null = chi2.chi2_per_sample(rng.normal(size=(3000, 4)) @ b.T, cov)
    assert stats.kstest(null.p_values, "uniform").pvalue > 0.01


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.array([[1.0, 0.5], [0.4, 1.0]]), "not symmetric"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "not positive semi-definite"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "non-finite"),
        (np.ones((2, 3)), "square"),
        (np.zeros((2, 2)), "zero or negative"),
    ],
)
def test_bad_matrices_are_clear_errors(matrix, message):
    with pytest.raises(chi2.CovarianceError, match=message):
        chi2.Covariance.from_matrix(matrix)


def test_too_few_realisations_is_an_error_even_with_pinv():
    with pytest.raises(chi2.CovarianceError, match=r"needs n_s > p \+ 2 = 16"):
        chi2.Covariance.from_realisations(np.random.default_rng(0).normal(size=(16, 14)), singular="pinv")


def test_ill_conditioned_but_invertible_warns():
    cov = chi2.Covariance.from_matrix(np.diag([1.0, 1e-9]))
    assert cov.rank == 2 and not cov.pseudo
    assert any("condition number 1e+09" in w for w in cov.warnings)


# ----------------------------------------------------------------------------- spaces and masking


def test_to_space_round_trips_and_states_the_nonpositive_rule():
    x = np.array([[1.0, 10.0, 1e-3]])
    np.testing.assert_allclose(chi2.to_space(x, "linear", "log10"), [[0.0, 1.0, -3.0]])
    np.testing.assert_allclose(chi2.to_space(np.log10(x), "log10", "linear"), x)
    bad = np.array([[1.0, 0.0, -2.0], [1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"2 value\(s\) ≤ 0 in bins 1, 2.*mask.*floor"):
        chi2.to_space(bad, "linear", "log10")
    masked = chi2.to_space(bad, "linear", "log10", nonpositive="mask")
    assert np.isnan(masked[0, 1:]).all() and np.isfinite(masked[1]).all()
    floored = chi2.to_space(bad, "linear", "log10", nonpositive="floor", floor=1e-4)
    np.testing.assert_allclose(floored[0], [0.0, -4.0, -4.0])
    with pytest.raises(ValueError, match="floor > 0"):
        chi2.to_space(bad, "linear", "log10", nonpositive="floor")
    with pytest.raises(ValueError, match="non-finite"):
        chi2.to_space(np.array([[np.inf, 1.0]]), "log10", "log10")


def test_masked_bins_use_the_sub_covariance_and_fewer_dof():
    rng = np.random.default_rng(9)
    sigma = spd(rng, 6)
    r = rng.normal(size=(10, 6))
    r[2, [1, 4]] = np.nan
    r[7, 0] = np.nan
    res = chi2.chi2_per_sample(r, chi2.Covariance.from_matrix(sigma))
    for i in range(10):
        keep = np.isfinite(r[i])
        sub = sigma[np.ix_(keep, keep)]
        direct = r[i, keep] @ np.linalg.solve(sub, r[i, keep])
        assert res.chi2[i] == pytest.approx(direct, rel=1e-10)
        assert res.dof[i] == keep.sum()
        assert res.p_values[i] == pytest.approx(stats.chi2.sf(direct, keep.sum()), rel=1e-9)
    assert res.mean_per_bin == pytest.approx(res.chi2.sum() / (60 - 3))


def test_masked_bins_with_realisations_use_the_hartlap_factor_of_the_kept_bins():
    rng = np.random.default_rng(10)
    cov = chi2.Covariance.from_realisations(rng.normal(size=(50, 6)))
    r = rng.normal(size=(1, 6))
    r[0, 5] = np.nan
    res = chi2.chi2_per_sample(r, cov)
    sub = cov.matrix[:5, :5]
    raw = r[0, :5] @ np.linalg.solve(sub, r[0, :5])
    assert res.chi2[0] == pytest.approx(chi2.hartlap_factor(50, 5) * raw, rel=1e-10)
    assert res.p_values[0] == pytest.approx(stats.f.sf(raw * (50 - 5) / (5 * 49), 5, 45), rel=1e-9)


def test_fractional_error_percentiles_match_numpy():
    rng = np.random.default_rng(11)
    ref = rng.uniform(1, 2, size=(200, 4))
    pred = ref * (1 + rng.normal(scale=0.01, size=ref.shape))
    fe = chi2.fractional_errors(pred, ref)
    np.testing.assert_allclose(fe, np.abs(pred - ref) / ref, rtol=1e-9)
    per_bin, overall = chi2.percentiles(fe)
    np.testing.assert_allclose(per_bin, np.percentile(np.abs(pred - ref) / ref, [68, 95, 99], axis=0))
    np.testing.assert_allclose(overall, np.percentile(np.abs(pred - ref) / ref, [68, 95, 99]))
    assert np.isnan(chi2.fractional_errors(np.array([1.0]), np.array([0.0]))[0])


@pytest.mark.parametrize(
    ("shape", "kind"),
    [((14,), "diagonal"), ((1, 14), "diagonal"), ((14, 14), "full"), ((400, 14), "realisations")],
)
def test_auto_kind(shape, kind):
    rng = np.random.default_rng(12)
    data = spd(rng, 14) if shape == (14, 14) else rng.uniform(0.1, 1, size=shape)
    assert chi2.resolve_kind(data, "auto", 14) == kind
