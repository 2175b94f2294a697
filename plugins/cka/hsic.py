"""Linear CKA from minibatch HSIC: the mathematics of the `cka` probe, free of the CLI and the catalog.

Definitions (Kornblith et al. 2019; Nguyen, Raghu & Kornblith 2021; Song et al. 2012):

* For a batch of m examples and features X (m×p), the linear Gram is K = XXᵀ.
* Unbiased HSIC (m ≥ 4): HSIC₁(K, L) = ⟨U(K), U(L)⟩_F / (m(m−3)) with the U-centring
  U(K)_ij = K̃_ij − r_i/(m−2) − r_j/(m−2) + s/((m−1)(m−2)) for i ≠ j, U(K)_ii = 0,
  where K̃ is K with a zero diagonal, r = K̃1 and s = Σr. This is algebraically the three-term formula
  of Song et al. but has no catastrophic cancellation.
* Biased HSIC: ⟨HKH, HLH⟩_F / (m−1)², H = I − 11ᵀ/m.
* Minibatch CKA: Σ_b HSIC(K_b, L_b) / √(Σ_b HSIC(K_b, K_b) · Σ_b HSIC(L_b, L_b)).

Speed: for L layers, the U-centred Grams of a batch are flattened into the rows of G (L × m²); every
pairwise HSIC of the batch is then the single matrix product G Gᵀ (or G_A G_Bᵀ for two models),
never a Python loop over pairs.

Numerics: features are column-centred within the batch before the Gram (exact: both centrings
annihilate the terms this adds, see the tests) so that a float32 Gram of activations with a large
common offset keeps its precision; centring and every sum are float64; no ε, no clamping. A
non-positive self-HSIC makes that layer's CKA undefined (NaN) and is reported by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from model_audit_probes.cka.choices import ESTIMATORS


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def _checked_gram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(XcXcᵀ, constant) for features x in their own dtype, Xc = x column-centred; `constant` (a 0-d bool
    tensor, on the device) says the centred energy is at the dtype's rounding level of the raw energy."""
    mean = x.mean(dim=0, keepdim=True)
    centred = x - mean
    k = centred @ centred.T
    spread = k.diagonal().sum()
    level = spread + x.shape[0] * (mean * mean).sum()
    resolution = (16 * torch.finfo(x.dtype).eps) ** 2
    return k, ~(spread > resolution * level)


def gram(features: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Linear Gram XXᵀ of one batch, in `dtype`, of the features column-centred first.

    A layer whose centred energy Σ‖x_i − μ‖² is at the dtype's rounding level relative to its raw energy
    Σ‖x_i‖² is constant: its Gram is set to exactly zero. Otherwise the rounding residue of the centring
    would pass for signal and give a dead layer a self-HSIC of ±1e-16 (a sign decided by rounding)
    instead of 0. Checked per layer from the Gram's trace, so it costs no pass over the features.

    A layer that only looks constant at `dtype` (a small spread around a large mean, below float32's
    resolution) is recomputed in float64 and is constant only if float64 cannot resolve it either: the
    result is then the float64 Gram, not a NaN for a layer that does vary.
    """
    flat = _flatten(features)
    k, constant = _checked_gram(flat.to(dtype))
    if dtype != torch.float64 and bool(constant):
        k64, constant64 = _checked_gram(flat.to(torch.float64))
        return k64.mul_((~constant64).to(k64.dtype))
    return k.mul_((~constant).to(k.dtype))


def _centre_(k: torch.Tensor, estimator: str) -> torch.Tensor:
    """Centre a stack of float64 Gram matrices (..., m, m) in place: U-centring or HKH."""
    m = k.shape[-1]
    if estimator == "unbiased":
        if m < 4:
            raise ValueError(f"the unbiased HSIC needs at least 4 examples per batch, got {m}")
        k.diagonal(dim1=-2, dim2=-1).zero_()
        r = k.sum(dim=-1) / (m - 2)  # (..., m): row sums of K̃, scaled
        s = r.sum(dim=-1) / (m - 1)  # (...): Σr/((m−1)(m−2))
        k -= r.unsqueeze(-1)  # two in-place broadcasts: no L·m² temporary
        k -= (r - s[..., None]).unsqueeze(-2)
        k.diagonal(dim1=-2, dim2=-1).zero_()
        return k
    if estimator == "biased":
        if m < 2:
            raise ValueError(f"the biased HSIC needs at least 2 examples per batch, got {m}")
        k -= k.mean(dim=-1, keepdim=True)
        k -= k.mean(dim=-2, keepdim=True)
        return k
    raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")


def center_grams(grams: torch.Tensor, estimator: str = "unbiased") -> torch.Tensor:
    """Centre a stack of Gram matrices (..., m, m): U-centring (unbiased) or HKH (biased), in float64."""
    return _centre_(grams.to(torch.float64, copy=True), estimator)


def hsic_normaliser(m: int, estimator: str = "unbiased") -> float:
    return float(m * (m - 3)) if estimator == "unbiased" else float((m - 1) ** 2)


def centred_gram_rows(
    features: Sequence[torch.Tensor], estimator: str = "unbiased", gram_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The rows of G: each layer's centred Gram flattened, (L, m²) float64 (not yet divided by the normaliser).

    The Grams are written straight into one float64 buffer and centred there, so a batch costs one
    allocation of L·m² doubles whatever the number of layers.
    """
    m = features[0].shape[0]
    for f in features:
        if f.shape[0] != m:
            raise ValueError(f"all layers must hold the same examples: got batch sizes {m} and {f.shape[0]}")
    grams = torch.empty((len(features), m, m), dtype=torch.float64, device=features[0].device)
    for i, f in enumerate(features):
        grams[i].copy_(gram(f, gram_dtype))
    return _centre_(grams, estimator).reshape(len(features), m * m)


def hsic_matrix(
    features_a: Sequence[torch.Tensor],
    features_b: Sequence[torch.Tensor] | None = None,
    estimator: str = "unbiased",
    gram_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSIC of every layer pair of one batch: (cross L_a×L_b, self_a L_a, self_b L_b), float64.

    With one model (features_b None) cross is the symmetric L×L matrix and both self vectors are its diagonal.
    """
    m = features_a[0].shape[0]
    norm = hsic_normaliser(m, estimator)
    ga = centred_gram_rows(features_a, estimator, gram_dtype)
    if features_b is None:
        cross = (ga @ ga.T) / norm
        diag = cross.diagonal().clone()
        return cross, diag, diag
    gb = centred_gram_rows(features_b, estimator, gram_dtype)
    if gb.shape[1] != ga.shape[1]:
        raise ValueError("the two models must see the same examples in the same batch")
    cross = (ga @ gb.T) / norm
    return cross, (ga * ga).sum(dim=1) / norm, (gb * gb).sum(dim=1) / norm


def cka_from_sums(cross: np.ndarray, self_a: np.ndarray, self_b: np.ndarray) -> np.ndarray:
    """CKA matrix from accumulated HSIC sums; NaN where a self-HSIC is not positive (never clamped)."""
    cross = np.asarray(cross, dtype=np.float64)
    sa = np.asarray(self_a, dtype=np.float64)
    sb = np.asarray(self_b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt(np.where(sa > 0, sa, np.nan)[:, None] * np.where(sb > 0, sb, np.nan)[None, :])
        return cross / denom


@dataclass
class MinibatchCKA:
    """Streams batches into HSIC sums; memory is O(L² + L·m²) whatever the number of examples.

    The raw sums are kept (not the ratio) so that accumulators of disjoint shards merge exactly and a
    reader can bootstrap over batches.
    """

    n_a: int
    n_b: int | None = None
    estimator: str = "unbiased"
    gram_dtype: torch.dtype = torch.float32
    cross: np.ndarray = field(init=False)
    self_a: np.ndarray = field(init=False)
    self_b: np.ndarray = field(init=False)
    batches: int = 0
    examples: int = 0

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; expected one of {ESTIMATORS}")
        nb = self.n_a if self.n_b is None else self.n_b
        self.cross = np.zeros((self.n_a, nb))
        self.self_a = np.zeros(self.n_a)
        self.self_b = np.zeros(nb)

    def update(
        self, features_a: Sequence[torch.Tensor], features_b: Sequence[torch.Tensor] | None = None
    ) -> None:
        if (features_b is None) != (self.n_b is None):
            raise ValueError("pass features_b exactly when the accumulator compares two models")
        cross, sa, sb = hsic_matrix(features_a, features_b, self.estimator, self.gram_dtype)
        self.cross += cross.cpu().numpy()
        self.self_a += sa.cpu().numpy()
        self.self_b += sb.cpu().numpy()
        self.batches += 1
        self.examples += int(features_a[0].shape[0])

    def merge(self, other: MinibatchCKA) -> None:
        self.cross += other.cross
        self.self_a += other.self_a
        self.self_b += other.self_b
        self.batches += other.batches
        self.examples += other.examples

    def matrix(self) -> np.ndarray:
        return cka_from_sums(self.cross, self.self_a, self.self_b)


def linear_cka(x: torch.Tensor, y: torch.Tensor, estimator: str = "unbiased") -> float:
    """Full-batch linear CKA of two feature matrices of the same examples (a convenience; float64)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    acc = MinibatchCKA(1, 1, estimator, torch.float64)
    acc.update([x], [y])
    return float(acc.matrix()[0, 0])
