"""Kernel surrogates of the `entk` probe: kGLM, faithfulness metrics, attribution, kernel ridge (direct and NAG)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LogisticRegression

from model_audit_probes.entk.surrogates import (
    TAU_CONVENTION,
    attribution,
    faithfulness,
    fit_kglm,
    kernel_ridge,
    kernel_ridge_nag,
    kernel_ridge_predict,
    one_hot,
)


def _blobs(n_per_class: int, seed: int, d: int = 5, sep: float = 4.0):
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, d))
    centres[0, 0] = centres[1, 1] = centres[2, 2] = sep
    x = np.concatenate([c + rng.standard_normal((n_per_class, d)) for c in centres])
    y = np.repeat(np.arange(3), n_per_class)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]


def _rbf(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.exp(-gamma * np.maximum(d2, 0.0))


# ----------------------------------------------------------------------------------------------------- kGLM


def test_kglm_separates_three_gaussian_classes_on_a_linear_kernel():
    x_tr, y_tr = _blobs(50, seed=0)
    x_te, y_te = _blobs(100, seed=1)
    model = fit_kglm(x_tr @ x_tr.T, y_tr, 3, l2=1e-3)
    proba = model.predict_proba(x_te @ x_tr.T)
    assert proba.shape == (300, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert np.mean(proba.argmax(axis=1) == y_te) >= 0.95
    # The standardisation statistics come from the training kernel and are stored.
    np.testing.assert_allclose(model.mean, (x_tr @ x_tr.T).mean(axis=0))


def test_kglm_accepts_torch_and_is_deterministic():
    x, y = _blobs(20, seed=2)
    k = x @ x.T
    a = fit_kglm(k, y, 3)
    b = fit_kglm(torch.from_numpy(k), torch.from_numpy(y), 3)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bias, b.bias)


@pytest.mark.parametrize("standardize", [False, True])
def test_kglm_matches_sklearn_multinomial_logistic_regression(standardize):
    x_tr, y_tr = _blobs(20, seed=3, sep=1.5)  # overlapping classes: the penalty matters
    x_te, _ = _blobs(15, seed=4, sep=1.5)
    k_tr, k_te = _rbf(x_tr, x_tr, 0.1), _rbf(x_te, x_tr, 0.1)
    l2, n = 1e-2, len(y_tr)
    model = fit_kglm(k_tr, y_tr, 3, l2=l2, max_iter=5000, standardize=standardize)
    assert model.converged
    # sklearn minimises C·Σ CE + ½‖W‖² (bias free) = (1/l2)·(mean CE + l2/2‖W‖²) when C = 1/(l2·N).
    ref = LogisticRegression(C=1.0 / (l2 * n), tol=1e-12, max_iter=100_000, solver="lbfgs")
    feats_tr = model.features(k_tr)  # identity map when standardize=False
    if not standardize:
        np.testing.assert_array_equal(feats_tr, k_tr)
    ref.fit(feats_tr, y_tr)
    expected = ref.predict_proba(model.features(k_te))
    np.testing.assert_allclose(model.predict_proba(k_te), expected, atol=1e-4)
    # And the fit is not trivially uniform: probabilities differ across points.
    assert np.ptp(expected[:, 0]) > 0.1


def test_kglm_two_classes_is_a_two_vector_softmax():
    x, y = _blobs(30, seed=5)
    keep = y < 2
    k = x[keep] @ x[keep].T
    model = fit_kglm(k, y[keep], 2, l2=1e-2)
    assert model.weights.shape == (2, keep.sum())
    # The penalty makes the optimum symmetric: W₀ = −W₁ (the sum does not change the softmax).
    np.testing.assert_allclose(model.weights[0], -model.weights[1], atol=1e-5)
    assert np.mean(model.predict(k) == y[keep]) >= 0.95


# -------------------------------------------------------------------------------------------- faithfulness


def test_faithfulness_identical_probabilities():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    y = np.array([0, 1, 0, 1, 1])  # points 2 and 3 are wrong
    m = faithfulness(p, p, y)
    assert m["acc_nn"] == m["acc_surrogate"] == pytest.approx(0.6)
    assert m["tad"] == pytest.approx(0.0, abs=1e-15)  # the difference of two equal accuracies
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["kendall_tau_flat"] == pytest.approx(1.0)
    assert m["r_miss"] == pytest.approx(1.0, rel=1e-15)
    assert m["tau_convention"] == TAU_CONVENTION


def test_faithfulness_hand_counted_example():
    # Labels 0,0,1,1,2,2. NN predicts 0,1,1,2,0,2 (wrong at 1, 3, 4);
    # surrogate predicts 0,1,0,2,1,2 (wrong at 1, 2, 3, 4).
    # Either wrong: {1, 2, 3, 4} = 4; same mistake: 1 (both say 1) and 3 (both say 2) = 2 -> R_Miss = 0.5.
    nn_pred = [0, 1, 1, 2, 0, 2]
    sur_pred = [0, 1, 0, 2, 1, 2]
    nn_conf = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    nn = np.full((6, 3), np.nan)
    sur = np.full((6, 3), np.nan)
    sur_conf_on_nn_class = [0.8, 0.7, 0.1, 0.5, 0.2, 0.6]  # surrogate's prob of the NN's class
    for i in range(6):
        nn[i] = (1 - nn_conf[i]) / 2
        nn[i, nn_pred[i]] = nn_conf[i]
        rest = 1 - sur_conf_on_nn_class[i]
        sur[i] = 0.0
        sur[i, nn_pred[i]] = sur_conf_on_nn_class[i]
        if sur_pred[i] == nn_pred[i]:
            others = [c for c in range(3) if c != nn_pred[i]]
            sur[i, others] = rest / 2
        else:
            sur[i, sur_pred[i]] = rest
    y = np.array([0, 0, 1, 1, 2, 2])
    m = faithfulness(nn, sur, y)
    assert m["acc_nn"] == pytest.approx(3 / 6)
    assert m["acc_surrogate"] == pytest.approx(2 / 6)
    assert m["tad"] == pytest.approx(-1 / 6)
    assert m["r_miss"] == pytest.approx(0.5)
    assert m["n_either_wrong"] == 4 and m["n_same_mistake"] == 2
    # τ over the 6 points (0.9,.8) (0.8,.7) (0.7,.1) (0.6,.5) (0.5,.2) (0.4,.6): 15 pairs.
    a, b = np.array(nn_conf), np.array(sur_conf_on_nn_class)
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i in range(6) for j in range(i + 1, 6))
    assert m["kendall_tau"] == pytest.approx(s / 15)
    assert m["kendall_tau"] == pytest.approx(1 / 3)  # 10 concordant, 5 discordant, no ties


def test_faithfulness_r_miss_nan_without_errors_and_reversed_tau():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    q = np.array([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    m = faithfulness(p, q, y)
    assert math.isnan(m["r_miss"])
    assert m["tad"] == pytest.approx(0.0, abs=1e-15)  # the difference of two equal accuracies
    # Probabilities of the NN's class: (0.9, 0.8, 0.7, 0.6) vs (0.6, 0.7, 0.8, 0.9): perfectly reversed.
    assert m["kendall_tau"] == pytest.approx(-1.0)


# -------------------------------------------------------------------------------------------- attribution


def test_attribution_picks_the_most_similar_training_points_of_the_predicted_class():
    # Six training points, classes 0,0,0,1,1,1; the kernel is 1 within a class, 0 across (plus identity).
    y = np.array([0, 0, 0, 1, 1, 1])
    k_train = (y[:, None] == y[None, :]).astype(float) + np.eye(6)
    model = fit_kglm(k_train, y, 2, l2=1e-2, standardize=False)
    assert np.all(model.predict(k_train) == y)
    # Test point A resembles training points 1 and 2 of class 0 (2 most); B resembles point 4 of class 1.
    rows = np.array([[0.0, 1.0, 2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.1, 3.0, 0.2]])
    idx, contrib = attribution(model, rows, top_k=2)
    assert idx.shape == contrib.shape == (2, 2)
    np.testing.assert_array_equal(idx, [[2, 1], [4, 5]])
    assert np.all(contrib > 0)
    assert abs(contrib[0, 0]) >= abs(contrib[0, 1])
    # Single row in, 1-D out; contributions of all points plus the bias reproduce the logit.
    idx1, contrib1 = attribution(model, rows[0], top_k=6)
    assert idx1.shape == (6,)
    assert contrib1.sum() + model.bias[0] == pytest.approx(model.logits(rows[0])[0, 0])


def test_attribution_with_standardised_features():
    x_tr, y_tr = _blobs(10, seed=6)
    k_tr = _rbf(x_tr, x_tr, 0.05)
    model = fit_kglm(k_tr, y_tr, 3, l2=1e-3)
    x_te, _ = _blobs(5, seed=7)
    k_te = _rbf(x_te, x_tr, 0.05)
    idx, contrib = attribution(model, k_te, top_k=3)
    pred = model.predict(k_te)
    full = model.weights[pred] * model.features(k_te)
    np.testing.assert_allclose(contrib, np.take_along_axis(full, idx, axis=1))
    # Top contributions are the largest in absolute value, sorted.
    top = np.sort(np.abs(full), axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(contrib), top)
    # The strongest supporters of the predicted class are mostly training points of that class.
    assert np.mean(y_tr[idx] == pred[:, None]) >= 0.8


# ------------------------------------------------------------------------------------------- kernel ridge


def test_one_hot_targets():
    t = one_hot([0, 2, 1], 3)
    np.testing.assert_allclose(t, np.eye(3)[[0, 2, 1]] - 1 / 3)
    np.testing.assert_allclose(t.sum(axis=1), 0.0, atol=1e-15)
    np.testing.assert_array_equal(one_hot([1, 0], 2, centred=False), [[0.0, 1.0], [1.0, 0.0]])


def test_kernel_ridge_matches_sklearn():
    x_tr, y_tr = _blobs(20, seed=8)
    x_te, _ = _blobs(10, seed=9)
    k_tr, k_te = _rbf(x_tr, x_tr, 0.1), _rbf(x_te, x_tr, 0.1)
    targets = one_hot(y_tr, 3)
    for ridge in (1e-3, 0.5):
        alpha = kernel_ridge(k_tr, targets, ridge)
        ref = KernelRidge(kernel="precomputed", alpha=ridge).fit(k_tr, targets)
        np.testing.assert_allclose(kernel_ridge_predict(k_te, alpha), ref.predict(k_te), atol=1e-8)
        np.testing.assert_allclose(alpha, ref.dual_coef_, rtol=1e-7, atol=1e-8)


def test_kernel_ridge_rejects_non_positive_definite_kernels():
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        kernel_ridge(indefinite, np.ones(2), 0.0)
    x = np.random.default_rng(0).standard_normal((10, 3))
    with pytest.raises(ValueError):  # rank 3 < 10: singular without a ridge
        kernel_ridge(x @ x.T, np.ones(10), 0.0)
    kernel_ridge(x @ x.T, np.ones(10), 1e-3)  # and a ridge fixes it


def _nag_problem(seed: int = 10):
    x_tr, y_tr = _blobs(30, seed=seed, sep=3.0)
    x_va, y_va = _blobs(30, seed=seed + 1, sep=3.0)
    # Well conditioned: eigenvalues of K in about [0.14, 7], so NAG converges in a few hundred steps.
    k_tr = _rbf(x_tr, x_tr, 0.3) + 0.1 * np.eye(len(y_tr))
    return k_tr, one_hot(y_tr, 3), _rbf(x_va, x_tr, 0.3), y_va


def test_nag_reaches_the_direct_solution_accuracy_and_stops_early():
    k_tr, targets, k_va, y_va = _nag_problem()
    direct = kernel_ridge(k_tr, targets, 1e-2)
    direct_acc = np.mean(kernel_ridge_predict(k_va, direct).argmax(axis=1) == y_va)
    alpha, info = kernel_ridge_nag(k_tr, targets, k_va, y_va, ridge=1e-2, max_iter=3000, patience=50)
    assert info["best_val_acc"] >= direct_acc
    assert np.mean(kernel_ridge_predict(k_va, alpha).argmax(axis=1) == y_va) == info["best_val_acc"]
    assert 0 < info["best_step"] <= info["steps"]
    assert info["stopped_early"] and info["steps"] < 3000
    assert info["steps"] - info["best_step"] >= 50


def test_nag_converges_to_the_ridge_solution():
    k_tr, targets, k_va, y_va = _nag_problem(seed=12)
    ridge = 0.05
    direct = kernel_ridge(k_tr, targets, ridge)
    errors = []
    for n in (20, 200, 2000):
        alpha, info = kernel_ridge_nag(
            k_tr, targets, k_va, y_va, ridge=ridge, max_iter=n, patience=10**9, restore_best=False
        )
        assert info["steps"] == n
        errors.append(np.linalg.norm(alpha - direct) / np.linalg.norm(direct))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-10
    # Without a validation split there is no early stop and the final iterate comes back.
    alpha, info = kernel_ridge_nag(k_tr, targets, ridge=ridge, max_iter=2000)
    assert info["steps"] == info["best_step"] == 2000 and not info["stopped_early"]
    np.testing.assert_allclose(alpha, direct, rtol=1e-9, atol=1e-10)
