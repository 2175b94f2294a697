"""Spectra of weight matrices and kernels: the random-matrix side of the `entk` probe, as plain functions.

Why these statistics. A weight matrix at initialisation is a random matrix: the eigenvalues of WᵀW/N fill
the Marchenko–Pastur (MP) bulk and the largest sits within a few Tracy–Widom (TW) scales of its upper edge.
Training that only nudges W leaves the spectrum there; training that learns a few directions strongly
(large-step SGD) pushes eigenvalues past the edge ("spikes") and fattens the tail; a high-rank update (Adam)
moves the bulk. So the *count past the edge* (with a TW margin) says whether the spectrum changed at all,
the top/edge ratio how strongly, and a power-law fit of the tail how heavy it became (Martin & Mahoney 2021;
Wang et al. 2023). The tail exponent alone is not a test of change: a pure MP bulk also admits a power-law
"fit" with some α.

Definitions and normalisations:

* MP law: for an n×m matrix X (n ≥ m, q = m/n) with i.i.d. entries of variance σ², the eigenvalues of
  XᵀX/n fill [σ²(1 − √q)², σ²(1 + √q)²]. A matrix with m > n is transposed first (the nonzero spectrum of
  the smaller Gram is the one that matters).
* TW scale (Johnstone 2001): the largest eigenvalue of XᵀX at unit variance fluctuates on the scale
  (√(n−1) + √m)(1/√(n−1) + 1/√m)^{1/3}; divided by n for XᵀX/n. It is used only as a margin above the edge.
* Weight spectra: W is oriented so that rows ≥ columns, the eigenvalues of WᵀW/rows (squared singular
  values, which is more accurate than forming the Gram) are scaled to unit mean, so σ² = 1 is the MP scale.
  A few strong spikes raise the mean and so shrink the bulk estimate: the count is conservative.
* Power-law tail (Clauset, Shalizi & Newman 2009, continuous case): for each candidate x_min the MLE is
  α = 1 + n_tail / Σ ln(x_i/x_min) and the quality the KS distance between the tail's empirical CDF and
  1 − (x/x_min)^{1−α}; the x_min with the smallest KS distance wins. Suffix sums give every α at once; the
  KS distances are computed in candidate blocks (O(c·n) work, bounded memory), with at most
  `max_candidates` candidates evenly spaced in rank.
* Kernel–target alignment (Cortes, Mohri & Rostamizadeh 2012, centred): A = ⟨K_c, YYᵀ⟩_F/(‖K_c‖_F‖YYᵀ‖_F)
  with K_c = HKH and Y centred (class labels become centred one-hot columns), so YYᵀ is already centred.
"""

from __future__ import annotations

import numpy as np

NAN = float("nan")


# ---------------------------------------------------------------------------------------------- random matrices


def _orient(n: int, m: int) -> tuple[int, int]:
    return (n, m) if n >= m else (m, n)


def marchenko_pastur_edges(n: int, m: int, sigma2: float = 1.0) -> tuple[float, float]:
    """Lower and upper MP bulk edges of XᵀX/n for an n×m matrix of i.i.d. entries of variance sigma2."""
    n, m = _orient(n, m)
    root_q = np.sqrt(m / n)
    return float(sigma2 * (1 - root_q) ** 2), float(sigma2 * (1 + root_q) ** 2)


def tracy_widom_scale(n: int, m: int) -> float:
    """Johnstone's fluctuation scale of the largest eigenvalue of XᵀX/n (unit variance)."""
    n, m = _orient(n, m)
    a, b = np.sqrt(n - 1), np.sqrt(m)
    return float((a + b) * (1 / a + 1 / b) ** (1 / 3) / n)


# ---------------------------------------------------------------------------------------------- power-law tail


def _nan_fit() -> dict[str, float]:
    return {"alpha": NAN, "xmin": NAN, "ks": NAN, "n_tail": 0.0}


def power_law_fit(x: np.ndarray, min_tail: int = 10, max_candidates: int = 2000) -> dict[str, float]:
    """Clauset–Shalizi–Newman continuous power-law fit of the upper tail of the positive values of x.

    Returns alpha, xmin, ks (the KS distance of the chosen fit) and n_tail; NaNs and n_tail 0 when fewer than
    min_tail positive values (or no tail with spread) exist.
    """
    xs = np.sort(np.asarray(x, dtype=np.float64).ravel())
    xs = xs[np.isfinite(xs) & (xs > 0)]
    n = xs.size
    if n < max(min_tail, 2):
        return _nan_fit()
    logs = np.log(xs)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = Σ_{j ≥ i} ln x_j
    _, first = np.unique(xs, return_index=True)  # ties: a candidate keeps all its equal values in the tail
    cand = first[n - first >= min_tail]
    if cand.size > max_candidates:
        cand = cand[np.unique(np.linspace(0, cand.size - 1, max_candidates).round().astype(int))]
    n_tail = (n - cand).astype(np.float64)
    spread = suffix[cand] - n_tail * logs[cand]  # Σ ln(x_i / x_min) over the tail
    ok = spread > 0
    cand, n_tail, spread = cand[ok], n_tail[ok], spread[ok]
    if cand.size == 0:
        return _nan_fit()
    alpha = 1 + n_tail / spread
    ks = np.empty(cand.size)
    idx = np.arange(n)
    block = max(1, 4_000_000 // n)
    for s in range(0, cand.size, block):  # blocks of candidates: bounded memory, no loop over points
        c, a, nt = cand[s : s + block, None], alpha[s : s + block, None], n_tail[s : s + block, None]
        rank = idx[None, :] - c  # 0-based position inside the tail, negative outside it
        t = np.clip(logs[None, :] - logs[c], 0, None)
        fitted = -np.expm1(-(a - 1) * t)
        gap = np.maximum((rank + 1) / nt - fitted, fitted - rank / nt)
        ks[s : s + block] = np.where(rank >= 0, gap, -np.inf).max(axis=1)
    best = int(np.argmin(ks))
    return {
        "alpha": float(alpha[best]),
        "xmin": float(xs[cand[best]]),
        "ks": float(ks[best]),
        "n_tail": float(n_tail[best]),
    }


# ---------------------------------------------------------------------------------------------- spectra


def effective_rank(eigenvalues: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised positive eigenvalues (Roy & Vetterli 2007)."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
    total = lam.sum()
    if total <= 0:
        return NAN
    p = lam[lam > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def stable_rank(eigenvalues: np.ndarray) -> float:
    """Σλ/λ_max of a PSD spectrum (‖W‖_F²/‖W‖₂² for the eigenvalues of WᵀW); NaN for a zero spectrum."""
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
    top = lam.max(initial=0.0)
    return float(lam.sum() / top) if top > 0 else NAN


def weight_spectrum(w: np.ndarray, tw_margin: float = 3.0) -> tuple[dict[str, float], np.ndarray]:
    """MP-bulk statistics of one 2-D weight matrix: (metrics, eigenvalues of WᵀW/rows at unit mean, descending).

    Metrics: rows, cols (after orienting rows ≥ cols), mp_edge, tw_scale, spikes (eigenvalues past
    mp_edge + tw_margin·tw_scale), top_edge_ratio (λ_max/mp_edge), stable_rank, effective_rank and the
    tail fit alpha, xmin, ks, n_tail. A zero or non-finite matrix gives NaN ratios and ranks.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weight_spectrum needs a 2-D matrix, got shape {w.shape}")
    if w.shape[0] < w.shape[1]:
        w = w.T
    rows, cols = w.shape
    finite = bool(np.isfinite(w).all())
    lam = np.linalg.svd(w, compute_uv=False) ** 2 / rows if finite else np.full(cols, np.nan)  # descending
    mean = lam.mean() if lam.size and finite else 0.0
    edge = marchenko_pastur_edges(rows, cols)[1]
    tw = tracy_widom_scale(rows, cols) if rows > 1 else NAN
    metrics = {"rows": float(rows), "cols": float(cols), "mp_edge": edge, "tw_scale": tw}
    if not mean > 0:
        metrics.update(spikes=NAN, top_edge_ratio=NAN, stable_rank=NAN, effective_rank=NAN, **_nan_fit())
        return metrics, lam
    lam = lam / mean
    metrics.update(
        spikes=float(np.count_nonzero(lam > edge + tw_margin * tw)),
        top_edge_ratio=float(lam[0] / edge),
        stable_rank=stable_rank(lam),
        effective_rank=effective_rank(lam),
        **power_law_fit(lam),
    )
    return metrics, lam


def centred_targets(targets: np.ndarray) -> np.ndarray:
    """Targets as a centred (n, q) float64 matrix: integer/bool labels → one-hot columns, reals as given."""
    y = np.asarray(targets)
    if y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        _, codes = np.unique(y, return_inverse=True)
        y = np.eye(codes.max(initial=0) + 1)[codes]
    y = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
    return y - y.mean(axis=0, keepdims=True)


def kernel_target_alignment(k: np.ndarray, y: np.ndarray) -> float:
    """Centred alignment ⟨K_c, YYᵀ⟩_F/(‖K_c‖_F‖YYᵀ‖_F) for centred targets y (n, q); NaN if either is zero."""
    kc = k - k.mean(axis=0, keepdims=True)
    kc -= kc.mean(axis=1, keepdims=True)
    inner = float(np.sum(y * (kc @ y)))  # ⟨K_c, YYᵀ⟩ = tr(Yᵀ K_c Y)
    norm = float(np.linalg.norm(kc) * np.linalg.norm(y.T @ y))  # ‖YYᵀ‖_F = ‖YᵀY‖_F
    return inner / norm if norm > 0 else NAN


def kernel_spectrum(
    k: np.ndarray, targets: np.ndarray | None = None, top: int = 10
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Eigen-statistics of a symmetric PSD kernel matrix, and its fit to the targets when given.

    Metrics: effective_rank, top_share (λ₁/Σ max(λ, 0)), negative_eigenvalues (count below −1e-10·λ_max:
    a PSD check), the tail fit alpha, xmin, ks, n_tail of the positive eigenvalues, and with targets the
    centred alignment. Arrays: eigenvalues (descending) and, with targets, target_captured: the cumulative
    share of ‖Y‖² (Y centred) in the span of the top-i eigenvectors of K, i = 1..min(top, n).
    """
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"kernel_spectrum needs a square matrix, got shape {k.shape}")
    k = (k + k.T) / 2
    lam, vec = np.linalg.eigh(k)
    lam, vec = lam[::-1], vec[:, ::-1]
    top_value = lam[0] if lam.size else 0.0
    positive = np.clip(lam, 0, None).sum()
    metrics = {
        "effective_rank": effective_rank(lam),
        "top_share": float(top_value / positive) if positive > 0 else NAN,
        "negative_eigenvalues": float(np.count_nonzero(lam < -1e-10 * abs(top_value))),
        **power_law_fit(lam),
    }
    arrays = {"eigenvalues": lam}
    if targets is not None:
        y = centred_targets(targets)
        if y.shape[0] != k.shape[0]:
            raise ValueError(f"targets hold {y.shape[0]} examples, the kernel {k.shape[0]}")
        metrics["alignment"] = kernel_target_alignment(k, y)
        energy = float(np.sum(y * y))
        proj = np.sum((vec[:, :top].T @ y) ** 2, axis=1)  # ‖u_iᵀY‖² for the top eigenvectors
        arrays["target_captured"] = np.cumsum(proj) / energy if energy > 0 else np.full(proj.size, NAN)
    return metrics, arrays
