"""The `embedding` probe's statistics against scikit-learn, scipy and float64 formulas written out here.

Besides agreement with the references: invariances (a rotation of the embedding space changes none of MMD,
silhouette, LDA/logistic CV accuracy), calibration (two samples of one distribution are rejected at no more than
the nominal rate over many seeds) and power (well-separated sources give accuracy 1 and the smallest p-value).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import sklearn.covariance
import torch
from sklearn.datasets import load_digits, load_iris, load_wine
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model_audit_probes.embedding.stats import (
    StreamingPCA,
    component_label_association,
    cv_accuracy,
    fisher_ratio,
    fisher_ratio_cv,
    fit_pca,
    group_folds,
    lda_fit,
    lda_predict,
    lda_transform,
    ledoit_wolf_shrinkage,
    logistic_fit,
    logistic_predict,
    median_bandwidth,
    mmd2_unbiased,
    mmd_test,
    pairwise_mmd,
    permutation_test,
    project,
    randomized_pca,
    shrunk_covariance,
    silhouette,
    stratified_folds,
)

# ----------------------------------------------------------------------------------------- helpers and data


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def sklearn_fold_ids(x: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0) -> tuple[np.ndarray, object]:
    cv = StratifiedKFold(k, shuffle=True, random_state=seed)
    fold = np.empty(len(y), dtype=np.int64)
    for i, (_, test) in enumerate(cv.split(x, y)):
        fold[test] = i
    return fold, cv


def spiked(n: int, d: int, seed: int, offset: float = 3.0) -> np.ndarray:
    """Gaussian rows with 8 spiked directions (a clear gap to a flat bulk) in a random basis, shifted."""
    rng = np.random.default_rng(seed)
    spectrum = np.r_[np.geomspace(400, 20, 8), np.full(d - 8, 0.25)]
    return (rng.normal(size=(n, d)) * np.sqrt(spectrum)) @ random_rotation(d, seed + 1).T + offset


def aligned(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|cosine| between corresponding rows (1 when two component sets agree up to sign)."""
    return np.abs(np.sum(a * b, axis=1)) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return load_digits(return_X_y=True)


# ----------------------------------------------------------------------------------------- PCA


def test_streaming_pca_matches_sklearn_with_uneven_batches_and_a_large_offset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 40)) @ rng.normal(size=(40, 40)) + 1e4  # a common offset 10⁴ × the spread
    ref = PCA(12, svd_solver="full").fit(x)
    acc = StreamingPCA()
    for batch in np.array_split(x, [1, 7, 500, 1800]):  # uneven, including a single row
        acc.update(batch.astype(np.float64))
    res = acc.result(12)
    np.testing.assert_allclose(res.explained_variance, ref.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(res.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(res.mean, ref.mean_, rtol=1e-13)
    assert res.total_variance == pytest.approx(np.var(x, axis=0, ddof=1).sum(), rel=1e-11)
    np.testing.assert_allclose(aligned(res.components, ref.components_), 1.0, atol=1e-9)
    assert res.n_samples == 3000
    # scores agree with sklearn's transform up to each component's sign
    ours, theirs = project(x, res.mean, res.components), ref.transform(x)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours, theirs * signs, atol=1e-7 * np.abs(theirs).max())
    # the sign convention: largest-magnitude entry of each component is positive
    assert np.all(res.components[np.arange(12), np.abs(res.components).argmax(axis=1)] > 0)


def test_streaming_pca_merge_of_shards_equals_one_stream_and_torch_batches_work():
    x = spiked(900, 30, seed=3)
    one = StreamingPCA()
    for b in np.array_split(x, 9):
        one.update(torch.from_numpy(b).float())  # float32 tensors, as a model would give
    a, b = StreamingPCA(), StreamingPCA()
    for part in np.array_split(x[:400], 4):
        a.update(torch.from_numpy(part).float())
    for part in np.array_split(x[400:], 5):
        b.update(torch.from_numpy(part).float())
    merged = a.merge(b)
    np.testing.assert_allclose(merged.covariance().numpy(), one.covariance().numpy(), rtol=1e-10, atol=1e-12)
    ref = np.cov(torch.from_numpy(x).float().double().numpy(), rowvar=False)
    np.testing.assert_allclose(one.covariance().numpy(), ref, rtol=1e-9, atol=1e-10)
    scores = project(torch.from_numpy(x), merged.result(3).mean, merged.result(3).components)
    assert isinstance(scores, torch.Tensor) and scores.dtype == torch.float64 and scores.shape == (900, 3)


def test_randomized_pca_matches_sklearn_and_makes_iters_plus_one_passes():
    x = spiked(2000, 300, seed=5)
    ref = PCA(8, svd_solver="full").fit(x)
    calls = []

    def batches():
        calls.append(1)
        return iter(np.array_split(x, 6))

    res = randomized_pca(batches, k=8, oversample=10, iters=4, seed=0)
    assert len(calls) == 5
    np.testing.assert_allclose(res.explained_variance, ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(res.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(aligned(res.components, ref.components_), 1.0, atol=1e-9)
    np.testing.assert_allclose(res.mean, ref.mean_, rtol=1e-12)
    assert res.total_variance == pytest.approx(np.var(x, axis=0, ddof=1).sum(), rel=1e-11)
    # fewer power iterations are measurably worse: the test can see a broken iteration
    rough = randomized_pca(lambda: iter(np.array_split(x, 6)), k=8, oversample=2, iters=0, seed=0)
    assert np.max(np.abs(rough.explained_variance / ref.explained_variance_ - 1)) > 1e-6


def test_fit_pca_switches_to_randomized_above_the_scatter_limit():
    x = spiked(600, 50, seed=7)
    exact = fit_pca(lambda: iter(np.array_split(x, 3)), 5)
    rand = fit_pca(lambda: iter(np.array_split(x, 3)), 5, max_scatter_dim=10)
    np.testing.assert_allclose(rand.explained_variance, exact.explained_variance, rtol=1e-7)
    np.testing.assert_allclose(aligned(rand.components, exact.components), 1.0, atol=1e-8)


# ----------------------------------------------------------------------------------------- LDA


@pytest.mark.parametrize("shrinkage", [None, 0.3, "auto"])
def test_lda_predictions_and_coefficients_equal_sklearn_eigen_solver(digits, shrinkage):
    x, y = load_wine(return_X_y=True) if shrinkage is None else digits
    ref = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(x, y)
    model = lda_fit(x, y, shrinkage=shrinkage)
    np.testing.assert_array_equal(lda_predict(model, x), ref.predict(x))
    np.testing.assert_allclose(model.coef.numpy(), ref.coef_, atol=1e-9 * np.abs(ref.coef_).max())
    np.testing.assert_allclose(
        model.intercept.numpy(), ref.intercept_, atol=1e-9 * np.abs(ref.intercept_).max()
    )
    np.testing.assert_allclose(model.means.numpy(), ref.means_, rtol=1e-12)


def test_lda_projection_equals_sklearn_up_to_sign_and_offset_without_shrinkage():
    """Compared: sklearn's eigen-solver transform minus its value at the prior-weighted mean (sklearn does not
    centre), column by column up to sign; both use the vᵀS_W v = 1 scale, so no rescaling is allowed."""
    x, y = load_wine(return_X_y=True)
    ref = LinearDiscriminantAnalysis(solver="eigen").fit(x, y)
    model = lda_fit(x, y, shrinkage=None)
    ours = lda_transform(model, x)
    theirs = ref.transform(x) - model.center.numpy() @ ref.scalings_[:, :2]
    assert ours.shape == theirs.shape == (len(y), 2)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours, theirs * signs, atol=1e-9 * np.abs(theirs).max())
    np.testing.assert_allclose(model.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-10)


def test_lda_projection_with_auto_shrinkage_spans_the_decision_subspace_of_sklearn(digits):
    """With shrinkage sklearn's S_T − S_W is full-rank, so its directions differ; compared here is the subspace:
    ours must span exactly span{coef_k − coef_j} of sklearn's classifier (all principal angles ≈ 0)."""
    x, y = digits
    ref = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x, y)
    model = lda_fit(x, y, shrinkage="auto")
    w = model.scalings.numpy()
    assert w.shape == (64, 9)
    diffs = (ref.coef_[1:] - ref.coef_[0]).T
    angles = scipy.linalg.subspace_angles(w, diffs)
    assert np.max(angles) < 1e-6
    # and the directions are S_W-orthonormal
    sw = ref.covariance_
    np.testing.assert_allclose(w.T @ sw @ w, np.eye(9), atol=1e-8)


def test_ledoit_wolf_and_auto_shrunk_covariance_equal_sklearn():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 25)) * rng.uniform(0.1, 10, size=25) + 5
    xt = torch.from_numpy(x)
    assert ledoit_wolf_shrinkage(xt - xt.mean(0)) == pytest.approx(
        sklearn.covariance.ledoit_wolf_shrinkage(x), rel=1e-12
    )
    sc = StandardScaler().fit(x)
    ref = sc.scale_[:, None] * sklearn.covariance.ledoit_wolf(sc.transform(x))[0] * sc.scale_[None, :]
    np.testing.assert_allclose(shrunk_covariance(xt, "auto").numpy(), ref, rtol=1e-11)


def test_lda_without_shrinkage_on_singular_within_scatter_says_what_to_do():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="shrinkage"):
        lda_fit(rng.normal(size=(10, 30)), np.repeat([0, 1], 5), shrinkage=None)


# ----------------------------------------------------------------------------------------- folds and CV


def test_stratified_folds_partition_and_balance_each_class():
    y = np.repeat(["a", "b", "c"], [23, 17, 5])
    fold = stratified_folds(y, 5, seed=1)
    assert set(fold) == set(range(5))
    for label in "abc":
        counts = np.bincount(fold[y == label], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.bincount(fold).max() - np.bincount(fold).min() <= 1
    np.testing.assert_array_equal(fold, stratified_folds(y, 5, seed=1))
    assert not np.array_equal(fold, stratified_folds(y, 5, seed=2))


def test_group_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 40, size=400)
    y = groups % 3  # one label per document
    fold = group_folds(y, groups, 4, seed=0)
    for g in np.unique(groups):
        assert np.unique(fold[groups == g]).size == 1
    assert set(fold) == set(range(4))
    res = cv_accuracy(rng.normal(size=(400, 3)), y, "lda", folds=4, groups=groups)
    np.testing.assert_array_equal(res.folds, fold)


def test_cv_lda_equals_sklearn_cross_val_score_on_identical_folds_and_is_close_on_its_own(digits):
    x, y = digits
    fold, cv = sklearn_fold_ids(x, y)
    ref = cross_val_score(LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto"), x, y, cv=cv)
    ours = cv_accuracy(x, y, "lda", folds=fold)
    np.testing.assert_allclose(ours.fold_accuracies, ref, rtol=0, atol=1e-15)
    assert abs(cv_accuracy(x, y, "lda", folds=5, seed=0).accuracy - ref.mean()) < 0.01


def test_cv_logistic_agrees_with_sklearn_pipeline(digits):
    x, y = digits
    fold, cv = sklearn_fold_ids(x, y)
    ref = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, tol=1e-8)), x, y, cv=cv
    )
    ours = cv_accuracy(x, y, "logistic", folds=fold)
    assert abs(ours.accuracy - ref.mean()) < 0.01
    assert np.max(np.abs(ours.fold_accuracies - ref)) < 0.01


def test_logistic_binary_uses_sklearn_penalty_convention():
    x, y = load_iris(return_X_y=True)
    keep = y > 0  # versicolor vs virginica: not separable, so the penalty matters
    x, y = x[keep], y[keep]
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000)).fit(x, y)
    model = logistic_fit(x, y, C=0.05)
    w = model.weights.numpy()
    np.testing.assert_allclose(w[:, 1] - w[:, 0], ref[-1].coef_[0], rtol=1e-5)
    np.testing.assert_array_equal(logistic_predict(model, x), ref.predict(x))
    assert model.converged


def test_cv_accuracy_is_never_scored_on_the_training_fold():
    """Random labels with d > n: any model fitted on a fold is perfect on it, held-out accuracy is chance."""
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(60, 200)), rng.permutation(np.repeat([0, 1], 30))
    for model, kw in (("lda", {"shrinkage": 1e-3}), ("logistic", {"C": 100.0})):
        fitted = lda_fit(x, y, **kw) if model == "lda" else logistic_fit(x, y, **kw)
        predict = lda_predict if model == "lda" else logistic_predict
        assert (predict(fitted, x) == y).all()  # training accuracy 1
        res = cv_accuracy(x, y, model, folds=5, seed=0, **kw)
        assert 0.25 < res.accuracy < 0.75, (model, res.accuracy)
        assert permutation_test(x, y, model, folds=5, n_permutations=19, seed=0, **kw).p_value > 0.05


def test_cv_accuracy_with_pca_inside_folds(digits):
    x, y = digits
    res = cv_accuracy(x, y, "lda", folds=5, pca=20)
    fold, _ = sklearn_fold_ids(x, y)
    assert 0.85 < res.accuracy < 0.97
    # the PCA inside each fold must see no held-out row: compare with a reference written with sklearn
    ref = []
    for f in range(5):
        tr, te = fold != f, fold == f
        p = PCA(20, svd_solver="full").fit(x[tr])
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(p.transform(x[tr]), y[tr])
        ref.append(np.mean(lda.predict(p.transform(x[te])) == y[te]))
    np.testing.assert_allclose(cv_accuracy(x, y, "lda", folds=fold, pca=20).fold_accuracies, ref, atol=1e-12)


def test_permutation_test_separated_sources_reach_the_minimum_p_value():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 4.0]
    y = np.repeat(["web", "news"], 40)
    for model in ("lda", "logistic"):
        res = permutation_test(x, y, model, folds=5, n_permutations=49, seed=1)
        assert res.accuracy == pytest.approx(1.0, rel=1e-15)
        assert res.p_value == pytest.approx(1 / 50)
        assert res.null.shape == (49,) and res.null.max() < 0.8
        assert res.p_value == pytest.approx((1 + np.sum(res.null >= res.accuracy)) / 50, rel=1e-15)


@pytest.mark.slow  # 200 seeded permutation tests (4,000 cross-validated fits)
def test_permutation_test_is_calibrated_under_the_null():
    """200 seeds of two samples of one distribution; at level 0.05 the rejection rate must stay within the
    binomial slack of 0.05 (99.9 % quantile). CV accuracies are discrete, so null values tie with the observed
    one: ties must count as ≥ (conservative). Binomial slack cannot resolve a mildly liberal rule (strict >
    without the +1 rejects ≈ 0.065 here), so the tie rule is checked exactly on every seed as well."""
    n_seeds, level, b = 200, 0.05, 19
    rejections = ties = 0
    for seed in range(n_seeds):
        rng = np.random.default_rng(1000 + seed)
        x, y = rng.normal(size=(30, 2)), np.repeat([0, 1], 15)
        res = permutation_test(x, y, "lda", folds=3, n_permutations=b, seed=seed)
        tied = np.abs(res.null - res.accuracy) < 1e-12  # a mean of fold accuracies can differ by an ulp
        exceed = np.sum(res.null > res.accuracy) + np.sum(tied & (res.null <= res.accuracy))
        assert res.p_value == pytest.approx((1 + exceed) / (1 + b), rel=1e-15)
        ties += int(np.any(tied))
        rejections += res.p_value <= level
    assert ties > n_seeds // 4  # the exact check above did meet ties
    assert rejections <= scipy.stats.binom.ppf(0.999, n_seeds, level)


@pytest.mark.parametrize(
    ("model", "kw"),
    [("lda", {"shrinkage": None}), ("lda", {"shrinkage": 0.2}), ("logistic", {"standardize": False})],
)
def test_cv_accuracy_is_rotation_invariant(digits, model, kw):
    """A rotation of the embedding space changes no prediction (LDA: S_W and S_B rotate; shrinkage towards
    tr(S)/d·I rotates too; L2 logistic without per-feature standardisation). 'auto' shrinkage and standardised
    logistic regression work per coordinate and are not rotation-invariant, by construction."""
    x, y = load_wine(return_X_y=True)
    x = StandardScaler().fit_transform(x)
    rot = random_rotation(x.shape[1], seed=4)
    a = cv_accuracy(x, y, model, folds=5, seed=0, **kw)
    b = cv_accuracy(x @ rot, y, model, folds=5, seed=0, **kw)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert a.accuracy == pytest.approx(b.accuracy, rel=1e-15)  # from the same predictions


# ----------------------------------------------------------------------------------------- MMD


def naive_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Gretton et al. (2012) eq. 3, with explicit loops over i ≠ j."""

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def test_mmd2_and_bandwidth_equal_the_formulas():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(25, 3)), rng.normal(size=(18, 3)) + 0.7
    res = mmd_test(x, y, n_permutations=50, seed=0)
    z = np.r_[x, y]
    d2 = np.sum((z[:, None] - z[None]) ** 2, axis=-1)
    pairs = np.sort(d2[np.triu_indices(len(z), 1)])
    sigma = np.sqrt(pairs[(len(pairs) - 1) // 2] / 2)  # lower median, σ = √(median/2)
    assert res.bandwidth == pytest.approx(sigma, rel=1e-12)
    assert res.mmd2 == pytest.approx(naive_mmd2(x, y, sigma), rel=1e-10)
    fixed = mmd_test(x, y, n_permutations=10, bandwidth=0.9)
    assert fixed.bandwidth == 0.9 and fixed.mmd2 == pytest.approx(naive_mmd2(x, y, 0.9), rel=1e-10)
    # alibi-detect's default: σ from the reference sample alone
    dx = np.sum((x[:, None] - x[None]) ** 2, axis=-1)[np.triu_indices(25, 1)]
    assert median_bandwidth(x) == pytest.approx(np.sqrt(np.sort(dx)[(len(dx) - 1) // 2] / 2), rel=1e-12)


def test_vectorised_permutation_statistics_equal_a_loop():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(30, 4))
    d2 = np.sum((z[:, None] - z[None]) ** 2, axis=-1)
    kern = np.exp(-d2 / 3.0)
    np.fill_diagonal(kern, 0)
    assign = np.stack([rng.permutation(np.r_[np.ones(12), np.zeros(18)]) for _ in range(7)], axis=1)
    fast = mmd2_unbiased(torch.from_numpy(kern), torch.from_numpy(assign)).numpy()
    for b in range(7):
        a = assign[:, b].astype(bool)
        assert fast[b] == pytest.approx(naive_mmd2(z[a], z[~a], np.sqrt(1.5)), rel=1e-10)


def test_mmd_separated_sources_reach_the_minimum_p_value():
    rng = np.random.default_rng(2)
    res = mmd_test(rng.normal(size=(60, 8)), rng.normal(size=(50, 8)) + 1.5, n_permutations=99, seed=0)
    assert res.p_value == pytest.approx(1 / 100)
    assert res.mmd2 > 10 * res.null.max()


def test_mmd_is_calibrated_under_the_null():
    """2000 seeds, n = m = 15, B = 99: an exact permutation test with a continuous statistic rejects at level 0.05
    with probability exactly 0.05, so the rate must fall inside the binomial 99.9 % band on BOTH sides: a null that
    is not a permutation null (too conservative) or a kernel that degenerates fails. (At B = 99 dropping the +1
    rejects the same set at 0.05; the minimum-p tests catch that.)"""
    n_seeds, level = 2000, 0.05
    rejections = 0
    for seed in range(n_seeds):
        rng = np.random.default_rng(seed)
        z = rng.standard_t(df=5, size=(30, 3))
        rejections += mmd_test(z[:15], z[15:], n_permutations=99, seed=seed).p_value <= level
    lo, hi = scipy.stats.binom.ppf([0.0005, 0.9995], n_seeds, level)
    assert lo <= rejections <= hi, rejections


def test_mmd_is_rotation_invariant_and_seeded():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(35, 6)) * 1.3
    rot = random_rotation(6, seed=9)
    a, b = mmd_test(x, y, seed=5), mmd_test(x @ rot, y @ rot, seed=5)
    assert b.mmd2 == pytest.approx(a.mmd2, rel=1e-10)
    assert b.bandwidth == pytest.approx(a.bandwidth, rel=1e-12)
    assert a.p_value == b.p_value
    np.testing.assert_allclose(a.null, b.null, rtol=1e-9, atol=1e-15)
    assert mmd_test(x, y, seed=5).p_value == a.p_value


def test_mmd_subsamples_large_inputs_with_a_seeded_rng():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(500, 3)), rng.normal(size=(120, 3))
    a = mmd_test(x, y, n_permutations=20, max_n=100, seed=1)
    assert (a.n_x, a.n_y) == (100, 100)
    assert mmd_test(x, y, n_permutations=20, max_n=100, seed=1).mmd2 == a.mmd2
    assert mmd_test(x, y, n_permutations=20, max_n=100, seed=2).mmd2 != a.mmd2
    assert mmd_test(x, y, n_permutations=20, max_n=None).n_x == 500


def test_pairwise_mmd_covers_every_pair():
    rng = np.random.default_rng(5)
    srcs = {"a": rng.normal(size=(30, 2)), "b": rng.normal(size=(30, 2)), "c": rng.normal(size=(30, 2)) + 3}
    res = pairwise_mmd(srcs, n_permutations=49)
    assert list(res) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert res[("a", "c")].p_value == pytest.approx(1 / 50) and res[("a", "b")].p_value > 0.05


# ----------------------------------------------------------------------------------------- Fisher ratio


def test_fisher_ratio_equals_the_scatter_formula_and_is_rotation_invariant():
    x, y = load_wine(return_X_y=True)
    mu = x.mean(axis=0)
    sb = np.zeros((13, 13))
    sw = np.zeros((13, 13))
    for k in np.unique(y):
        xk = x[y == k]
        pk = len(xk) / len(x)
        dk = xk.mean(axis=0) - mu
        sb += pk * np.outer(dk, dk)
        sw += pk * np.cov(xk, rowvar=False, bias=True)
    assert fisher_ratio(x, y) == pytest.approx(np.trace(sb) / np.trace(sw), rel=1e-12)
    assert fisher_ratio(x @ random_rotation(13, 0), y) == pytest.approx(fisher_ratio(x, y), rel=1e-10)


def test_fisher_ratio_out_of_fold_removes_the_in_sample_bias_of_the_lda_projection():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(120, 60)), np.repeat([0, 1, 2], 40)  # a null: labels carry no information
    in_sample = fisher_ratio(lda_transform(lda_fit(x, y, shrinkage=0.1), x), y)
    out_of_fold = fisher_ratio_cv(x, y, folds=5, seed=0, shrinkage=0.1)
    assert in_sample > 0.5
    assert out_of_fold.ratio < 0.15 and out_of_fold.fold_ratios.shape == (5,)
    sep = np.r_[rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 3]
    assert fisher_ratio_cv(sep, np.repeat([0, 1], 40)).ratio > 3


# ----------------------------------------------------------------------------------------- silhouette


def test_silhouette_equals_sklearn_including_its_subsample_and_singletons(digits):
    x, y = digits
    assert silhouette(x[:400], y[:400]) == pytest.approx(silhouette_score(x[:400], y[:400]), abs=1e-12)
    assert silhouette(x, y, max_n=300, seed=7) == pytest.approx(
        silhouette_score(x, y, sample_size=300, random_state=7), abs=1e-12
    )
    lab = y[:50].copy()
    lab[0] = 99  # a singleton cluster has s = 0
    assert silhouette(x[:50], lab) == pytest.approx(silhouette_score(x[:50], lab), abs=1e-12)


def test_silhouette_is_rotation_invariant(digits):
    x, y = digits
    x, y = x[:300], y[:300]
    assert silhouette(x @ random_rotation(64, 1), y) == pytest.approx(silhouette(x, y), abs=1e-10)


# ----------------------------------------------------------------------------------------- association


def test_component_label_association_pearson_and_eta_against_scipy():
    rng = np.random.default_rng(8)
    n = 300
    source = rng.choice(["wiki", "news", "code"], size=n)
    length = rng.gamma(3, 100, size=n)
    scores = np.c_[
        length / 100 + rng.normal(size=n),
        (source == "code") * 2.0 + rng.normal(size=n),
        rng.normal(size=n),
    ]
    res = component_label_association(scores, {"source": source, "length": length})
    assert res["length"].kind == "pearson" and res["source"].kind == "eta"
    for j in range(3):
        r, p = scipy.stats.pearsonr(scores[:, j], length)
        assert res["length"].statistic[j] == pytest.approx(r, rel=1e-10)
        assert res["length"].p_value[j] == pytest.approx(p, rel=1e-6)
        groups = [scores[source == s, j] for s in np.unique(source)]
        grand = scores[:, j].mean()
        ssb = sum(len(g) * (g.mean() - grand) ** 2 for g in groups)
        sst = np.sum((scores[:, j] - grand) ** 2)
        assert res["source"].statistic[j] == pytest.approx(np.sqrt(ssb / sst), rel=1e-10)
        assert res["source"].p_value[j] == pytest.approx(scipy.stats.f_oneway(*groups).pvalue, rel=1e-6)
    assert res["source"].statistic[1] > 0.5 > res["source"].statistic[2]
    assert res["length"].statistic[0] > 0.5


def test_association_kinds_missing_values_and_two_level_eta_equals_abs_r():
    rng = np.random.default_rng(9)
    s = rng.normal(size=(100, 2))
    flag = rng.integers(0, 2, size=100)
    year = rng.integers(1900, 2020, size=100)  # many levels: numeric
    noisy = s[:, 0] + rng.normal(size=100)
    noisy[:10] = np.nan
    res = component_label_association(s, {"flag": flag, "year": year, "noisy": noisy}, kinds={"flag": "eta"})
    assert res["year"].kind == "pearson" and res["flag"].kind == "eta" and res["flag"].n_groups == 2
    r = np.array([scipy.stats.pearsonr(s[:, j], flag).statistic for j in range(2)])
    np.testing.assert_allclose(res["flag"].statistic, np.abs(r), rtol=1e-10)
    assert res["noisy"].n == 90
    assert res["noisy"].statistic[0] == pytest.approx(scipy.stats.pearsonr(s[10:, 0], noisy[10:]).statistic)
