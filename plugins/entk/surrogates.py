"""Kernel surrogates of a network: the kernel GLM, kernel ridge regression and their faithfulness.

The mathematics of the `entk` probe's surrogate step, free of the CLI and the catalog. Everything is float64
numpy; inputs may be numpy arrays or (CPU) torch tensors.

* **kGLM** (Engel et al., ICLR 2024): multinomial logistic regression on kernel features
  κ(x) = K(x, X_train) ∈ ℝ^N: logits z(x) = W κ(x) + b with W (C×N), b (C), a true softmax for every C ≥ 2
  (two weight vectors when C = 2, not one sigmoid), fitted by minimising
  mean cross-entropy + (l2/2)·‖W‖²_F (the bias is not penalised) with L-BFGS-B and an analytic gradient.
  The objective is strictly convex in W for l2 > 0, so the probabilities are unique whatever the solver;
  the start is W = 0, b = 0, so the fit is deterministic.
* **Standardisation**: trNTK features are cosine similarities of gradients; for a trained network they
  all sit near 1 and are highly correlated across training points, so the raw design is close to a
  constant column plus a small signal. L-BFGS then needs many iterations and the isotropic L2 penalty
  mostly punishes the shared offset. Each feature column j is therefore centred and scaled with the mean
  and standard deviation of κ_j over the *training* points; the statistics are stored in the :class:`KGLM`
  and the same affine map is applied to every kernel row at predict time (test rows are never used to fit
  it). A column with zero spread is only centred. The penalty then acts on the standardised weights.
  Measured on a trNTK-like kernel (N = 2000, C = 10, entries in [0.98, 1]): standardised, 0.96 training
  accuracy; raw, L-BFGS-B stalls after 144 iterations at 0.47 with a gradient already below 1e-6.
* **Faithfulness** (Engel et al.): TAD = acc(kGLM) − acc(NN); Kendall τ-b between the two models' softmax
  scores (convention in :data:`TAU_CONVENTION`); R_Miss = |both wrong with the same wrong label| /
  |either wrong|.
* **Linearised model** (Campbell, Yu & Ma): kernel ridge regression α = (K + ridge·I)⁻¹Y on the eNTK with
  one-hot targets, solved directly (Cholesky) or by Nesterov's accelerated gradient with early stopping on
  a validation split; both minimise the same objective, so for ridge > 0 the iterates converge to the
  direct solution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.special
import scipy.stats

from audit.api.arrays import to_numpy

TAU_CONVENTION = "prob_of_nn_predicted_class"
"""Primary Kendall τ: per test point, the probability each model gives to the network's predicted class."""


def _labels(y: Any) -> np.ndarray:
    return to_numpy(y).astype(np.int64).ravel()


def _as_rows(k: Any) -> tuple[np.ndarray, bool]:
    """Kernel rows as a 2-D float64 array and whether the input was a single row."""
    k = to_numpy(k, np.float64)
    if k.ndim == 1:
        return k[None, :], True
    if k.ndim != 2:
        raise ValueError(f"kernel rows must be 1-D or 2-D, got shape {k.shape}")
    return k, False


# ----------------------------------------------------------------------------------------------------- kGLM


@dataclass
class KGLM:
    """A fitted kernel GLM: logits = W·((κ − mean)/scale) + b."""

    weights: np.ndarray  # (C, N), on the standardised features
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (N,), zeros when not standardised
    scale: np.ndarray  # (N,), ones when not standardised
    l2: float
    loss: float  # final value of the objective
    n_iter: int
    converged: bool  # max |gradient| ≤ max(tol, 1e-6) at the returned point
    grad_max: float  # max |gradient| at the returned point

    @property
    def n_classes(self) -> int:
        return self.weights.shape[0]

    def features(self, k: Any) -> np.ndarray:
        """Standardised kernel features (n, N) of kernel rows k (n, N) or (N,)."""
        rows, _ = _as_rows(k)
        if rows.shape[1] != self.weights.shape[1]:
            raise ValueError(
                f"kernel rows have {rows.shape[1]} columns, the kGLM was fitted on {self.weights.shape[1]}"
            )
        return (rows - self.mean) / self.scale

    def logits(self, k: Any) -> np.ndarray:
        """Logits (n, C) of kernel rows k(x, X_train) (n, N); a single row (N,) gives (1, C)."""
        return self.features(k) @ self.weights.T + self.bias

    def predict_proba(self, k: Any) -> np.ndarray:
        """Softmax probabilities (n, C)."""
        return scipy.special.softmax(self.logits(k), axis=1)

    def predict(self, k: Any) -> np.ndarray:
        return self.logits(k).argmax(axis=1)


def _standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    # Zero spread (or spread at rounding level of the column): centre only, never divide by ~0.
    tiny = std <= 1e-12 * np.maximum(np.abs(mean), 1.0)
    return mean, np.where(tiny, 1.0, std)


def _kglm_objective(
    theta: np.ndarray, x: np.ndarray, y_onehot: np.ndarray, l2: float
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy + l2/2‖W‖² and its gradient; theta = [W.ravel(), b]."""
    n, d = x.shape
    c = y_onehot.shape[1]
    w = theta[: c * d].reshape(c, d)
    b = theta[c * d :]
    z = x @ w.T + b
    lse = scipy.special.logsumexp(z, axis=1)
    loss = float(np.mean(lse - (z * y_onehot).sum(axis=1)) + 0.5 * l2 * np.sum(w * w))
    r = (np.exp(z - lse[:, None]) - y_onehot) / n  # ∂loss/∂z
    grad_w = r.T @ x + l2 * w
    return loss, np.concatenate([grad_w.ravel(), r.sum(axis=0)])


def fit_kglm(
    k_train: Any,
    y_train: Any,
    n_classes: int,
    l2: float = 1e-3,
    max_iter: int = 500,
    standardize: bool = True,
    tol: float = 1e-10,
) -> KGLM:
    """Fit the kernel GLM on the training kernel k_train (N×N) with labels y_train in [0, n_classes).

    Minimises mean_i CE(softmax(W κ_i + b), y_i) + (l2/2)‖W‖²_F with L-BFGS-B from zero (deterministic).
    This equals scikit-learn's multinomial LogisticRegression with C = 1/(l2·N) (which minimises
    C·Σ CE + ½‖W‖², bias unpenalised): the two objectives differ by the factor l2·N. `tol` is the
    projected-gradient tolerance; the objective-decrease stop of L-BFGS-B is switched off so that the
    solution is tight enough to compare across solvers; `max_iter` caps the work (one evaluation costs
    two N×N×C products: about a minute for N = 2000, C = 10 on one thread at the 500-iteration cap).
    """
    x = to_numpy(k_train, np.float64)
    y = _labels(y_train)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"k_train must be (N, N') with N = len(y_train); got {x.shape} and {y.shape[0]} labels"
        )
    if n_classes < 2:
        raise ValueError(f"the kGLM needs at least 2 classes, got {n_classes}")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    if l2 < 0:
        raise ValueError(f"l2 must be non-negative, got {l2}")
    if standardize:
        mean, scale = _standardisation(x)
    else:
        mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    xs = (x - mean) / scale
    y_onehot = np.eye(n_classes)[y]
    theta0 = np.zeros(n_classes * (xs.shape[1] + 1))
    res = scipy.optimize.minimize(
        _kglm_objective,
        theta0,
        args=(xs, y_onehot, float(l2)),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "maxfun": 2 * max_iter + 20, "gtol": tol, "ftol": 0.0, "maxcor": 20},
    )
    d = xs.shape[1]
    return KGLM(
        weights=res.x[: n_classes * d].reshape(n_classes, d).copy(),
        bias=res.x[n_classes * d :].copy(),
        mean=mean,
        scale=scale,
        l2=float(l2),
        loss=float(res.fun),
        n_iter=int(res.nit),
        converged=bool(np.max(np.abs(res.jac)) <= max(tol, 1e-6)),
        grad_max=float(np.max(np.abs(res.jac))),
    )


# ------------------------------------------------------------------------------------------- faithfulness


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    return float(scipy.stats.kendalltau(a, b, variant="b").statistic)


def faithfulness(nn_proba: Any, sur_proba: Any, y: Any) -> dict[str, float | str]:
    """Agreement of a surrogate with the network on a test set (both given as (n, C) probabilities).

    Returns acc_nn, acc_surrogate, tad = acc_surrogate − acc_nn, kendall_tau, kendall_tau_flat, r_miss,
    n_either_wrong, n_same_mistake and tau_convention (a string naming the primary τ).

    τ convention (:data:`TAU_CONVENTION`): Engel et al. rank the two models' softmax probabilities. The
    primary ``kendall_tau`` is τ-b between p_NN(ĉ_i | x_i) and p_sur(ĉ_i | x_i), where ĉ_i is the network's
    predicted class of test point i: one score per point, so it measures whether the surrogate is
    confident where the network is. ``kendall_tau_flat`` is τ-b over all n·C (point, class) probabilities;
    it is inflated by the easy ordering "predicted class ≫ others" and is reported for comparison only.

    R_Miss = |{i : both wrong and same predicted label}| / |{i : either wrong}|, NaN when neither errs.
    """
    p_nn, p_sur = to_numpy(nn_proba, np.float64), to_numpy(sur_proba, np.float64)
    labels = _labels(y)
    if p_nn.shape != p_sur.shape or p_nn.ndim != 2 or p_nn.shape[0] != labels.shape[0]:
        raise ValueError(
            f"need two (n, C) arrays and n labels; got {p_nn.shape}, {p_sur.shape}, {labels.shape}"
        )
    pred_nn, pred_sur = p_nn.argmax(axis=1), p_sur.argmax(axis=1)
    wrong_nn, wrong_sur = pred_nn != labels, pred_sur != labels
    either = int(np.sum(wrong_nn | wrong_sur))
    same = int(np.sum(wrong_nn & wrong_sur & (pred_nn == pred_sur)))
    acc_nn, acc_sur = float(np.mean(~wrong_nn)), float(np.mean(~wrong_sur))
    rows = np.arange(labels.shape[0])
    return {
        "acc_nn": acc_nn,
        "acc_surrogate": acc_sur,
        "tad": acc_sur - acc_nn,
        "kendall_tau": _kendall(p_nn[rows, pred_nn], p_sur[rows, pred_nn]),
        "kendall_tau_flat": _kendall(p_nn.ravel(), p_sur.ravel()),
        "r_miss": same / either if either else float("nan"),
        "n_either_wrong": float(either),
        "n_same_mistake": float(same),
        "tau_convention": TAU_CONVENTION,
    }


# -------------------------------------------------------------------------------------------- attribution


def attribution(kglm: KGLM, k_test: Any, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top_k training points behind each test point's predicted-class logit.

    The logit of class c is z_c(x) = b_c + Σ_j W[c, j]·κ̃_j(x) with κ̃ the standardised feature
    (κ_j(x) − μ_j)/s_j, so training point j contributes W[c, j]·κ̃_j(x) to the predicted class c; the
    contributions plus b_c sum exactly to the logit. With standardisation the contribution is measured
    relative to the training-average similarity to j (the constant part W[c, j]·μ_j/s_j is in the bias):
    a test point no more similar to j than a typical training point gets ~0 from j, which is what makes
    the ranking informative for trNTK features that are all near 1.

    k_test: one kernel row (N,) or rows (n, N). Returns (indices, contributions), each (n, top_k) (or
    (top_k,) for a single row), sorted by decreasing |contribution| (ties by index); contributions keep
    their sign.
    """
    x = kglm.features(k_test)
    single = to_numpy(k_test, np.float64).ndim == 1
    n_train = x.shape[1]
    if not 1 <= top_k <= n_train:
        raise ValueError(f"top_k must lie in [1, {n_train}], got {top_k}")
    pred = (x @ kglm.weights.T + kglm.bias).argmax(axis=1)
    contrib = kglm.weights[pred] * x  # (n, N)
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :top_k]
    values = np.take_along_axis(contrib, order, axis=1)
    return (order[0], values[0]) if single else (order, values)


# ------------------------------------------------------------------------------------------- kernel ridge


def one_hot(y: Any, n_classes: int, centred: bool = True) -> np.ndarray:
    """Regression targets (N, C) from labels.

    Default: one-hot minus 1/C (entries 1 − 1/C and −1/C), the zero-mean targets of the NTK literature
    (Lee et al. 2019), which match a network whose outputs start near 0. For kernel ridge the choice
    does not change the argmax: the −1/C shift subtracts the same K_test(K + λI)⁻¹1/C from every class.
    centred=False gives plain {0, 1} one-hot.
    """
    labels = _labels(y)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    t = np.eye(n_classes)[labels]
    return t - 1.0 / n_classes if centred else t


def _square(k: Any) -> np.ndarray:
    k = to_numpy(k, np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"the training kernel must be square, got shape {k.shape}")
    return 0.5 * (k + k.T)  # symmetric part: Cholesky would silently read one triangle only


def kernel_ridge(k_train: Any, targets: Any, ridge: float) -> np.ndarray:
    """α = (K + ridge·I)⁻¹ Y by Cholesky (on the symmetric part of K); targets (N,) or (N, C).

    Raises ValueError when K + ridge·I is not (numerically) positive definite: the Cholesky fails, or a
    pivot falls below N·ε·max diag (a singular kernel whose factorisation survived only by rounding, whose
    α would be noise).
    """
    k = _square(k_train)
    a = k + ridge * np.eye(k.shape[0])
    try:
        factor = scipy.linalg.cho_factor(a, lower=True, check_finite=True)
    except np.linalg.LinAlgError as exc:
        raise ValueError(
            f"K + ridge·I is not positive definite (ridge={ridge}); increase the ridge or check the kernel"
        ) from exc
    pivots = np.diag(factor[0]) ** 2
    if pivots.min() <= k.shape[0] * np.finfo(np.float64).eps * np.abs(np.diag(a)).max():
        raise ValueError(f"K + ridge·I is numerically singular (ridge={ridge}); increase the ridge")
    return scipy.linalg.cho_solve(factor, to_numpy(targets, np.float64))


def kernel_ridge_predict(k_test: Any, alpha: Any) -> np.ndarray:
    """Predictions K(X_test, X_train) α: (n, C) for (N, C) α, (n,) for (N,) α."""
    return to_numpy(k_test, np.float64) @ to_numpy(alpha, np.float64)


def _predicted_labels(scores: np.ndarray) -> np.ndarray:
    """Argmax over classes; a single output column (±1 or centred binary targets) is read by its sign."""
    if scores.ndim == 1 or scores.shape[1] == 1:
        return (scores.reshape(scores.shape[0]) > 0).astype(np.int64)
    return scores.argmax(axis=1)


def _top_eigenvalue(k: np.ndarray, n_iter: int = 50) -> float:
    """λ_max of a symmetric PSD matrix by power iteration, capped by the Gershgorin bound."""
    v = np.ones(k.shape[0]) + np.linspace(0.0, 1.0, k.shape[0])  # deterministic, not orthogonal to much
    v /= np.linalg.norm(v)
    lam = 0.0
    for _ in range(n_iter):
        w = k @ v
        norm = np.linalg.norm(w)
        if norm == 0.0:
            return 0.0
        lam, v = float(v @ w), w / norm
    return min(lam, float(np.abs(k).sum(axis=1).max()))


def kernel_ridge_nag(
    k_train: Any,
    targets: Any,
    k_val: Any = None,
    y_val: Any = None,
    ridge: float = 0.0,
    lr: float | None = None,
    max_iter: int = 2000,
    patience: int = 100,
    eval_every: int = 5,
    restore_best: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Kernel regression by Nesterov's accelerated gradient with early stopping (Campbell, Yu & Ma).

    Objective: F(α) = ½‖Kα − Y‖²_F + (ridge/2)·tr(αᵀKα), gradient K((K + ridge·I)α − Y). Its minimisers
    solve (K + ridge·I)α = Y on the range of K, so for ridge > 0 (and K positive definite) the iterates
    converge to :func:`kernel_ridge`'s α with the same ridge; with ridge = 0 the early stop is the
    regulariser. Step 1/L, L = λ_max(K² + ridge·K) = λ² + ridge·λ with λ = λ_max(K) from power iterations
    (times 1.02, a margin for the power iteration's underestimate). Momentum (k−1)/(k+2) with the
    O'Donoghue–Candès gradient restart (reset the momentum when it points uphill), which keeps the
    convergence linear on strongly convex problems. Starts from α = 0 (deterministic).

    Every `eval_every` steps the validation accuracy of argmax(k_val @ α) against y_val is computed; the
    best α is kept (strict improvement) and the run stops once `patience` steps pass without one. With
    k_val None there is no early stop and the final α is returned. restore_best=False returns the final
    α instead of the best one. info: steps, best_step, best_val_acc, stopped_early, lipschitz, restarts.
    """
    k = _square(k_train)
    y = to_numpy(targets, np.float64)
    if y.shape[0] != k.shape[0]:
        raise ValueError(f"targets have {y.shape[0]} rows, the kernel {k.shape[0]}")
    validate = k_val is not None
    if validate:
        kv, yv = to_numpy(k_val, np.float64), _labels(y_val)
        if kv.ndim != 2 or kv.shape != (yv.shape[0], k.shape[0]):
            raise ValueError(f"k_val must be (n_val, {k.shape[0]}) with n_val = len(y_val), got {kv.shape}")
    lam = 1.02 * _top_eigenvalue(k)
    lipschitz = lam * lam + ridge * lam
    if lr is None:
        if lipschitz <= 0:
            raise ValueError("the training kernel is zero: no step size")
        lr = 1.0 / lipschitz
    a_ridge = k + ridge * np.eye(k.shape[0])

    def gradient(alpha: np.ndarray) -> np.ndarray:
        return k @ (a_ridge @ alpha - y)

    def val_acc(alpha: np.ndarray) -> float:
        return float(np.mean(_predicted_labels(kv @ alpha) == yv))

    alpha = np.zeros_like(y)
    prev = alpha
    t = 0  # momentum counter, reset on restart
    best_alpha, best_step = alpha, 0
    best_acc = val_acc(alpha) if validate else float("nan")
    steps, restarts, stopped = 0, 0, False
    for step in range(1, max_iter + 1):
        t += 1
        look = alpha + ((t - 1) / (t + 2)) * (alpha - prev)
        g = gradient(look)
        new = look - lr * g
        if np.sum(g * (new - alpha)) > 0:  # momentum points uphill: restart from a plain gradient step
            restarts += 1
            t = 0
        prev, alpha, steps = alpha, new, step
        if validate and (step % eval_every == 0 or step == max_iter):
            acc = val_acc(alpha)
            if acc > best_acc:
                best_alpha, best_step, best_acc = alpha, step, acc
            elif step - best_step >= patience:
                stopped = True
                break
    if not validate:
        best_alpha, best_step = alpha, steps
    info = {
        "steps": steps,
        "best_step": best_step,
        "best_val_acc": best_acc,
        "stopped_early": stopped,
        "lipschitz": lipschitz,
        "restarts": restarts,
    }
    return (best_alpha if restore_best else alpha).copy(), info
