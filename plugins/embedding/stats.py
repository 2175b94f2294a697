"""Statistics of the `embedding` probe: can a model, used as an instrument, tell data sources apart?

Plain functions on arrays/tensors, free of the CLI, the catalog and the plugin machinery, so that each one can be
tested against an independent reference (scikit-learn, scipy, a float64 formula). Where a GEMM dominates the cost
(scatter matrices, kernel matrices, logistic-regression gradients) the work runs in torch on the device the caller
names; everything that is summed, centred or decomposed is float64, because the quantities of interest here
(a small MMD², a trailing explained-variance share, a within-class covariance near singular) are differences of
large numbers.

Contents and the reason for each:

* **PCA** — :class:`StreamingPCA` accumulates the d×d scatter from batches (up to 10⁶ × 8192 without holding the
  data); :func:`randomized_pca` (Halko, Martinsson & Tropp 2011) takes repeated passes over a re-iterable batch
  source when d is too large for a d×d matrix; :func:`fit_pca` picks one of the two; :func:`project`.
* **LDA** — :func:`lda_fit` / :func:`lda_transform` / :func:`lda_predict`, the classifier of scikit-learn's
  ``LinearDiscriminantAnalysis(solver="eigen", shrinkage=...)`` with Ledoit–Wolf ``"auto"`` shrinkage.
* **Separability** — :func:`cv_accuracy` (stratified or grouped folds; a model is never scored on the rows it was
  fitted on; optional PCA fitted inside each training fold) and :func:`permutation_test` (p = (1 + #{null ≥ obs}) /
  (1 + B), like scikit-learn's ``permutation_test_score``); :func:`logistic_fit` / :func:`logistic_predict`.
* **Two-sample test** — :func:`mmd_test` (unbiased MMD² with a Gaussian kernel, Gretton et al. 2012, permutation
  p-value from one kernel matrix) and :func:`pairwise_mmd` for every pair of sources.
* **Descriptive** — :func:`fisher_ratio` (in sample, biased upward), :func:`fisher_ratio_cv` (out of fold, on the
  LDA projection), :func:`silhouette`, :func:`component_label_association`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.stats
import torch

from audit.api.arrays import to_numpy

Array = np.ndarray | torch.Tensor
DeviceLike = str | torch.device | None
Shrinkage = float | Literal["auto"] | None
Model = Literal["lda", "logistic"]

#: Above this dimension a d×d float64 scatter matrix (512 MiB at 8192) is not worth holding: use randomized PCA.
MAX_SCATTER_DIM = 8192
#: Integer labels with at most this many distinct values are treated as categorical by the association measure.
MAX_CATEGORICAL_LEVELS = 20

_F64 = torch.float64


# --------------------------------------------------------------------------------------------------- helpers


def _device(device: DeviceLike) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _tensor64(x: Array, device: DeviceLike) -> torch.Tensor:
    """A float64 2-D tensor on `device` (copying only when the dtype or device differ)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.to(device=_device(device), dtype=_F64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"expected a 2-D array (samples × features), got shape {tuple(t.shape)}")
    return t


def _labels(y: Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes (sorted) and the integer code of every sample."""
    y = to_numpy(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must be 1-D with one entry per sample ({n}), got shape {y.shape}")
    classes, codes = np.unique(y, return_inverse=True)
    return classes, codes.astype(np.int64)


def _crossprod(a: torch.Tensor, transpose: bool = True) -> torch.Tensor:
    """aᵀa (or aaᵀ with ``transpose=False``), exactly symmetric. On the CPU through numpy, which hands a product of
    an array with its own transpose to BLAS syrk (half the flops of a GEMM; 1.6× faster measured here)."""
    if a.device.type == "cpu":
        an = a.numpy()
        return torch.from_numpy(an.T @ an if transpose else an @ an.T)
    return a.T @ a if transpose else a @ a.T


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    """Make the entry of largest magnitude of each row positive: a deterministic sign for eigenvectors."""
    idx = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(components.shape[0], device=components.device), idx])
    signs[signs == 0] = 1
    return components * signs[:, None]


# --------------------------------------------------------------------------------------------------- PCA


@dataclass(frozen=True)
class PCAResult:
    """Leading principal components, with the conventions of scikit-learn's ``PCA``.

    ``explained_variance`` uses the unbiased (n − 1) normalisation; ``explained_variance_ratio`` divides by
    ``total_variance``, the trace of the covariance (the sum of *all* eigenvalues, not only the k kept).
    Each component's sign makes its entry of largest magnitude positive.
    """

    mean: np.ndarray  # (d,)
    components: np.ndarray  # (k, d), orthonormal rows
    explained_variance: np.ndarray  # (k,)
    explained_variance_ratio: np.ndarray  # (k,)
    total_variance: float
    n_samples: int


class StreamingPCA:
    """Exact PCA from batches: n, the mean and the d×d scatter accumulated in float64.

    Stability: every batch is centred on its *own* mean before its scatter is formed, and batches are merged with
    the pairwise update of Chan, Golub & LeVeque (1979):
    M = M_a + M_b + δδᵀ·n_a·n_b/(n_a + n_b), δ = mean_b − mean_a. Unlike accumulating Σxxᵀ and subtracting nμμᵀ at
    the end, nothing cancels when the embeddings share a large common offset (typical of transformer embeddings),
    and unlike centring on the first batch's mean it does not depend on the first batch being representative.
    Shards accumulated elsewhere combine with :meth:`merge` by the same formula.

    The per-batch GEMM xᵀx runs on `device` in `gemm_dtype` (float64 by default; float32 is much faster on GPUs
    with weak float64 and loses little because the batch is already centred); the running sums are float64.
    Memory: one d×d float64 matrix (128 MiB at d = 4096). Above :data:`MAX_SCATTER_DIM` use
    :func:`randomized_pca`.
    """

    def __init__(self, device: DeviceLike = None, gemm_dtype: torch.dtype = _F64) -> None:
        self.device = _device(device)
        self.gemm_dtype = gemm_dtype
        self.n_samples = 0
        self._mean: torch.Tensor | None = None
        self._scatter: torch.Tensor | None = None

    def update(self, batch: Array) -> StreamingPCA:
        """Add a batch of rows (samples × features); returns self."""
        x = _tensor64(batch, self.device)
        nb = x.shape[0]
        if nb == 0:
            return self
        mean_b = x.mean(dim=0)
        xc = (x - mean_b).to(self.gemm_dtype)
        scatter_b = _crossprod(xc).to(_F64)
        self._combine(nb, mean_b, scatter_b)
        return self

    def merge(self, other: StreamingPCA) -> StreamingPCA:
        """Fold another accumulator (e.g. a shard of the data) into this one; returns self."""
        if other.n_samples:
            assert other._mean is not None and other._scatter is not None
            self._combine(other.n_samples, other._mean.to(self.device), other._scatter.to(self.device))
        return self

    def _combine(self, nb: int, mean_b: torch.Tensor, scatter_b: torch.Tensor) -> None:
        if self._mean is None:
            self.n_samples, self._mean, self._scatter = nb, mean_b.clone(), scatter_b.clone()
            return
        assert self._scatter is not None
        if mean_b.shape != self._mean.shape:
            raise ValueError(
                f"batch has {mean_b.shape[0]} features, earlier batches had {self._mean.shape[0]}"
            )
        na = self.n_samples
        n = na + nb
        delta = mean_b - self._mean
        self._scatter += scatter_b
        self._scatter += torch.outer(delta, delta) * (na * nb / n)
        self._mean += delta * (nb / n)
        self.n_samples = n

    @property
    def mean(self) -> torch.Tensor:
        if self._mean is None:
            raise ValueError("no data: call update() with at least one batch first")
        return self._mean

    def covariance(self) -> torch.Tensor:
        """The unbiased covariance (d×d, float64, symmetrised), on the accumulator's device."""
        if self._scatter is None or self.n_samples < 2:
            raise ValueError("PCA needs at least 2 samples")
        s = self._scatter / (self.n_samples - 1)
        return (s + s.T) / 2

    def result(self, k: int | None = None) -> PCAResult:
        """The k leading components (all d when k is None), their variances and shares of the total variance."""
        cov = self.covariance()
        d = cov.shape[0]
        k = d if k is None else int(k)
        if not 1 <= k <= d:
            raise ValueError(f"k must be in [1, {d}], got {k}")
        total = float(torch.trace(cov))
        if cov.device.type == "cpu":
            # The subset driver computes only the k eigenvectors wanted: much cheaper than all d at d ≈ 4096.
            w, v = scipy.linalg.eigh(cov.numpy(), subset_by_index=[d - k, d - 1], driver="evr")
            evals, evecs = torch.from_numpy(w[::-1].copy()), torch.from_numpy(v[:, ::-1].copy())
        else:
            w, v = torch.linalg.eigh(cov)
            evals, evecs = w.flip(0)[:k].cpu(), v.flip(1)[:, :k].cpu()
        evals = evals.clamp_min(0)
        components = _fix_signs(evecs.T.contiguous())
        return PCAResult(
            mean=to_numpy(self.mean),
            components=components.numpy(),
            explained_variance=evals.numpy(),
            explained_variance_ratio=(evals / total).numpy() if total > 0 else np.zeros(k),
            total_variance=total,
            n_samples=self.n_samples,
        )


def _orth(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(a, mode="reduced").Q


def randomized_pca(
    batches: Callable[[], Iterable[Array]],
    k: int,
    oversample: int = 10,
    iters: int = 4,
    seed: int = 0,
    device: DeviceLike = None,
    gemm_dtype: torch.dtype = _F64,
) -> PCAResult:
    """Randomized PCA in ``iters + 1`` streaming passes over the data, memory O(d·(k + oversample)).

    For embeddings too wide for a d×d scatter (d > :data:`MAX_SCATTER_DIM`). `batches` is a callable that returns
    a fresh iterable of batches (samples × d) each time it is called; it is called ``iters + 1`` times.

    Algorithm (Halko, Martinsson & Tropp 2011, subspace iteration, applied to the covariance C = X_cᵀX_c/(n−1),
    never formed): Ω₀ = orth(Gaussian d×l), l = k + oversample; each pass computes Y = CΩ = Σ_b X_bᵀ(X_b Ω) over
    the centred batches; between passes Ω ← orth(Y). The last (Ω, Y = CΩ) is turned into eigenpairs by the
    numerically stable Nyström approximation C ≈ Y(ΩᵀY)⁻¹Yᵀ (Tropp, Yurtsever, Udell & Cevher 2017), which is
    more accurate than a Rayleigh–Ritz step on Ω and needs no extra pass.

    Centring without a separate pass for the mean: the first pass works on rows shifted by the first batch's mean c
    and corrects afterwards, CΩ = [Σ(x−c)ᵀ(x−c)Ω − n·m̃(m̃ᵀΩ)]/(n−1) with m̃ = mean(x) − c, small because c is
    close to the mean, so the correction does not cancel; later passes centre on the exact mean.
    The Gaussian test matrix is drawn on the CPU from `seed`, so the result does not depend on the device.
    """
    dev = _device(device)
    if iters < 0 or oversample < 0:
        raise ValueError("iters and oversample must be ≥ 0")

    # Pass 1: n, mean, total variance and CΩ₀, all relative to the shift c.
    n, shift, s1, ss, y, omega = 0, None, None, 0.0, None, None
    for batch in batches():
        x = _tensor64(batch, dev)
        if x.shape[0] == 0:
            continue
        if shift is None:
            d = x.shape[1]
            l_dim = min(d, k + oversample)
            if not 1 <= k <= d:
                raise ValueError(f"k must be in [1, {d}], got {k}")
            gen = torch.Generator().manual_seed(seed)
            omega = _orth(torch.randn(d, l_dim, generator=gen, dtype=_F64)).to(dev)
            shift = x.mean(dim=0)
            s1 = torch.zeros(d, dtype=_F64, device=dev)
            y = torch.zeros(d, l_dim, dtype=_F64, device=dev)
        xs = x - shift
        s1 += xs.sum(dim=0)
        ss += float((xs * xs).sum())
        xg = xs.to(gemm_dtype)
        y += (xg.T @ (xg @ omega.to(gemm_dtype))).to(_F64)
        n += x.shape[0]
    if shift is None or n < 2:
        raise ValueError("PCA needs at least 2 samples")
    m_tilde = s1 / n
    mean = shift + m_tilde
    total = (ss - n * float(m_tilde @ m_tilde)) / (n - 1)
    y = (y - n * torch.outer(m_tilde, m_tilde @ omega)) / (n - 1)

    for _ in range(iters):
        omega = _orth(y)
        y = torch.zeros_like(omega)
        og = omega.to(gemm_dtype)
        for batch in batches():
            x = _tensor64(batch, dev)
            xc = (x - mean).to(gemm_dtype)
            y += (xc.T @ (xc @ og)).to(_F64)
        y /= n - 1

    # Stable Nyström: shift by ν, B = Ωᵀ(Y + νΩ) = LLᵀ, F = (Y + νΩ)L⁻ᵀ = UΣVᵀ, eigenvalues Σ² − ν.
    nu = torch.finfo(_F64).eps * float(torch.linalg.norm(y)) * math.sqrt(y.shape[0])
    y_nu = y + nu * omega
    b = omega.T @ y_nu
    chol = torch.linalg.cholesky((b + b.T) / 2)
    f = torch.linalg.solve_triangular(chol, y_nu.T, upper=False).T
    u, sv, _ = torch.linalg.svd(f, full_matrices=False)
    evals = (sv**2 - nu).clamp_min(0)[:k].cpu()
    components = _fix_signs(u[:, :k].T.contiguous()).cpu()
    return PCAResult(
        mean=to_numpy(mean),
        components=components.numpy(),
        explained_variance=evals.numpy(),
        explained_variance_ratio=(evals / total).numpy() if total > 0 else np.zeros(k),
        total_variance=float(total),
        n_samples=n,
    )


def fit_pca(
    batches: Callable[[], Iterable[Array]],
    k: int,
    device: DeviceLike = None,
    seed: int = 0,
    max_scatter_dim: int = MAX_SCATTER_DIM,
) -> PCAResult:
    """Exact streaming PCA when d ≤ `max_scatter_dim` (one pass), randomized PCA (5 passes) above it.

    The first batch decides: the exact route continues the same pass; the randomized route abandons it after that
    one batch and starts its own passes.
    """
    it = iter(batches())
    first = next(it, None)
    if first is None:
        raise ValueError("PCA needs at least 2 samples")
    x0 = _tensor64(first, device)
    if x0.shape[1] > max_scatter_dim:
        return randomized_pca(batches, k, seed=seed, device=device)
    acc = StreamingPCA(device=device).update(x0)
    for batch in it:
        acc.update(batch)
    return acc.result(min(k, x0.shape[1]))


def project(x: Array, mean: Array, components: Array) -> Array:
    """Scores (x − mean)·componentsᵀ in float64: a torch tensor on x's device for a tensor x, else numpy."""
    if isinstance(x, torch.Tensor):
        dev = x.device
        return (_tensor64(x, dev) - _tensor64(mean, dev).reshape(-1)) @ _tensor64(components, dev).T
    xn = np.asarray(x, dtype=np.float64)
    return (xn - np.asarray(mean, dtype=np.float64)) @ np.asarray(components, dtype=np.float64).T


# --------------------------------------------------------------------------------------------------- LDA


def _is_constant(var: torch.Tensor, mean: torch.Tensor, n: int) -> torch.Tensor:
    """Features whose variance is at the rounding level of their mean (treated as constant: scale 1)."""
    eps = torch.finfo(_F64).eps
    return var <= n * eps * var + (n * mean * eps) ** 2


def ledoit_wolf_shrinkage(xc: torch.Tensor) -> float:
    """Ledoit & Wolf (2004) optimal shrinkage α of S = XᵀX/n towards μI, μ = tr(S)/d, for centred rows X.

    δ² = ‖S − μI‖²_F/d, β̄² = (Σ_i‖x_i‖⁴/n² − ‖S‖²_F/n)/d (the variance of the sample covariance),
    α = min(β̄², δ²)/δ² (0 when δ² = 0 or d = 1).
    """
    n, d = xc.shape
    if d == 1 or n == 0:
        return 0.0
    s = _crossprod(xc) / n
    mu = float(torch.trace(s)) / d
    s_fro2 = float((s * s).sum())
    delta2 = (s_fro2 - 2 * mu * mu * d + mu * mu * d) / d  # ‖S − μI‖² = ‖S‖² − 2μ tr S + dμ², tr S = dμ
    row4 = float(((xc * xc).sum(dim=1) ** 2).sum())
    beta2 = (row4 / n**2 - s_fro2 / n) / d
    beta2 = min(beta2, delta2)
    return 0.0 if beta2 <= 0 or delta2 <= 0 else beta2 / delta2


def shrunk_covariance(x: torch.Tensor, shrinkage: Shrinkage) -> torch.Tensor:
    """Biased (1/n) covariance of the rows of x with optional shrinkage, as scikit-learn's LDA estimates it.

    * None or 0: the empirical covariance;
    * float α ∈ [0, 1]: (1 − α)S + α·tr(S)/d·I;
    * "auto": Ledoit–Wolf on the standardised features, rescaled back (sᵢsⱼ·R̂ᵢⱼ) — the shrinkage target is then
      a diagonal matrix of the feature variances, and the estimate is equivariant to rescaling a feature.
    """
    n, d = x.shape
    mean = x.mean(dim=0)
    xc = x - mean
    if shrinkage == "auto":
        var = (xc * xc).mean(dim=0)
        scale = var.sqrt()
        scale[_is_constant(var, mean, n)] = 1.0
        z = xc / scale
        alpha = ledoit_wolf_shrinkage(z)
        r = _crossprod(z) / n
        mu = float(torch.trace(r)) / d
        r = (1 - alpha) * r
        r.diagonal().add_(alpha * mu)
        return scale[:, None] * r * scale[None, :]
    s = _crossprod(xc) / n
    if shrinkage is None or shrinkage == 0:
        return s
    if isinstance(shrinkage, str) or not 0 <= float(shrinkage) <= 1:
        raise ValueError(f"shrinkage must be None, 'auto' or a float in [0, 1], got {shrinkage!r}")
    alpha = float(shrinkage)
    mu = float(torch.trace(s)) / d
    s = (1 - alpha) * s
    s.diagonal().add_(alpha * mu)
    return s


@dataclass(frozen=True)
class LDAModel:
    """A fitted linear discriminant analysis (tensors float64 on the fitting device).

    ``scalings`` (d × r, r ≤ C − 1) are the discriminant directions, normalised so that vᵀS_W v = 1 (the
    convention of scikit-learn's eigen solver), ordered by decreasing between/within variance ratio
    ``eigenvalues``. ``coef``/``intercept`` are the linear discriminant functions
    δ_k(x) = xᵀS_W⁻¹μ_k − ½μ_kᵀS_W⁻¹μ_k + log π_k used by :func:`lda_predict`.
    """

    classes: np.ndarray
    means: torch.Tensor  # (C, d)
    priors: torch.Tensor  # (C,)
    center: torch.Tensor  # (d,), Σ π_k μ_k
    scalings: torch.Tensor  # (d, r)
    eigenvalues: torch.Tensor  # (r,)
    explained_variance_ratio: np.ndarray  # (r,)
    coef: torch.Tensor  # (C, d)
    intercept: torch.Tensor  # (C,)
    shrinkage: Shrinkage


def lda_fit(
    x: Array,
    y: Array,
    shrinkage: Shrinkage = "auto",
    priors: Array | None = None,
    device: DeviceLike = None,
) -> LDAModel:
    """Fit LDA: the classifier of scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen", shrinkage=...)``.

    Within-class covariance S_W = Σ_k π_k Σ̂_k with each class covariance Σ̂_k estimated by
    :func:`shrunk_covariance` (so ``"auto"`` is Ledoit–Wolf per class on standardised features, exactly as
    scikit-learn does); priors default to the class proportions. Predictions are those of scikit-learn.

    Projection: the generalised eigenvectors of S_B v = λ S_W v with the *textbook* between-class scatter
    S_B = Σ_k π_k(μ_k − μ̄)(μ_k − μ̄)ᵀ, μ̄ = Σ_k π_k μ_k. S_B has rank ≤ C − 1, so with M = [√π_k(μ_k − μ̄)]
    (d × C) the problem reduces to the C×C eigenproblem (MᵀS_W⁻¹M)a = λa, v = S_W⁻¹Ma/√λ — one Cholesky
    factorisation of S_W instead of a d×d generalised eigensolve. Without shrinkage this is scikit-learn's
    projection (its S_B = S_T − S_W is the same matrix); with shrinkage scikit-learn shrinks S_T and S_W separately,
    which makes its S_T − S_W full-rank noise, whereas here the directions span exactly the subspace in which the
    classifier's decisions are made (span{S_W⁻¹(μ_k − μ_j)}), the subspace scikit-learn's ``coef_`` spans too.
    """
    dev = _device(device)
    xt = _tensor64(x, dev)
    n, d = xt.shape
    classes, codes = _labels(y, n)
    c = len(classes)
    if c < 2:
        raise ValueError("LDA needs at least two classes")
    codes_t = torch.from_numpy(codes).to(dev)
    counts = torch.bincount(codes_t, minlength=c).to(_F64)
    if priors is None:
        pri = counts / n
    else:
        pri = _tensor64(priors, dev).reshape(-1)
        if pri.shape[0] != c or bool((pri < 0).any()):
            raise ValueError(f"priors must be {c} non-negative numbers, one per class")
        pri = pri / pri.sum()
    means = torch.zeros(c, d, dtype=_F64, device=dev).index_add_(0, codes_t, xt) / counts[:, None]
    sw = torch.zeros(d, d, dtype=_F64, device=dev)
    for k in range(c):
        sw += pri[k] * shrunk_covariance(xt[codes_t == k], shrinkage)
    sw = (sw + sw.T) / 2
    chol, info = torch.linalg.cholesky_ex(sw)
    if int(info) != 0:
        raise ValueError(
            "the within-class covariance is singular (more features than samples, or constant features): "
            "use shrinkage='auto' or a float in (0, 1]"
        )
    center = pri @ means
    m = (means - center) * pri.sqrt()[:, None]  # (C, d)
    sw_inv_m = torch.cholesky_solve(m.T, chol)  # (d, C)
    g = m @ sw_inv_m
    lam, a = torch.linalg.eigh((g + g.T) / 2)
    lam, a = lam.flip(0), a.flip(1)
    keep = lam > lam[0].clamp_min(0) * (c * torch.finfo(_F64).eps * 1e3)
    r = min(c - 1, d, int(keep.sum()))
    lam, a = lam[:r], a[:, :r]
    scalings = (sw_inv_m @ a) / lam.sqrt()
    scalings = _fix_signs(scalings.T).T
    coef = torch.cholesky_solve(means.T, chol).T  # (C, d) = μ_k S_W⁻¹
    intercept = -0.5 * (means * coef).sum(dim=1) + torch.log(pri)
    evr = to_numpy(lam / lam.sum()) if r else np.zeros(0)
    return LDAModel(
        classes=classes,
        means=means,
        priors=pri,
        center=center,
        scalings=scalings,
        eigenvalues=lam,
        explained_variance_ratio=evr,
        coef=coef,
        intercept=intercept,
        shrinkage=shrinkage,
    )


def lda_transform(model: LDAModel, x: Array) -> np.ndarray:
    """Discriminant coordinates (x − μ̄)·scalings, shape (n, r), centred on the prior-weighted mean μ̄.

    scikit-learn's eigen solver returns x·scalings without centring; the two differ by a constant row.
    """
    xt = _tensor64(x, model.means.device)
    return to_numpy((xt - model.center) @ model.scalings)


def lda_decision_function(model: LDAModel, x: Array) -> torch.Tensor:
    """The C linear discriminant scores δ_k(x) of every sample, shape (n, C)."""
    xt = _tensor64(x, model.means.device)
    return xt @ model.coef.T + model.intercept


def lda_predict(model: LDAModel, x: Array) -> np.ndarray:
    """The class of largest discriminant score (first one on ties, like numpy's argmax)."""
    return model.classes[to_numpy(lda_decision_function(model, x).argmax(dim=1))]


# --------------------------------------------------------------------------------------------------- logistic


@dataclass(frozen=True)
class LogisticModel:
    """Multinomial L2 logistic regression; ``weights`` (d × C) act on (x − mean)/scale."""

    classes: np.ndarray
    weights: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor
    converged: bool
    n_iter: int


def logistic_fit(
    x: Array,
    y: Array,
    C: float = 1.0,
    standardize: bool = True,
    max_iter: int = 2000,
    tol: float = 1e-9,
    device: DeviceLike = None,
) -> LogisticModel:
    """Multinomial logistic regression with an L2 penalty, fitted by scipy's L-BFGS on float64 torch GEMMs.

    Objective (scikit-learn's ``LogisticRegression(C=C)``, lbfgs): Σ_i [logsumexp(z_i) − z_{i,y_i}] + ‖W‖²_F/(2C),
    z = x̃W + b, intercept b unpenalised, W over all C classes (the penalty makes the over-parametrised model
    identifiable). For two classes scikit-learn fits a binomial model with one weight vector w; the symmetric
    multinomial optimum has W = [w/2, −w/2], so the penalty is doubled there to give the same C the same meaning.
    With ``standardize`` the features are scaled by the training rows' mean and standard deviation (as a
    ``StandardScaler`` in a pipeline would do); L-BFGS runs to a tight gradient tolerance rather than
    scikit-learn's default ``max_iter=100``.
    """
    dev = _device(device)
    xt = _tensor64(x, dev)
    n, d = xt.shape
    classes, codes = _labels(y, n)
    c = len(classes)
    if c < 2:
        raise ValueError("logistic regression needs at least two classes")
    if standardize:
        mean = xt.mean(dim=0)
        var = xt.var(dim=0, unbiased=False)
        scale = var.sqrt()
        scale[_is_constant(var, mean, n)] = 1.0
    else:
        mean = torch.zeros(d, dtype=_F64, device=dev)
        scale = torch.ones(d, dtype=_F64, device=dev)
    xs = (xt - mean) / scale
    onehot = torch.zeros(n, c, dtype=_F64, device=dev)
    onehot[torch.arange(n, device=dev), torch.from_numpy(codes).to(dev)] = 1.0
    lam = (2.0 if c == 2 else 1.0) / C

    def fg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(theta).to(dev)
        w, b = t[: d * c].reshape(d, c), t[d * c :]
        z = xs @ w + b
        lse = torch.logsumexp(z, dim=1)
        loss = (lse - (z * onehot).sum(dim=1)).sum() + 0.5 * lam * (w * w).sum()
        p = torch.exp(z - lse[:, None]) - onehot
        gw = xs.T @ p + lam * w
        gb = p.sum(dim=0)
        # scaled by 1/n: the same minimiser, a gradient tolerance independent of n
        return float(loss) / n, torch.cat([gw.reshape(-1), gb]).cpu().numpy() / n

    res = scipy.optimize.minimize(
        fg,
        np.zeros(d * c + c),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": tol, "ftol": 1e-15, "maxcor": 20},
    )
    theta = torch.from_numpy(res.x).to(dev)
    return LogisticModel(
        classes=classes,
        weights=theta[: d * c].reshape(d, c),
        bias=theta[d * c :],
        mean=mean,
        scale=scale,
        converged=bool(res.success),
        n_iter=int(res.nit),
    )


def logistic_predict(model: LogisticModel, x: Array) -> np.ndarray:
    xt = _tensor64(x, model.weights.device)
    z = ((xt - model.mean) / model.scale) @ model.weights + model.bias
    return model.classes[to_numpy(z.argmax(dim=1))]


# --------------------------------------------------------------------------------------------------- folds


def stratified_folds(y: Array, folds: int, seed: int = 0) -> np.ndarray:
    """A fold id in [0, folds) for every sample, stratified by label.

    Each class's samples are shuffled (seeded) and dealt round-robin, the dealing continuing from where the
    previous class stopped: every fold gets each class's count to within one, and fold sizes differ by ≤ 1.
    """
    y = to_numpy(y)
    n = y.shape[0]
    if not 2 <= folds <= n:
        raise ValueError(f"folds must be in [2, {n}], got {folds}")
    _, codes = np.unique(y, return_inverse=True)
    rng = np.random.default_rng(seed)
    fold = np.empty(n, dtype=np.int64)
    offset = 0
    for k in range(codes.max() + 1):
        idx = rng.permutation(np.flatnonzero(codes == k))
        fold[idx] = (offset + np.arange(idx.size)) % folds
        offset += idx.size
    return fold


def group_folds(y: Array, groups: Array, folds: int, seed: int = 0) -> np.ndarray:
    """Fold ids that keep every group (e.g. chunks of one document) inside one fold, stratified by label.

    Groups are labelled by their majority label; within each label, groups are shuffled (seeded), sorted by size
    (largest first, stable) and each is given to the fold holding the fewest samples of that label so far
    (ties: the fold with the fewest samples, then the lowest id).
    """
    y = to_numpy(y)
    g = to_numpy(groups)
    if g.shape != y.shape:
        raise ValueError("groups must have one entry per sample")
    _, ycodes = np.unique(y, return_inverse=True)
    gvals, gcodes = np.unique(g, return_inverse=True)
    if not 2 <= folds <= gvals.size:
        raise ValueError(f"folds must be in [2, number of groups = {gvals.size}], got {folds}")
    sizes = np.bincount(gcodes)
    majority = np.array([np.bincount(ycodes[gcodes == j]).argmax() for j in range(gvals.size)])
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(gvals.size, dtype=np.int64)
    fold_total = np.zeros(folds, dtype=np.int64)
    for lab in np.unique(majority):
        gs = rng.permutation(np.flatnonzero(majority == lab))
        gs = gs[np.argsort(-sizes[gs], kind="stable")]
        fold_lab = np.zeros(folds, dtype=np.int64)
        for j in gs:
            f = int(np.lexsort((np.arange(folds), fold_total, fold_lab))[0])
            fold_of_group[j] = f
            fold_lab[f] += sizes[j]
            fold_total[f] += sizes[j]
    return fold_of_group[gcodes]


# --------------------------------------------------------------------------------------------------- CV accuracy


@dataclass(frozen=True)
class CVResult:
    """Cross-validated accuracy. ``accuracy`` is the mean of the fold accuracies (scikit-learn's
    ``cross_val_score(...).mean()``); ``predictions`` are the out-of-fold predictions of every sample."""

    accuracy: float
    fold_accuracies: np.ndarray
    predictions: np.ndarray
    folds: np.ndarray


def _fold_ids(y: np.ndarray, folds: int | Array, seed: int, groups: Array | None) -> np.ndarray:
    if isinstance(folds, int | np.integer):
        if groups is not None:
            return group_folds(y, groups, int(folds), seed)
        return stratified_folds(y, int(folds), seed)
    f = to_numpy(folds).astype(np.int64)
    if f.shape != y.shape:
        raise ValueError("an explicit fold array must have one fold id per sample")
    return f


def cv_accuracy(
    x: Array,
    y: Array,
    model: Model = "lda",
    folds: int | Array = 5,
    seed: int = 0,
    *,
    shrinkage: Shrinkage = "auto",
    C: float = 1.0,
    standardize: bool = True,
    pca: int | None = None,
    groups: Array | None = None,
    device: DeviceLike = None,
) -> CVResult:
    """Accuracy of predicting the source label of held-out samples; no sample is scored by a model fitted on it.

    `folds` is a number of stratified folds (:func:`stratified_folds`; :func:`group_folds` when `groups` is
    given) or an explicit fold id per sample. For each fold the model — ``"lda"`` (:func:`lda_fit` with
    `shrinkage`) or ``"logistic"`` (:func:`logistic_fit` with `C`, `standardize`) — is fitted on the other folds
    only. With `pca` = k, a k-component PCA is fitted on the training rows of each fold and applied to both sides,
    so the reduction sees no held-out data either.
    """
    dev = _device(device)
    xt = _tensor64(x, dev)
    n = xt.shape[0]
    yn = to_numpy(y)
    _labels(yn, n)
    fold = _fold_ids(yn, folds, seed, groups)
    if model not in ("lda", "logistic"):
        raise ValueError(f"model must be 'lda' or 'logistic', got {model!r}")
    preds = np.empty(n, dtype=yn.dtype)
    accs = []
    for f in np.unique(fold):
        test = fold == f
        train = ~test
        if not train.any():
            raise ValueError("a fold leaves no training samples")
        tr_idx = torch.from_numpy(np.flatnonzero(train)).to(dev)
        te_idx = torch.from_numpy(np.flatnonzero(test)).to(dev)
        x_tr, x_te = xt[tr_idx], xt[te_idx]
        if pca is not None:
            p = StreamingPCA(device=dev).update(x_tr).result(min(int(pca), x_tr.shape[1]))
            x_tr, x_te = project(x_tr, p.mean, p.components), project(x_te, p.mean, p.components)
        if model == "lda":
            pred = lda_predict(lda_fit(x_tr, yn[train], shrinkage=shrinkage, device=dev), x_te)
        else:
            m = logistic_fit(x_tr, yn[train], C=C, standardize=standardize, device=dev)
            pred = logistic_predict(m, x_te)
        preds[test] = pred
        accs.append(float(np.mean(pred == yn[test])))
    fold_acc = np.asarray(accs)
    return CVResult(accuracy=float(fold_acc.mean()), fold_accuracies=fold_acc, predictions=preds, folds=fold)


@dataclass(frozen=True)
class PermutationResult:
    """Observed cross-validated accuracy, its permutation p-value and the null accuracies."""

    accuracy: float
    p_value: float
    null: np.ndarray


def _permute_labels(y: np.ndarray, groups: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if groups is None:
        return rng.permutation(y)
    gvals, gcodes = np.unique(groups, return_inverse=True)
    first = np.array([np.flatnonzero(gcodes == j)[0] for j in range(gvals.size)])
    if np.array_equal(y, y[first][gcodes]):
        return y[first][rng.permutation(gvals.size)][gcodes]  # one label per group: permute whole groups
    out = y.copy()
    for j in range(gvals.size):  # labels vary inside groups: permute within each group (scikit-learn's rule)
        idx = np.flatnonzero(gcodes == j)
        out[idx] = y[rng.permutation(idx)]
    return out


def permutation_test(
    x: Array,
    y: Array,
    model: Model = "lda",
    folds: int | Array = 5,
    n_permutations: int = 100,
    seed: int = 0,
    **cv_kwargs,
) -> PermutationResult:
    """Is the cross-validated accuracy better than chance? Labels permuted B times, the whole CV rerun each time.

    p = (1 + #{null ≥ observed})/(1 + B) (Phipson & Smyth 2010; scikit-learn's ``permutation_test_score``): never
    0, at least 1/(1 + B), and P(p ≤ α) ≤ α under exchangeability. Each permutation reruns :func:`cv_accuracy`
    with the same `seed`, so stratified folds are re-drawn for the permuted labels, as scikit-learn's fixed
    ``random_state`` does. With ``groups`` (in `cv_kwargs`) whole groups' labels are permuted when every group has
    one label (documents as the exchangeable units), otherwise labels are permuted within groups.
    """
    if n_permutations < 1:
        raise ValueError("n_permutations must be ≥ 1")
    yn = to_numpy(y)
    groups = cv_kwargs.get("groups")
    gn = (
        None if groups is None else to_numpy(groups)
    )
    dev = _device(cv_kwargs.pop("device", None))
    xt = _tensor64(x, dev)  # converted once, reused by every permutation
    observed = cv_accuracy(xt, yn, model, folds, seed, device=dev, **cv_kwargs).accuracy
    rng = np.random.default_rng(seed)
    null = np.empty(n_permutations)
    for b in range(n_permutations):
        yp = _permute_labels(yn, gn, rng)
        null[b] = cv_accuracy(xt, yp, model, folds, seed, device=dev, **cv_kwargs).accuracy
    p = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + n_permutations)
    return PermutationResult(accuracy=observed, p_value=p, null=null)


# --------------------------------------------------------------------------------------------------- MMD


@dataclass(frozen=True)
class MMDResult:
    """Unbiased MMD² of two samples, its permutation p-value, the Gaussian bandwidth σ and the null MMD² values."""

    mmd2: float
    p_value: float
    bandwidth: float
    null: np.ndarray
    n_x: int
    n_y: int


def _sq_distances(z: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances in float64, of rows centred first (less cancellation), diagonal 0."""
    z = z - z.mean(dim=0)
    sq = (z * z).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * _crossprod(z, transpose=False)).clamp_min_(0)
    d2.fill_diagonal_(0)
    return d2


def _median_offdiag(d2: torch.Tensor) -> float:
    """Lower median of the distinct off-diagonal entries of a symmetric matrix (alibi-detect's choice)."""
    n = d2.shape[0]
    vals = d2[torch.ones(n, n, dtype=torch.bool, device=d2.device).triu(1)]
    return float(torch.kthvalue(vals, (vals.numel() - 1) // 2 + 1).values)


def median_bandwidth(x: Array, y: Array | None = None, device: DeviceLike = None) -> float:
    """Median heuristic σ = √(median‖a − b‖²/2) over the distinct pairs of the pooled points of x (and y).

    The kernel k(a, b) = exp(−‖a − b‖²/(2σ²)) is then exp(−‖a − b‖²/median). alibi-detect's ``MMDDrift`` uses the
    same formula (``sigma_median``: lower median of the squared distances, σ = √(median/2)); by default
    (``configure_kernel_from_x_ref=True``) it takes the distances within the reference sample only — pass just
    `x` = x_ref here to reproduce that.
    """
    dev = _device(device)
    z = _tensor64(x, dev) if y is None else torch.cat([_tensor64(x, dev), _tensor64(y, dev)])
    if z.shape[0] < 2:
        raise ValueError("the median heuristic needs at least 2 points")
    return math.sqrt(_median_offdiag(_sq_distances(z)) / 2)


def mmd2_unbiased(kernel: torch.Tensor, in_x: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) for one or many splits of the pooled sample.

    `kernel` is the (N × N) kernel matrix of the pooled points with its diagonal set to 0; `in_x` is (N,) or
    (N, B), 1 for the points of the first sample and 0 for the second. With a the indicator of X:
    Σ_XX = aᵀKa, Σ_XY = rᵀa − Σ_XX (r = K1), Σ_YY = 1ᵀK1 − Σ_XX − 2Σ_XY, so all B splits cost one GEMM K·A;
    MMD²_u = Σ_XX/(n(n−1)) + Σ_YY/(m(m−1)) − 2Σ_XY/(nm).
    """
    a = in_x.to(kernel.dtype)
    squeeze = a.ndim == 1
    if squeeze:
        a = a[:, None]
    ka = kernel @ a
    r = kernel.sum(dim=1)
    total = r.sum()
    n = a.sum(dim=0)
    m = a.shape[0] - n
    sxx = (a * ka).sum(dim=0)
    sxy = r @ a - sxx
    syy = total - sxx - 2 * sxy
    out = sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)
    return out[0] if squeeze else out


def mmd_test(
    x: Array,
    y: Array,
    n_permutations: int = 100,
    bandwidth: float | None = None,
    seed: int = 0,
    max_n: int | None = 2000,
    device: DeviceLike = None,
) -> MMDResult:
    """Kernel two-sample test: unbiased MMD² with a Gaussian kernel and a permutation p-value.

    * Subsampling: a sample larger than `max_n` (default 2000) is replaced by `max_n` of its rows drawn without
      replacement by ``numpy.random.default_rng(seed)`` (x first, then y), which keeps the (n+m)² kernel matrix at
      ≤ 128 MiB in float64. The test is then exact for the subsample (valid level, somewhat lower power).
    * Bandwidth: `bandwidth` = σ if given, else the median heuristic of :func:`median_bandwidth` over the *pooled*
      subsample. alibi-detect's ``MMDDrift`` uses the same σ = √(median/2) but over the reference sample alone by
      default; the pooled median is symmetric in (x, y) and invariant under relabelling, which keeps the
      permutation test exact (the bandwidth does not change between permutations).
    * Permutations: ONE kernel matrix; each permutation is a relabelling of its rows, all B statistics come from
      :func:`mmd2_unbiased` as one GEMM with the (N × B) label matrix (chunked by 256 columns). Permutations are
      drawn by the same seeded generator after the subsampling. p = (1 + #{null ≥ observed})/(1 + B); null values
      within 1e-9 × the mean kernel value of the observed one count as ≥ (rounding-level ties: conservative).
      REFERENCES asks for B ≥ 500 in reported results; the default of 100 matches alibi-detect's.
    """
    dev = _device(device)
    rng = np.random.default_rng(seed)
    xt, yt = _tensor64(x, dev), _tensor64(y, dev)
    if xt.shape[1] != yt.shape[1]:
        raise ValueError(f"x has {xt.shape[1]} features, y has {yt.shape[1]}")
    if max_n is not None:
        if xt.shape[0] > max_n:
            xt = xt[torch.from_numpy(np.sort(rng.choice(xt.shape[0], max_n, replace=False))).to(dev)]
        if yt.shape[0] > max_n:
            yt = yt[torch.from_numpy(np.sort(rng.choice(yt.shape[0], max_n, replace=False))).to(dev)]
    n, m = xt.shape[0], yt.shape[0]
    if n < 2 or m < 2:
        raise ValueError("each sample needs at least 2 points for the unbiased MMD²")
    d2 = _sq_distances(torch.cat([xt, yt]))
    sigma = math.sqrt(_median_offdiag(d2) / 2) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"the bandwidth must be positive, got {sigma} (are all points identical?)")
    kern = torch.exp(d2.mul_(-1.0 / (2 * sigma * sigma)))
    kern.fill_diagonal_(0)
    labels = np.r_[np.ones(n), np.zeros(m)]
    observed = float(mmd2_unbiased(kern, torch.from_numpy(labels).to(dev)))
    null = np.empty(n_permutations)
    for start in range(0, n_permutations, 256):
        b = min(256, n_permutations - start)
        perms = rng.permuted(np.broadcast_to(labels, (b, n + m)), axis=1)
        null[start : start + b] = to_numpy(mmd2_unbiased(kern, torch.from_numpy(perms.T.copy()).to(dev)))
    tol = 1e-9 * float(kern.sum()) / ((n + m) * (n + m - 1))
    p = (1 + int(np.sum(null >= observed - tol))) / (1 + n_permutations)
    return MMDResult(mmd2=observed, p_value=p, bandwidth=sigma, null=null, n_x=n, n_y=m)


def pairwise_mmd(
    sources: Mapping[str, Array],
    n_permutations: int = 100,
    bandwidth: float | None = None,
    seed: int = 0,
    max_n: int | None = 2000,
    device: DeviceLike = None,
) -> dict[tuple[str, str], MMDResult]:
    """:func:`mmd_test` for every unordered pair of sources (in the mapping's order), each with its own pooled
    median bandwidth unless `bandwidth` is given. No multiplicity correction is applied to the p-values."""
    return {
        (a, b): mmd_test(sources[a], sources[b], n_permutations, bandwidth, seed, max_n, device)
        for a, b in itertools.combinations(sources, 2)
    }


# --------------------------------------------------------------------------------------------------- Fisher ratio


def fisher_ratio(x: Array, y: Array, device: DeviceLike = None) -> float:
    """tr(S_B)/tr(S_W) of the given features (in sample), with prior-weighted scatters (π_k = n_k/n):
    S_B = Σ_k π_k(μ_k − μ)(μ_k − μ)ᵀ, S_W = Σ_k π_k Σ̂_k (1/n_k covariances), so tr S_B + tr S_W = tr S_T.

    Costs O(n·d) (only traces are needed). Invariant to rotations and to a common scale. In sample it is
    biased upward (≈ (C − 1)/n on raw features of a null; much more on features chosen to separate the same
    samples, e.g. an in-sample LDA projection — REFERENCES measured 0.20 on a null): report
    :func:`fisher_ratio_cv` as the separability measure.
    """
    dev = _device(device)
    xt = _tensor64(x, dev)
    n = xt.shape[0]
    classes, codes = _labels(y, n)
    codes_t = torch.from_numpy(codes).to(dev)
    counts = torch.bincount(codes_t, minlength=len(classes)).to(_F64)
    means = torch.zeros(len(classes), xt.shape[1], dtype=_F64, device=dev).index_add_(0, codes_t, xt)
    means /= counts[:, None]
    mu = xt.mean(dim=0)
    between = float((counts * ((means - mu) ** 2).sum(dim=1)).sum()) / n
    within = float(((xt - means[codes_t]) ** 2).sum()) / n
    return between / within if within > 0 else math.inf


@dataclass(frozen=True)
class FisherResult:
    """Out-of-fold Fisher ratio on the LDA projection: mean over folds and the per-fold values."""

    ratio: float
    fold_ratios: np.ndarray


def fisher_ratio_cv(
    x: Array,
    y: Array,
    folds: int | Array = 5,
    seed: int = 0,
    shrinkage: Shrinkage = "auto",
    groups: Array | None = None,
    device: DeviceLike = None,
) -> FisherResult:
    """Fisher ratio of held-out samples on the LDA projection fitted without them.

    For each fold, :func:`lda_fit` on the other folds, :func:`lda_transform` of the held-out fold, and
    :func:`fisher_ratio` of those (≤ C − 1)-dimensional coordinates with the held-out labels; the result is the
    mean over folds (per-fold projections differ by rotation/sign, so they are not pooled). The directions are
    chosen on other samples, so the selection bias of the in-sample value is gone; what remains on a null is the
    small finite-sample spread of held-out class means, ≈ (C − 1)/n_fold.
    """
    dev = _device(device)
    xt = _tensor64(x, dev)
    yn = to_numpy(y)
    _labels(yn, xt.shape[0])
    fold = _fold_ids(yn, folds, seed, groups)
    ratios = []
    for f in np.unique(fold):
        test = fold == f
        tr_idx = torch.from_numpy(np.flatnonzero(~test)).to(dev)
        te_idx = torch.from_numpy(np.flatnonzero(test)).to(dev)
        model = lda_fit(xt[tr_idx], yn[~test], shrinkage=shrinkage, device=dev)
        z = lda_transform(model, xt[te_idx])
        if np.unique(yn[test]).size < 2 or z.shape[1] == 0:
            continue
        ratios.append(fisher_ratio(z, yn[test]))
    r = np.asarray(ratios)
    return FisherResult(ratio=float(r.mean()) if r.size else math.nan, fold_ratios=r)


# --------------------------------------------------------------------------------------------------- silhouette


def silhouette(
    x: Array, labels: Array, max_n: int | None = 5000, seed: int = 0, device: DeviceLike = None
) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987), Euclidean distances in float64.

    s(i) = (b − a)/max(a, b) with a the mean distance to the rest of i's cluster and b the smallest mean distance
    to another cluster; s = 0 for a point alone in its cluster. Above `max_n` points a subsample of `max_n` is
    used, chosen as scikit-learn's ``silhouette_score(sample_size=max_n, random_state=seed)`` chooses it
    (``RandomState(seed).permutation(n)[:max_n]``), so both agree exactly. Per-cluster distance sums are one GEMM
    of each block of distance rows with the one-hot label matrix. Descriptive only: it can be near 0 for sources
    that a classifier separates well (REFERENCES: 0.04 at 92 % accuracy).
    """
    dev = _device(device)
    xt = _tensor64(x, dev)
    lab = to_numpy(labels)
    n = xt.shape[0]
    _labels(lab, n)
    if max_n is not None and n > max_n:
        idx = np.random.RandomState(seed).permutation(n)[:max_n]
        xt, lab, n = xt[torch.from_numpy(idx).to(dev)], lab[idx], max_n
    classes, codes = np.unique(lab, return_inverse=True)
    c = len(classes)
    if not 2 <= c <= n - 1:
        raise ValueError(f"the silhouette needs 2 ≤ number of labels ≤ n − 1, got {c} labels for {n} points")
    codes_t = torch.from_numpy(codes).to(dev)
    onehot = torch.zeros(n, c, dtype=_F64, device=dev)
    onehot[torch.arange(n, device=dev), codes_t] = 1.0
    counts = onehot.sum(dim=0)
    z = xt - xt.mean(dim=0)
    sq = (z * z).sum(dim=1)
    sums = torch.empty(n, c, dtype=_F64, device=dev)
    for start in range(0, n, 2048):
        stop = min(n, start + 2048)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (z[start:stop] @ z.T)
        d = d2.clamp_min_(0).sqrt_()
        d[torch.arange(stop - start, device=dev), torch.arange(start, stop, device=dev)] = 0
        sums[start:stop] = d @ onehot
    own = counts[codes_t]
    rows = torch.arange(n, device=dev)
    a = sums[rows, codes_t] / (own - 1).clamp_min(1)
    mean_other = sums / counts
    mean_other[rows, codes_t] = math.inf
    b = mean_other.min(dim=1).values
    s = (b - a) / torch.maximum(a, b)
    s = torch.nan_to_num(s, nan=0.0)
    s[own == 1] = 0
    return float(s.mean())


# --------------------------------------------------------------------------------------------------- association


@dataclass(frozen=True)
class Association:
    """Association of each PCA component's scores with one label array.

    ``kind`` "pearson": Pearson r (signed, two-sided t-test p-value with n − 2 df); ``kind`` "eta": the
    correlation ratio η = √(SS_between/SS_total) of the scores grouped by the label (in [0, 1], one-way ANOVA
    F-test p-value). ``n`` counts the samples used (missing labels dropped).
    """

    label: str
    kind: Literal["pearson", "eta"]
    statistic: np.ndarray  # (k,)
    p_value: np.ndarray  # (k,)
    n: int
    n_groups: int | None


def _label_kind(values: np.ndarray) -> Literal["pearson", "eta"]:
    if values.dtype.kind == "f":
        return "pearson"
    if values.dtype.kind in "iu":
        return "eta" if np.unique(values).size <= MAX_CATEGORICAL_LEVELS else "pearson"
    return "eta"  # bool, strings, objects


def _present(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isfinite(values)
    if values.dtype.kind == "O":
        return np.array([v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values])
    return np.ones(values.shape[0], dtype=bool)


def component_label_association(
    scores: Array,
    labels: Mapping[str, Array],
    kinds: Mapping[str, Literal["pearson", "eta"]] | None = None,
) -> dict[str, Association]:
    """Which leading components track which known labels (source, length, date, …)?

    `scores` (n × k) are PCA scores (:func:`project`). For each label array: Pearson r for numeric labels, the
    correlation ratio η for categorical ones — the share of a component's variance explained by the group means,
    the natural extension of |r| to a label without an order (η = |r| for a two-level label). Kind inference,
    overridable per label by `kinds`: floats → Pearson; bool/strings/objects → η; integers → η when they take at
    most :data:`MAX_CATEGORICAL_LEVELS` values (source ids), Pearson otherwise (lengths, counts). η over many
    small groups is biased upward (E[η²] ≈ (G − 1)/(n − 1) on a null); the F-test p-value accounts for that.
    """
    s = to_numpy(scores)
    s = np.asarray(s, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    n, k = s.shape
    out: dict[str, Association] = {}
    for name, raw in labels.items():
        v = to_numpy(raw)
        if v.ndim != 1 or v.shape[0] != n:
            raise ValueError(
                f"label {name!r} must be 1-D with one entry per sample ({n}), got shape {v.shape}"
            )
        keep = _present(v)
        v, sk = v[keep], s[keep]
        nk = int(keep.sum())
        kind = (kinds or {}).get(name) or _label_kind(v)
        sc = sk - sk.mean(axis=0)
        sst = (sc * sc).sum(axis=0)
        if kind == "pearson":
            vc = v.astype(np.float64) - v.astype(np.float64).mean()
            with np.errstate(invalid="ignore", divide="ignore"):
                r = (vc @ sc) / np.sqrt((vc @ vc) * sst)
                r = np.clip(r, -1.0, 1.0)
                t2 = r * r * (nk - 2) / np.maximum(1 - r * r, 0)
                p = scipy.stats.f.sf(t2, 1, nk - 2) if nk > 2 else np.full(k, np.nan)
            out[name] = Association(name, "pearson", r, np.where(np.isnan(r), np.nan, p), nk, None)
        elif kind == "eta":
            _, codes = np.unique(v, return_inverse=True)
            g = int(codes.max()) + 1 if nk else 0
            cnt = np.bincount(codes, minlength=g).astype(np.float64)
            gmeans = np.zeros((g, k))
            np.add.at(gmeans, codes, sk)
            gmeans /= cnt[:, None]
            ssw = ((sk - gmeans[codes]) ** 2).sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                eta2 = np.clip(1 - ssw / sst, 0.0, 1.0)
                fstat = (eta2 / (g - 1)) / ((1 - eta2) / (nk - g)) if 1 < g < nk else np.full(k, np.nan)
                p = scipy.stats.f.sf(fstat, g - 1, nk - g) if 1 < g < nk else np.full(k, np.nan)
            eta = np.sqrt(eta2)
            out[name] = Association(name, "eta", eta, np.where(np.isnan(eta), np.nan, p), nk, g)
        else:
            raise ValueError(f"kind of label {name!r} must be 'pearson' or 'eta', got {kind!r}")
    return out


__all__: Sequence[str] = (
    "MAX_CATEGORICAL_LEVELS",
    "MAX_SCATTER_DIM",
    "Association",
    "CVResult",
    "FisherResult",
    "LDAModel",
    "LogisticModel",
    "MMDResult",
    "PCAResult",
    "PermutationResult",
    "StreamingPCA",
    "component_label_association",
    "cv_accuracy",
    "fisher_ratio",
    "fisher_ratio_cv",
    "fit_pca",
    "group_folds",
    "lda_decision_function",
    "lda_fit",
    "lda_predict",
    "lda_transform",
    "ledoit_wolf_shrinkage",
    "logistic_fit",
    "logistic_predict",
    "median_bandwidth",
    "mmd2_unbiased",
    "mmd_test",
    "pairwise_mmd",
    "permutation_test",
    "project",
    "randomized_pca",
    "shrunk_covariance",
    "silhouette",
    "stratified_folds",
)
