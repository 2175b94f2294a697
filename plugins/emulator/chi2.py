"""χ² agreement of an emulator with the simulation it replaces: plain functions, float64 throughout.

Nadler & To (UniverseMachine emulator) judge an emulator by

    χ² = 1/(N_boxes N_bins) Σ_i r_iᵀ Σ⁻¹ r_i,      r_i = reference_i − prediction_i  (in log10 space there),

with Σ from survey errors. Cosmology emulators (CosmoPower, EuclidEmulator, baccoemu) add fractional-error
percentiles and calibrated χ². This module holds every piece of that arithmetic, independent of torch and of
the catalog, so that each piece is tested against a direct formula:

* :class:`Covariance` — from per-bin errors (diagonal), a full matrix, or simulation realisations (the
  unbiased sample covariance with the Hartlap factor h = (n_s − p − 2)/(n_s − 1) on Σ̂⁻¹). χ² goes through a
  Cholesky solve, never an explicit inverse. A singular or ill-conditioned matrix is an error naming its
  condition number and rank, or — when asked — a pseudo-inverse on the supported subspace with dof = rank and a
  warning. Never a silent NaN, and never jitter: adding εI to a singular Σ turns directions the data do not
  constrain into directions with error ε, which inflates χ² by orders of magnitude.
* p-values: with a known Σ, χ²_i ~ χ²(p). With Σ̂ estimated from n_s realisations the Hartlap factor fixes only
  the *mean* of χ²; the sampling distribution is Hotelling's: for r ~ N(0, Σ) independent of the realisations,
  T² = rᵀ Σ̂⁻¹ r satisfies T² (n_s − p) / (p (n_s − 1)) ~ F(p, n_s − p). p-values from χ²(p) would be
  miscalibrated (too many small ones) for n_s not ≫ p.
* :func:`to_space` — linear or log10 comparison, with a stated rule for zero or negative values.
* pulls r_ij/σ_j per bin, fractional errors |prediction/reference − 1| (in linear units), their percentiles,
  and the KS test of the p-values' uniformity (calibration).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, stats

from model_audit_probes.emulator.choices import COVARIANCE_KINDS, NONPOSITIVE_RULES, SINGULAR_RULES, SPACES

PERCENTILES = (68.0, 95.0, 99.0)


class CovarianceError(ValueError):
    """The covariance cannot give a χ² as asked (singular, not positive definite, too few realisations)."""


# ----------------------------------------------------------------------------------------------- spaces


def to_space(
    values: np.ndarray,
    stored: str,
    space: str,
    nonpositive: str = "error",
    floor: float = 0.0,
    what: str = "",
) -> np.ndarray:
    """Values stored in `stored` ("linear" or "log10") expressed in `space`, float64.

    The only lossy direction is linear → log10, where a value ≤ 0 has no logarithm. The rule:
    ``"error"`` raises naming how many values and which bins; ``"mask"`` returns NaN there (the bin leaves that
    sample's χ², whose dof drops by one); ``"floor"`` replaces them by ``floor`` (> 0) first — e.g. the
    smallest number density a box of that volume can record, one object per bin.
    """
    x = np.asarray(values, dtype=np.float64)
    if stored not in SPACES or space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}")
    if not np.all(np.isfinite(x)):
        bad = ~np.isfinite(x)
        raise ValueError(f"{what or 'values'}: {int(bad.sum())} non-finite value(s) in bins {_bins(bad)}")
    if stored == space:
        return x.copy()
    if stored == "log10":
        return np.power(10.0, x)
    bad = x <= 0
    if bad.any():
        if nonpositive == "error":
            raise ValueError(
                f"{what or 'values'}: {int(bad.sum())} value(s) ≤ 0 in bins {_bins(bad)} have no log10; set "
                f"nonpositive = 'mask' (drop those bins from the sample's χ²) or 'floor' (with floor > 0)"
            )
        if nonpositive == "floor":
            if not floor > 0:
                raise ValueError("nonpositive = 'floor' needs floor > 0")
            x = np.where(bad, floor, x)
        elif nonpositive == "mask":
            x = np.where(bad, np.nan, x)
        else:
            raise ValueError(f"nonpositive must be one of {NONPOSITIVE_RULES}")
    with np.errstate(invalid="ignore"):
        return np.log10(x)


def _bins(bad: np.ndarray) -> str:
    cols = np.flatnonzero(bad.reshape(-1, bad.shape[-1]).any(axis=0)) if bad.ndim else np.array([0])
    shown = ", ".join(str(int(c)) for c in cols[:8])
    return shown + (f" and {len(cols) - 8} more" if len(cols) > 8 else "")


# ------------------------------------------------------------------------------------------ covariance


@dataclass
class Covariance:
    """A p×p covariance and how to measure residuals against it.

    ``matrix`` is Σ (for realisations: the unbiased sample covariance Σ̂). ``hartlap`` multiplies rᵀΣ̂⁻¹r so
    that its mean is p (1 for a known Σ). ``n_realisations`` is set when Σ was estimated, which switches the
    p-values to the Hotelling F form. With ``pseudo`` the inverse acts on the ``rank`` leading eigen-directions.
    """

    matrix: np.ndarray
    kind: str
    n_realisations: int | None = None
    hartlap: float = 1.0
    rank: int = 0
    condition: float = 1.0
    pseudo: bool = False
    warnings: list[str] = field(default_factory=list)
    _chol: np.ndarray | None = field(default=None, repr=False)
    _basis: np.ndarray | None = field(default=None, repr=False)  # pseudo: V_k / sqrt(λ_k), shape (p, k)

    @property
    def p(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def sigma(self) -> np.ndarray:
        """Per-bin standard deviations sqrt(Σ_jj): the scale of each bin's pull."""
        return np.sqrt(np.diag(self.matrix))

    # -- construction

    @classmethod
    def from_errors(cls, sigma: np.ndarray, singular: str = "error", rcond: float = 1e-10) -> Covariance:
        s = np.asarray(sigma, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise CovarianceError("per-bin errors must be finite and ≥ 0")
        return cls._build(np.diag(s**2), "diagonal", singular, rcond)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, singular: str = "error", rcond: float = 1e-10) -> Covariance:
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise CovarianceError(f"a full covariance must be a square matrix, got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise CovarianceError("the covariance matrix has non-finite entries")
        scale = max(float(np.abs(m).max()), np.finfo(float).tiny)
        if not np.allclose(m, m.T, rtol=0, atol=1e-10 * scale):
            raise CovarianceError("the covariance matrix is not symmetric")
        return cls._build((m + m.T) / 2, "full", singular, rcond)

    @classmethod
    def from_realisations(
        cls, realisations: np.ndarray, singular: str = "error", rcond: float = 1e-10
    ) -> Covariance:
        """Σ̂ = Σ_k (x_k − x̄)(x_k − x̄)ᵀ / (n_s − 1) with the Hartlap factor (n_s − p − 2)/(n_s − 1).

        Needs n_s > p + 2 for a positive Hartlap factor (Hartlap, Simon & Schneider 2007); with n_s ≤ p Σ̂ is
        singular whatever the data, which is an error even under ``singular = "pinv"``: a pseudo-inverse of a
        rank-deficient estimate measures nothing outside the span of a few realisations.
        """
        x = np.asarray(realisations, dtype=np.float64)
        if x.ndim != 2:
            raise CovarianceError(f"realisations must be a 2-D array (n_s, bins), got shape {x.shape}")
        n_s, p = x.shape
        if not np.all(np.isfinite(x)):
            raise CovarianceError("the realisations have non-finite values (in the comparison space)")
        if n_s <= p + 2:
            raise CovarianceError(
                f"{n_s} realisations of {p} bins: the Hartlap-corrected inverse needs n_s > p + 2 = {p + 2}"
            )
        centred = x - x.mean(axis=0)
        sample = centred.T @ centred / (n_s - 1)
        cov = cls._build(sample, "realisations", singular, rcond)
        cov.n_realisations = n_s
        cov.hartlap = hartlap_factor(n_s, p)
        return cov

    @classmethod
    def _build(cls, m: np.ndarray, kind: str, singular: str, rcond: float) -> Covariance:
        if singular not in SINGULAR_RULES:
            raise ValueError(f"singular must be one of {SINGULAR_RULES}")
        p = m.shape[0]
        if p == 0:
            raise CovarianceError("the covariance has no bins")
        eig, vec = np.linalg.eigh(m)
        top = float(eig[-1])
        if top <= 0:
            raise CovarianceError("the covariance is zero or negative definite")
        if eig[0] < -1e-8 * top:
            raise CovarianceError(
                f"the covariance is not positive semi-definite (smallest eigenvalue {eig[0]:.3g}, largest {top:.3g})"
            )
        keep = eig > rcond * top
        rank = int(keep.sum())
        condition = top / float(eig[0]) if eig[0] > 0 else float("inf")
        cov = cls(m, kind, rank=rank, condition=condition)
        if rank == p:
            cov._chol = linalg.cholesky(m, lower=True)
            if condition > 1e8:
                cov.warnings.append(
                    f"covariance condition number {condition:.3g}: χ² along its weakest directions is "
                    "sensitive to small errors in Σ"
                )
            return cov
        if singular == "error":
            raise CovarianceError(
                f"the covariance is singular or ill-conditioned (rank {rank} of {p} at rcond {rcond:g}, "
                f"condition number {condition:.3g}); set singular = 'pinv' to use a pseudo-inverse on the "
                f"supported subspace (dof = rank)"
            )
        cov.pseudo = True
        cov._basis = vec[:, keep] / np.sqrt(eig[keep])
        cov.warnings.append(
            f"covariance of rank {rank} of {p} bins (condition number {condition:.3g}): χ² uses the "
            f"pseudo-inverse on the {rank} supported directions, dof = {rank}; residuals along the other "
            f"{p - rank} are not measured"
        )
        return cov

    # -- measurement

    def raw_chi2(self, residuals: np.ndarray) -> np.ndarray:
        """rᵢᵀ Σ⁻¹ rᵢ per row (no Hartlap factor), through a triangular solve or the pseudo-inverse basis."""
        r = np.asarray(residuals, dtype=np.float64)
        if self._chol is not None:
            z = linalg.solve_triangular(self._chol, r.T, lower=True, check_finite=False)
            return np.einsum("ij,ij->j", z, z)
        assert self._basis is not None
        z = r @ self._basis
        return np.einsum("ij,ij->i", z, z)

    def restricted(self, keep: np.ndarray) -> Covariance:
        """The covariance of the bins in `keep` (a sample whose other bins were masked out)."""
        sub = Covariance._build(
            self.matrix[np.ix_(keep, keep)], self.kind, "pinv" if self.pseudo else "error", 1e-10
        )
        sub.n_realisations = self.n_realisations
        if self.n_realisations is not None:
            sub.hartlap = hartlap_factor(self.n_realisations, int(keep.sum()))
        return sub

    @property
    def dof(self) -> int:
        return self.rank


def hartlap_factor(n_realisations: int, p: int) -> float:
    """(n_s − p − 2)/(n_s − 1): makes h · rᵀΣ̂⁻¹r an unbiased estimate of rᵀΣ⁻¹r's mean (Hartlap et al. 2007)."""
    return (n_realisations - p - 2) / (n_realisations - 1)


def build_covariance(
    data: np.ndarray, kind: str, p: int, singular: str = "error", rcond: float = 1e-10
) -> Covariance:
    """A :class:`Covariance` from a covariance dataset's rows, `kind` resolved by :func:`resolve_kind`."""
    kind = resolve_kind(data, kind, p)
    arr = np.asarray(data, dtype=np.float64)
    if kind == "diagonal":
        errors = arr.reshape(-1)
        if errors.size != p:
            raise CovarianceError(f"{errors.size} per-bin errors for {p} bins")
        return Covariance.from_errors(errors, singular, rcond)
    arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[1] != p:
        raise CovarianceError(f"the covariance data has {arr.shape[1]} bins per row, the outputs have {p}")
    if kind == "full":
        return Covariance.from_matrix(arr, singular, rcond)
    return Covariance.from_realisations(arr, singular, rcond)


def resolve_kind(data: np.ndarray, kind: str, p: int) -> str:
    """``auto``: one row (or a 1-D array) of p values is per-bin errors; a symmetric p×p array is a full matrix;
    any other (n_s, p) array is a set of realisations."""
    if kind != "auto":
        if kind not in COVARIANCE_KINDS:
            raise ValueError(f"covariance_kind must be one of {COVARIANCE_KINDS}")
        return kind
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim == 1 or arr.shape[0] == 1 or (arr.ndim == 2 and arr.shape[1] == 1 and arr.shape[0] == p):
        return "diagonal"
    flat = arr.reshape(arr.shape[0], -1)
    if flat.shape == (p, p) and np.allclose(flat, flat.T, rtol=1e-10, atol=0):
        return "full"
    return "realisations"


# ------------------------------------------------------------------------------------------ statistics


@dataclass
class Chi2Result:
    """Per-sample χ² against one covariance: Hartlap-corrected χ², dof, p-values (χ² or Hotelling F)."""

    chi2: np.ndarray  # h · rᵀΣ̂⁻¹r (= rᵀΣ⁻¹r for a known Σ)
    dof: np.ndarray  # bins measured per sample (p, less masked bins; the rank under a pseudo-inverse)
    p_values: np.ndarray

    @property
    def reduced(self) -> np.ndarray:
        return self.chi2 / self.dof

    @property
    def mean_per_bin(self) -> float:
        """Σ_i χ²_i / Σ_i dof_i: Nadler & To's 1/(N_boxes N_bins) Σ_i χ²_i when no bin is masked."""
        return float(self.chi2.sum() / self.dof.sum())

    def fail_fraction(self, level: float) -> float:
        return float(np.mean(self.p_values < level))


def chi2_per_sample(residuals: np.ndarray, cov: Covariance) -> Chi2Result:
    """χ² of each row of `residuals` (n, p); NaN entries are masked bins (grouped by mask pattern)."""
    r = np.asarray(residuals, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] != cov.p:
        raise ValueError(f"residuals of shape {r.shape} against a covariance of {cov.p} bins")
    n = r.shape[0]
    chi2 = np.empty(n)
    dof = np.empty(n)
    pval = np.empty(n)
    for rows, keep in _mask_groups(np.isfinite(r)):
        if not keep.any():
            raise ValueError(f"{len(rows)} sample(s) have every bin masked")
        sub = cov if keep.all() else cov.restricted(keep)
        raw = sub.raw_chi2(r[rows] if keep.all() else r[np.ix_(rows, keep)])
        chi2[rows] = sub.hartlap * raw
        dof[rows] = sub.dof
        pval[rows] = _p_values(raw, sub)
    return Chi2Result(chi2, dof, pval)


def _mask_groups(finite: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(row indices, bins kept) for each distinct pattern of finite bins. Complete rows — almost always all of
    them — form one group without sorting; the rest are grouped by their packed bit pattern (a 1-D unique, not
    NumPy's much slower row-wise ``unique(axis=0)``)."""
    complete = finite.all(axis=1)
    groups = []
    if complete.any():
        groups.append(
            (np.flatnonzero(complete) if not complete.all() else slice(None), np.ones(finite.shape[1], bool))
        )
    partial = np.flatnonzero(~complete)
    if len(partial):
        packed = np.packbits(finite[partial], axis=1)
        keys = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).reshape(-1)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        for k, row in enumerate(first):
            groups.append((partial[inverse == k], finite[partial[row]]))
    return groups


def _p_values(raw: np.ndarray, cov: Covariance) -> np.ndarray:
    d = cov.dof
    if cov.n_realisations is None:
        return stats.chi2.sf(raw, d)
    n_s = cov.n_realisations
    return stats.f.sf(raw * (n_s - d) / (d * (n_s - 1)), d, n_s - d)


def calibration(p_values: np.ndarray) -> tuple[float, float]:
    """KS test of the p-values against U(0, 1): (statistic, p-value). A calibrated emulator whose residuals are
    the reference's own noise gives uniform p-values; a biased or over-dispersed one piles them up near 0."""
    res = stats.kstest(np.asarray(p_values, dtype=np.float64), "uniform")
    return float(res.statistic), float(res.pvalue)


def pulls(residuals: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """r_ij / σ_j: each bin's residual in units of its own standard deviation (bins stay correlated)."""
    s = np.asarray(sigma, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s > 0, np.asarray(residuals, dtype=np.float64) / s, np.nan)


def pull_summary(pull: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean pull (bias, in σ) and RMS pull (≈ 1 when the scatter is the covariance's), NaN-aware."""
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(pull, axis=0), np.sqrt(np.nanmean(pull**2, axis=0))


def fractional_errors(prediction_linear: np.ndarray, reference_linear: np.ndarray) -> np.ndarray:
    """|prediction / reference − 1| in linear units; NaN where the reference is 0 (undefined)."""
    pred = np.asarray(prediction_linear, dtype=np.float64)
    ref = np.asarray(reference_linear, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ref != 0, np.abs(pred / ref - 1.0), np.nan)


def percentiles(values: np.ndarray, qs: tuple[float, ...] = PERCENTILES) -> tuple[np.ndarray, np.ndarray]:
    """(per-bin percentiles of shape (len(qs), p), overall percentiles (len(qs),)), ignoring NaN."""
    v = np.asarray(values, dtype=np.float64)
    with _quiet():
        return np.nanpercentile(v, qs, axis=0), np.nanpercentile(v, qs)


class _quiet:
    """Silence NumPy's all-NaN-slice RuntimeWarnings: an all-masked bin is reported as NaN on purpose."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
