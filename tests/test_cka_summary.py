"""Summaries of CKA matrices and the streamed accuracy/R², against direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from model_audit_probes.cka.summary import (
    TaskScore,
    cross_summary,
    effective_rank,
    offdiagonal,
    spectrum,
    summarise,
)


def test_offdiagonal_is_the_upper_triangle_without_nans():
    m = np.array([[1, 0.2, 0.3], [0.2, 1, np.nan], [0.3, np.nan, 1]])
    np.testing.assert_array_equal(offdiagonal(m), [0.2, 0.3])


def test_spectrum_and_effective_rank_known_values():
    assert effective_rank(np.ones(5)) == pytest.approx(5.0)
    assert effective_rank(np.array([3.0, 0, 0])) == pytest.approx(1.0)
    # a round-off eigenvalue (what a BLAS may leave for an exact 0) is no extra dimension
    assert effective_rank(np.array([4.0, 6e-17, -3e-17])) == pytest.approx(1.0, abs=1e-16)
    ones = np.ones((4, 4))
    np.testing.assert_allclose(spectrum(ones), [4, 0, 0, 0], atol=1e-12)
    s = summarise(ones)
    assert (
        s["eig_1"] == pytest.approx(4)
        and s["eig_1_share"] == pytest.approx(1)
        and s["effective_rank"] == pytest.approx(1, abs=1e-12)
    )


def test_summarise_matches_direct_statistics():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, size=(6, 6))
    m = (a + a.T) / 2
    np.fill_diagonal(m, 1)
    s = summarise(m, n_eigenvalues=2)
    off = m[np.triu_indices(6, 1)]
    eig = np.sort(np.linalg.eigvalsh(m))[::-1]
    assert s["offdiag_mean"] == pytest.approx(off.mean())
    assert s["offdiag_median"] == pytest.approx(np.median(off))
    assert s["offdiag_skew"] == pytest.approx(stats.skew(off))
    assert s["eig_1"] == pytest.approx(eig[0]) and s["eig_2"] == pytest.approx(eig[1])
    assert "eig_3" not in s


def test_spectrum_symmetrises_and_skips_undefined_layers():
    m = np.array([[1.0, 0.5, np.nan], [0.1, 1.0, np.nan], [np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(spectrum(m), np.linalg.eigvalsh(np.array([[1, 0.3], [0.3, 1]]))[::-1])


def test_cross_summary():
    m = np.array([[0.9, 0.1], [0.2, 0.8]])
    s = cross_summary(m)
    assert s["cross_mean"] == pytest.approx(0.5)
    assert s["cross_diag_mean"] == pytest.approx(0.85)
    assert s["cross_best_match_mean"] == pytest.approx(0.85)
    assert "cross_diag_mean" not in cross_summary(np.ones((2, 3)))


def test_streamed_accuracy_and_r2_equal_direct_computation():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(103, 4)), rng.integers(0, 4, size=103)
    cls = TaskScore("classification")
    for s in range(0, 103, 25):
        cls.update(torch.from_numpy(logits[s : s + 25]), torch.from_numpy(labels[s : s + 25]))
    assert cls.metrics()["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())

    y = rng.normal(size=(90, 2)) * [1, 10] + [0, 100]
    pred = y + rng.normal(size=(90, 2)) * [0.5, 2]
    reg = TaskScore("regression")
    for s in range(0, 90, 32):
        reg.update(torch.from_numpy(pred[s : s + 32]), torch.from_numpy(y[s : s + 32]))
    m = reg.metrics()
    for j in range(2):
        r2 = 1 - ((y[:, j] - pred[:, j]) ** 2).sum() / ((y[:, j] - y[:, j].mean()) ** 2).sum()
        assert m[f"r2_{j}"] == pytest.approx(r2, rel=1e-9)
    assert m["r2_mean"] == pytest.approx((m["r2_0"] + m["r2_1"]) / 2)


def test_binary_logit_accuracy_and_shape_mismatch_is_reported_not_guessed():
    cls = TaskScore("classification")
    cls.update(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 0, 0]))
    assert cls.metrics()["accuracy"] == pytest.approx(2 / 3)
    reg = TaskScore("regression")
    reg.update(torch.zeros(4, 3), torch.zeros(4, 2))
    assert reg.metrics() == {} and "does not match" in reg.problem
