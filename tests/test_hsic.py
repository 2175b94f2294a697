"""The CKA mathematics against an independent float64 reference written from the formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_audit_probes.cka.hsic import (
    MinibatchCKA,
    center_grams,
    centred_gram_rows,
    cka_from_sums,
    gram,
    hsic_matrix,
    linear_cka,
)

# ----------------------------------------------------------------- independent references (numpy, float64)


def ref_hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), the three-term formula, evaluated literally in float64."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    one = np.ones(n)
    term1 = np.einsum("ij,ji->", Kt, Lt)  # tr(K̃ L̃) without forming the n × n product (O(n²), not O(n³))
    term2 = (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    return (term1 + term2 - term3) / (n * (n - 3))


def ref_hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.sum((H @ K @ H) * (H @ L @ H)) / (n - 1) ** 2)


def ref_cka(X: np.ndarray, Y: np.ndarray, unbiased: bool = True) -> float:
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    K, L = X @ X.T, Y @ Y.T
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def ref_minibatch_cka(X, Y, batch, unbiased=True) -> float:
    h = ref_hsic_unbiased if unbiased else ref_hsic_biased
    xy = xx = yy = 0.0
    for s in range(0, X.shape[0], batch):
        K, L = X[s : s + batch] @ X[s : s + batch].T, Y[s : s + batch] @ Y[s : s + batch].T
        xy, xx, yy = xy + h(K, L), xx + h(K, K), yy + h(L, L)
    return xy / np.sqrt(xx * yy)


def feature_pair(n=64, p=20, q=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    Y = np.tanh(X[:, :q] @ rng.normal(size=(q, q))) + 0.5 * rng.normal(size=(n, q))
    return X, Y


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ----------------------------------------------------------------- estimator identities


@pytest.mark.parametrize("n", [4, 5, 17, 64])
def test_u_centred_hsic_equals_three_term_formula(n):
    rng = np.random.default_rng(n)
    A, B = rng.normal(size=(n, 7)), rng.normal(size=(n, 3))
    K, L = A @ A.T, B @ B.T
    rows = center_grams(t(np.stack([K, L])), "unbiased").reshape(2, -1)
    ours = float(rows[0] @ rows[1]) / (n * (n - 3))
    assert ours == pytest.approx(ref_hsic_unbiased(K, L), rel=1e-10, abs=1e-12)


def test_biased_centring_equals_hkh():
    rng = np.random.default_rng(1)
    A = rng.normal(size=(30, 5))
    K = A @ A.T
    n = K.shape[0]
    H = np.eye(n) - 1 / n
    np.testing.assert_allclose(center_grams(t(K), "biased").numpy(), H @ K @ H, atol=1e-10)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_hsic_matrix_equals_every_pair_of_the_reference(estimator):
    rng = np.random.default_rng(2)
    layers = [rng.normal(size=(40, d)) for d in (3, 8, 15, 1)]
    layers[3] = layers[0] @ rng.normal(size=(3, 1)) + 0.1 * rng.normal(size=(40, 1))
    cross, sa, sb = hsic_matrix([t(x) for x in layers], estimator=estimator, gram_dtype=torch.float64)
    h = ref_hsic_unbiased if estimator == "unbiased" else ref_hsic_biased
    expected = np.array([[h(a @ a.T, b @ b.T) for b in layers] for a in layers])
    np.testing.assert_allclose(cross.numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sa.numpy(), np.diag(expected), rtol=1e-9)
    np.testing.assert_array_equal(sa.numpy(), sb.numpy())


def test_cross_model_hsic_matches_reference():
    rng = np.random.default_rng(3)
    a = [rng.normal(size=(32, d)) for d in (4, 9)]
    b = [rng.normal(size=(32, d)) for d in (2, 5, 6)]
    cross, sa, sb = hsic_matrix([t(x) for x in a], [t(y) for y in b], gram_dtype=torch.float64)
    assert cross.shape == (2, 3)
    expected = np.array([[ref_hsic_unbiased(x @ x.T, y @ y.T) for y in b] for x in a])
    np.testing.assert_allclose(cross.numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(sa.numpy(), [ref_hsic_unbiased(x @ x.T, x @ x.T) for x in a], rtol=1e-9)
    np.testing.assert_allclose(sb.numpy(), [ref_hsic_unbiased(y @ y.T, y @ y.T) for y in b], rtol=1e-9)


def test_centring_features_before_the_gram_changes_nothing():
    """Both centrings annihilate v1ᵀ + 1vᵀ + c11ᵀ, which is exactly what a feature offset adds to K."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(25, 6))
    offset = X + rng.normal(size=(1, 6)) * 50
    for est in ("unbiased", "biased"):
        plain = center_grams(t(X @ X.T), est)
        ours = center_grams(gram(t(offset), torch.float64), est)
        np.testing.assert_allclose(ours.numpy(), plain.numpy(), atol=1e-8)


# ----------------------------------------------------------------- CKA properties


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_cka_of_a_representation_with_itself_is_one(estimator):
    X, _ = feature_pair()
    assert linear_cka(t(X), t(X), estimator) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_full_batch_cka_matches_reference(estimator):
    X, Y = feature_pair()
    assert linear_cka(t(X), t(Y), estimator) == pytest.approx(
        ref_cka(X, Y, estimator == "unbiased"), rel=1e-10
    )


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    X, Y = feature_pair(p=20)
    Q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(20, 20)))
    base = linear_cka(t(X), t(Y))
    assert linear_cka(t(X @ Q), t(Y)) == pytest.approx(base, abs=1e-10)
    assert linear_cka(t(3.7 * X), t(0.01 * Y)) == pytest.approx(base, abs=1e-10)


def test_not_invariant_to_a_general_invertible_linear_map():
    X, Y = feature_pair(p=20)
    A = np.diag(np.geomspace(1e-2, 1e2, 20)) @ np.random.default_rng(6).normal(size=(20, 20))
    assert abs(np.linalg.det(A)) > 0
    base = linear_cka(t(X), t(Y))
    assert abs(linear_cka(t(X @ A), t(Y)) - base) > 0.05
    assert linear_cka(t(X @ A), t(Y)) == pytest.approx(ref_cka(X @ A, Y), rel=1e-9)


def test_unbiased_cka_of_independent_features_is_near_zero_when_n_is_much_smaller_than_d():
    rng = np.random.default_rng(7)
    X, Y = rng.normal(size=(40, 4000)), rng.normal(size=(40, 4000))
    unbiased = linear_cka(t(X), t(Y), "unbiased")
    biased = linear_cka(t(X), t(Y), "biased")
    assert abs(unbiased) < 0.05
    assert biased > 0.8  # the biased estimator sees the shared isotropic structure of two random Grams


# ----------------------------------------------------------------- minibatch accumulation


def test_minibatch_accumulator_matches_reference_minibatch_estimate():
    X, Y = feature_pair(n=200)
    acc = MinibatchCKA(2, gram_dtype=torch.float64)
    for s in range(0, 200, 50):
        acc.update([t(X[s : s + 50]), t(Y[s : s + 50])])
    assert acc.matrix()[0, 1] == pytest.approx(ref_minibatch_cka(X, Y, 50), rel=1e-10)
    assert acc.batches == 4 and acc.examples == 200
    np.testing.assert_allclose(np.diag(acc.matrix()), 1.0, atol=1e-12)


def test_minibatch_estimate_agrees_with_the_full_batch_unbiased_estimate():
    rng = np.random.default_rng(8)
    n = 4096
    X = rng.normal(size=(n, 30))
    Y = X[:, :10] @ rng.normal(size=(10, 16)) + 2.0 * rng.normal(size=(n, 16))
    full = ref_cka(X, Y)
    acc = MinibatchCKA(1, 1, gram_dtype=torch.float64)
    per_batch = []
    for s in range(0, n, 256):
        acc.update([t(X[s : s + 256])], [t(Y[s : s + 256])])
        per_batch.append(ref_cka(X[s : s + 256], Y[s : s + 256]))
    # both estimate the same CKA; the minibatch one averages 16 batches, so its standard error is the spread
    # of the per-batch estimates / √16 (≈ 0.004 for seed 8): 4 standard errors is the margin
    standard_error = np.std(per_batch, ddof=1) / np.sqrt(len(per_batch))
    assert acc.matrix()[0, 0] == pytest.approx(full, abs=4 * standard_error)
    one_batch = MinibatchCKA(1, 1, gram_dtype=torch.float64)
    one_batch.update([t(X[:512])], [t(Y[:512])])
    assert one_batch.matrix()[0, 0] == pytest.approx(ref_cka(X[:512], Y[:512]), rel=1e-10)


def test_accumulators_of_shards_merge_exactly():
    X, Y = feature_pair(n=120)
    whole, a, b = (MinibatchCKA(2, gram_dtype=torch.float64) for _ in range(3))
    for s in range(0, 120, 30):
        batch = [t(X[s : s + 30]), t(Y[s : s + 30])]
        whole.update(batch)
        (a if s < 60 else b).update(batch)
    a.merge(b)
    np.testing.assert_allclose(a.matrix(), whole.matrix(), rtol=1e-12)


def test_float32_grams_keep_precision_for_features_with_a_large_common_offset():
    """Post-ReLU style activations: mean ≫ spread. The float32 path must match float64 to ~1e-5."""
    rng = np.random.default_rng(9)
    X = 1000.0 + rng.normal(size=(256, 512))
    Y = 500.0 + X[:, :64] @ rng.normal(size=(64, 64)) * 0.1 + rng.normal(size=(256, 64))
    acc32 = MinibatchCKA(2, gram_dtype=torch.float32)
    acc32.update([t(X).float(), t(Y).float()])
    expected = ref_cka(X - X.mean(0), Y - Y.mean(0))
    assert acc32.matrix()[0, 1] == pytest.approx(expected, abs=1e-5)
    assert np.all(acc32.self_a > 0)


def test_constant_layer_gives_nan_not_a_clamped_number():
    rng = np.random.default_rng(10)
    X = rng.normal(size=(16, 4))
    const = np.ones((16, 3))
    acc = MinibatchCKA(2, gram_dtype=torch.float64)
    acc.update([t(X), t(const)])
    m = acc.matrix()
    assert m[0, 0] == pytest.approx(1.0)
    assert np.isnan(m[1, 1]) and np.isnan(m[0, 1])
    assert acc.self_a[1] == pytest.approx(0.0, abs=1e-9)


def test_a_layer_float32_cannot_resolve_is_recomputed_in_float64_not_reported_constant():
    """A spread of ~1e-6 around 1 is stored fine in float32 (8 ulps) but is below the float32 Gram's
    resolution: the layer must come back as its float64 Gram (CKA defined), not as a constant layer (NaN)."""
    rng = np.random.default_rng(11)
    signal = rng.normal(size=(32, 6))
    X = torch.from_numpy(1.0 + 1e-6 * signal).float()  # what a float32 activation holds
    Y = t(signal @ rng.normal(size=(6, 4)))
    k = gram(X, torch.float32)
    k64 = gram(X.double(), torch.float64)
    assert float(k.abs().max()) > 0
    torch.testing.assert_close(k.double(), k64, rtol=1e-9, atol=0.0)
    acc = MinibatchCKA(2, gram_dtype=torch.float32)
    acc.update([X, Y.float()])
    assert np.all(acc.self_a > 0)
    x64 = X.double().numpy()
    y64 = Y.float().double().numpy()
    expected = ref_cka(x64 - x64.mean(0), y64 - y64.mean(0))
    assert acc.matrix()[0, 1] == pytest.approx(expected, abs=1e-5)
    constant = torch.full((32, 6), 1.0 + 2**-23)  # truly constant in float32: still a constant layer
    assert not gram(constant, torch.float32).any()


def test_cka_from_sums_never_clamps():
    m = cka_from_sums(np.array([[2.0, -0.3], [-0.3, 1.0]]), np.array([1.0, 1.0]), np.array([1.0, 1.0]))
    # out-of-range values stay visible (each divided by √(1·1): nothing but round-off may move them)
    assert m[0, 0] == pytest.approx(2.0, rel=1e-15) and m[0, 1] == pytest.approx(-0.3, rel=1e-15)


def test_errors_on_mismatched_examples_and_tiny_batches():
    with pytest.raises(ValueError, match="same examples"):
        centred_gram_rows([torch.zeros(8, 2), torch.zeros(9, 2)])
    with pytest.raises(ValueError, match="at least 4"):
        centred_gram_rows([torch.randn(3, 2)])
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.randn(10, 2), torch.randn(11, 2))
    with pytest.raises(ValueError, match="unknown estimator"):
        MinibatchCKA(1, estimator="nope")
