"""Summaries of a CKA matrix and of a model's own predictions: plain functions on arrays.

Off-diagonal statistics follow Gondhalekar et al.: when a model fails out of distribution its layers'
representations stay similar to each other (a block structure), so the off-diagonal values grow and
their skewness and the share of the leading eigenvalue change.

SciPy is imported by :func:`summarise` alone: `audit report` draws the CKA figures with :func:`offdiagonal`
and needs no SciPy.
"""

from __future__ import annotations

import numpy as np

from audit.api.arrays import to_numpy


def offdiagonal(matrix: np.ndarray) -> np.ndarray:
    """Upper-triangle (i < j) entries of a square CKA matrix, NaNs (undefined layers) dropped."""
    m = np.asarray(matrix, dtype=np.float64)
    values = m[np.triu_indices(m.shape[0], k=1)]
    return values[np.isfinite(values)]


def spectrum(matrix: np.ndarray) -> np.ndarray:
    """Eigenvalues, descending, of the symmetrised matrix (M+Mᵀ)/2 restricted to layers with finite CKA."""
    m = np.asarray(matrix, dtype=np.float64)
    ok = np.isfinite(np.diag(m))  # a layer with undefined self-similarity is left out whole
    sym = (m[np.ix_(ok, ok)] + m[np.ix_(ok, ok)].T) / 2
    if sym.size == 0:
        return np.zeros(0)
    return np.linalg.eigvalsh(sym)[::-1]


def effective_rank(eigenvalues: np.ndarray) -> float:
    """exp of the Shannon entropy of the normalised positive eigenvalues (Roy & Vetterli 2007).

    Eigenvalues within round-off of zero — at most n·ε·λ_max, numpy's ``matrix_rank`` tolerance — count as
    zero: an eigensolver leaves ~1e-17 where the exact value is 0, and whether it does depends on the BLAS.
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0, None)
    if lam.size:
        lam[lam <= lam.max() * lam.size * np.finfo(np.float64).eps] = 0.0
    total = lam.sum()
    if total <= 0:
        return float("nan")
    p = lam[lam > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def summarise(matrix: np.ndarray, n_eigenvalues: int = 3) -> dict[str, float]:
    """The seed-paper summaries of one square CKA matrix."""
    from scipy import stats

    off = offdiagonal(matrix)
    eig = spectrum(matrix)
    out = {
        "offdiag_mean": float(off.mean()) if off.size else float("nan"),
        "offdiag_median": float(np.median(off)) if off.size else float("nan"),
        # skewness of identical values is undefined (0/0): NaN, without scipy's precision warning
        "offdiag_skew": float(stats.skew(off)) if off.size > 2 and np.ptp(off) > 0 else float("nan"),
        "effective_rank": effective_rank(eig),
        "eig_1_share": float(eig[0] / np.clip(eig, 0, None).sum())
        if eig.size and eig[0] > 0
        else float("nan"),
        "layers": float(np.asarray(matrix).shape[0]),
    }
    for k in range(n_eigenvalues):
        out[f"eig_{k + 1}"] = float(eig[k]) if k < eig.size else float("nan")
    return out


def cross_summary(matrix: np.ndarray) -> dict[str, float]:
    """Summaries of a model-A × model-B CKA matrix (rows: A's layers, columns: B's layers)."""
    m = np.asarray(matrix, dtype=np.float64)
    finite = m[np.isfinite(m)]
    out = {
        "cross_mean": float(finite.mean()) if finite.size else float("nan"),
        "cross_best_match_mean": float(np.nanmax(m, axis=1).mean()) if np.isfinite(m).any() else float("nan"),
    }
    if m.shape[0] == m.shape[1]:
        d = np.diag(m)
        out["cross_diag_mean"] = float(d[np.isfinite(d)].mean()) if np.isfinite(d).any() else float("nan")
    return out


class TaskScore:
    """Streams a model's outputs against targets: accuracy (classification) or R² per target (regression)."""

    def __init__(self, task: str):
        self.task = task
        self.n = 0
        self.correct = 0
        self.sum_y: np.ndarray | None = None
        self.sum_y2: np.ndarray | None = None
        self.sse: np.ndarray | None = None
        self.problem: str | None = None

    def update(self, output, targets) -> None:
        if self.problem:
            return
        out = to_numpy(output, np.float64)
        y = to_numpy(targets)
        if self.task == "classification":
            y = y.reshape(-1)
            if out.ndim == 1 or out.shape[1] == 1:
                pred = (out.reshape(-1) > 0).astype(np.int64)
            else:
                pred = out.reshape(out.shape[0], -1).argmax(axis=1)
            self.correct += int((pred == y).sum())
            self.n += y.shape[0]
            return
        y = y.astype(np.float64).reshape(y.shape[0], -1)
        out = out.reshape(out.shape[0], -1)
        if out.shape != y.shape:
            self.problem = f"output shape {out.shape[1:]} does not match targets {y.shape[1:]}; R² skipped"
            return
        if self.sum_y is None:
            self.sum_y = np.zeros(y.shape[1])
            self.sum_y2 = np.zeros(y.shape[1])
            self.sse = np.zeros(y.shape[1])
        self.sum_y += y.sum(0)
        self.sum_y2 += (y**2).sum(0)
        self.sse += ((y - out) ** 2).sum(0)
        self.n += y.shape[0]

    def metrics(self) -> dict[str, float]:
        if self.problem or self.n == 0:
            return {}
        if self.task == "classification":
            return {"accuracy": self.correct / self.n}
        sst = self.sum_y2 - self.sum_y**2 / self.n
        with np.errstate(invalid="ignore", divide="ignore"):
            r2 = 1 - self.sse / sst
        out = {f"r2_{j}": float(v) for j, v in enumerate(r2)}
        out["r2_mean"] = float(np.mean(r2))
        return out
