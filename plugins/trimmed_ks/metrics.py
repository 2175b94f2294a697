"""Per-model companions of α̂: scores, accuracy, churn and expected calibration error, on arrays.

Choices (stored with every result as parameters, so a reader knows what was measured):

* **Scores** (the one-dimensional outputs whose distributions the trimmed KS test compares):
  ``margin`` — a binary model's logit margin z₁ − z₀ (or its single logit); ``true_logprob`` — the
  log-probability of the true class, log softmax(z)_y (needs targets); ``max_prob`` — the top softmax
  probability (no targets needed). ``auto`` picks margin for ≤ 2 outputs, else true_logprob when the
  dataset has targets, else max_prob.
* **Ensemble prediction**: the argmax of the reference models' *averaged probabilities* (softmax, then
  mean), not of averaged logits — probabilities are what the models' predictions mean, and averaging
  logits lets one over-confident member dominate.
* **ECE**: equal-width bins on [0, 1] (15 by default), Σ_b (n_b/n)·|accuracy_b − confidence_b|.
  ``top_label``: the confidence is the top probability, accuracy whether the top class is right (any
  number of classes); ``positive_class``: binary only, the confidence is P(class 1), accuracy the share
  of class-1 targets in the bin.
"""

from __future__ import annotations

import numpy as np

from model_audit_probes.trimmed_ks.choices import ECE_VARIANTS, SCORES


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over classes; a single output column is read as a binary logit (sigmoid)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.shape[1] == 1:
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    return np.exp(log_softmax(z))


def predictions(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits)
    return (z[:, 0] > 0).astype(np.int64) if z.shape[1] == 1 else z.argmax(axis=1)


def resolve_score(kind: str, n_outputs: int, has_targets: bool) -> str:
    if kind not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {kind!r}")
    if kind == "auto":
        return "margin" if n_outputs <= 2 else ("true_logprob" if has_targets else "max_prob")
    if kind == "margin" and n_outputs > 2:
        raise ValueError(f"score 'margin' needs a binary model (1 or 2 outputs), got {n_outputs} outputs")
    if kind == "true_logprob" and not has_targets:
        raise ValueError("score 'true_logprob' needs a dataset with targets")
    return kind


def scores(logits: np.ndarray, kind: str, targets: np.ndarray | None = None) -> np.ndarray:
    """One score per example (float64) of a resolved score kind (see the module docstring)."""
    z = np.asarray(logits, dtype=np.float64)
    if kind == "margin":
        return z[:, 0] if z.shape[1] == 1 else z[:, 1] - z[:, 0]
    if kind == "true_logprob":
        assert targets is not None
        if z.shape[1] == 1:
            z = np.stack([np.zeros_like(z[:, 0]), z[:, 0]], axis=1)
        return log_softmax(z)[np.arange(z.shape[0]), np.asarray(targets, dtype=np.int64)]
    if kind == "max_prob":
        return probabilities(z).max(axis=1)
    raise ValueError(f"unknown score kind {kind!r}")


def accuracy(pred: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(targets)))


def churn(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """The share of examples on which two models' predicted classes differ."""
    return float(np.mean(np.asarray(pred_a) != np.asarray(pred_b)))


def ensemble_predictions(logits: list[np.ndarray]) -> np.ndarray:
    """Argmax of the members' averaged probabilities."""
    return np.mean([probabilities(z) for z in logits], axis=0).argmax(axis=1)


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, bins: int = 15, variant: str = "top_label"
) -> float:
    """ECE with `bins` equal-width bins on [0, 1] (a confidence of exactly 1 falls in the last bin)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if variant == "top_label":
        confidence = p.max(axis=1)
        correct = (p.argmax(axis=1) == y).astype(np.float64)
    elif variant == "positive_class":
        if p.shape[1] != 2:
            raise ValueError(f"the positive-class ECE needs a binary model, got {p.shape[1]} classes")
        confidence = p[:, 1]
        correct = (y == 1).astype(np.float64)
    else:
        raise ValueError(f"ECE variant must be one of {', '.join(ECE_VARIANTS)}, got {variant!r}")
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    gap = np.bincount(which, weights=correct - confidence, minlength=bins)  # n_b·(accuracy_b − confidence_b)
    return float(np.abs(gap).sum() / len(y))
