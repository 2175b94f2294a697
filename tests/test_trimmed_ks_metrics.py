"""The companions of α̂ (scores, churn, ECE, ensemble prediction) against direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax as scipy_log_softmax
from scipy.special import softmax

from model_audit_probes.trimmed_ks import metrics


def test_churn_lies_between_the_error_difference_and_the_error_sum():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, c = int(rng.integers(5, 60)), int(rng.integers(2, 6))
        y = rng.integers(0, c, n)
        # correlated predictors: each copies the target with its own probability
        f = np.where(rng.random(n) < rng.random(), y, rng.integers(0, c, n))
        g = np.where(rng.random(n) < rng.random(), y, rng.integers(0, c, n))
        err_f, err_g = 1 - metrics.accuracy(f, y), 1 - metrics.accuracy(g, y)
        ch = metrics.churn(f, g)
        assert abs(err_f - err_g) - 1e-12 <= ch <= err_f + err_g + 1e-12


def ece_reference(p: np.ndarray, y: np.ndarray, bins: int) -> float:
    """Written from the definition with an explicit loop over bins (right-closed last bin)."""
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        if inside.any():
            total += inside.mean() * abs((pred[inside] == y[inside]).mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_top_label_ece_matches_the_definition(bins):
    rng = np.random.default_rng(bins)
    for _ in range(50):
        p = softmax(rng.normal(scale=3, size=(200, 4)), axis=1)
        y = rng.integers(0, 4, 200)
        assert metrics.expected_calibration_error(p, y, bins) == pytest.approx(
            ece_reference(p, y, bins), abs=1e-12
        )


def test_ece_of_a_calibrated_model_is_small_and_of_an_overconfident_one_large():
    rng = np.random.default_rng(1)
    n = 200_000
    p1 = rng.random(n)
    y = (rng.random(n) < p1).astype(int)  # outcomes drawn from the stated probabilities
    calibrated = np.stack([1 - p1, p1], axis=1)
    assert metrics.expected_calibration_error(calibrated, y, variant="positive_class") < 0.01
    sharp = np.stack([1 - (p1 > 0.5), (p1 > 0.5)], axis=1).astype(
        float
    )  # says 0 or 1, right 75 % of the time
    # ECE = 1 − (share right), the share binomial with p = E max(p1, 1 − p1) = 0.75: sd √(0.75·0.25/n) ≈ 0.001
    assert metrics.expected_calibration_error(sharp, y) == pytest.approx(
        0.25, abs=4 * np.sqrt(0.75 * 0.25 / n)
    )
    with pytest.raises(ValueError, match="binary"):
        metrics.expected_calibration_error(
            softmax(rng.normal(size=(5, 3)), axis=1), y[:5], variant="positive_class"
        )


def test_scores():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(20, 5))
    y = rng.integers(0, 5, 20)
    np.testing.assert_allclose(
        metrics.scores(z, "true_logprob", y), scipy_log_softmax(z, axis=1)[np.arange(20), y]
    )
    np.testing.assert_allclose(metrics.scores(z, "max_prob"), softmax(z, axis=1).max(axis=1))
    z2 = rng.normal(size=(20, 2))
    np.testing.assert_allclose(metrics.scores(z2, "margin"), z2[:, 1] - z2[:, 0])
    # a single logit is the binary margin, and its true-class log-probability is log σ(±z)
    z1 = z2[:, 1:] - z2[:, :1]
    yb = y % 2
    np.testing.assert_allclose(metrics.scores(z1, "true_logprob", yb), metrics.scores(z2, "true_logprob", yb))
    assert metrics.resolve_score("auto", 2, True) == "margin"
    assert metrics.resolve_score("auto", 10, True) == "true_logprob"
    assert metrics.resolve_score("auto", 10, False) == "max_prob"
    with pytest.raises(ValueError, match="binary"):
        metrics.resolve_score("margin", 10, True)
    with pytest.raises(ValueError, match="targets"):
        metrics.resolve_score("true_logprob", 10, False)


def test_ensemble_averages_probabilities_not_logits():
    # member A is over-confident in class 0 by a huge logit; averaging logits would follow it,
    # averaging probabilities gives B and C (both prefer class 1) the majority
    a = np.array([[30.0, 0.0]])
    b = np.array([[0.0, 3.0]])
    c = np.array([[0.0, 3.0]])
    assert metrics.ensemble_predictions([a, b, c])[0] == 1
    assert np.mean([a, b, c], axis=0).argmax(axis=1)[0] == 0
