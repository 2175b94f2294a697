r"""The exact trimmed Kolmogorov–Smirnov distance d_α and the minimal trimming level α̂.

The mathematics of the ``trimmed_ks`` probe as plain NumPy functions, free of the CLI and the catalog
(del Barrio, Inouzhe & Matrán 2020; Banerjee, Marrinan, Cannon, Chiang & Sarwate, arXiv 2406.08307).

Definitions
-----------
F is the empirical distribution of the candidate scores x_1..x_n (optionally weighted); its atoms are the
distinct values u_1 < … < u_K with masses p_k > 0 and F(u_k) = P_k. F0 is the reference: the empirical
distribution of a second sample (optionally weighted, ties allowed) or a *continuous* CDF. An α-trimming
of F (0 ≤ α < 1) is a distribution G ≪ F with dG/dF ≤ L := 1/(1−α): weights w_k on the atoms of F with
0 ≤ w_k ≤ L·p_k and Σw_k = 1. A trimming never adds mass where F has none (it is not a total-variation
ball). The trimmed KS distance is

    d_α = inf over α-trimmings G of sup_x |G(x) − F0(x)|,

and for a threshold c (a number, or a function of α that does not decrease) α̂ = min{α : d_α ≤ c(α)}.

Closed form (derived here; checked against a linear programme in tests/test_trimmed_ks_math.py)
----------------------------------------------------------------------------------------------
Write W_k = G(u_k) (W_0 = 0, W_K = 1). G is constant on [u_k, u_{k+1}), so |G − F0| ≤ ε everywhere iff
lo_k ≤ W_k ≤ hi_k with lo_k = F0(u_{k+1}−) − ε and hi_k = F0(u_k) + ε — the *left limit* F0(u_{k+1}−)
is the largest value F0 takes on [u_k, u_{k+1}); before u_1 this reads F0(u_1−) ≤ ε and after u_K it
reads 1 − F0(u_K) ≤ ε. The increments obey 0 ≤ W_k − W_{k−1} ≤ L·p_k. This is a system of difference
constraints on a path; it is feasible iff its constraint graph has no negative cycle, and every simple
cycle runs 0 → j (weight hi_j), along the path to k (weight L(P_k − P_j) if j ≤ k, 0 otherwise) and back
(weight −lo_k). The cycles with j > k are never negative because F0 does not decrease, so the band is
feasible iff lo_k − hi_j ≤ L(P_k − P_j) for all j ≤ k. With a(t) = F0(t) − L·F(t) evaluated at every
atom u_k *and* at its left limit u_k− (where F(u_k−) = P_{k−1}), and ordering u_k− before u_k, this is

    d_α = max{ T1, T2, T3 },   T1 = max_t a(t)                       (j = 0: mass needed below t),
                               T2 = max_s (1 − L) − a(s)             (k = K: mass needed above s),
                               T3 = ½ · max_{s ≤ t} [a(t) − a(s)]    (mass available between s and t).

T3 is needed: with x = (0, 10) and F0 the N(5, 1) CDF, T1 and T2 vanish at α = ½ but d_α ≥ ½ for every
α, because G ≪ F cannot put mass where F0 rises. The pairs (s, t) that matter are s = u_j (a value) and
t = u_{k+1}− (a left limit); evaluating a at the other points of the interleaved sequence
u_1−, u_1, u_2−, u_2, … changes none of the three maxima (on [u_k, u_{k+1}) F is constant and F0 does not
decrease, so a is smallest at u_k and largest at u_{k+1}−), so the sequence is a sorted array of length
2K and T3 is one running minimum. For an empirical F0 only its values F0(u_k) and left limits F0(u_k−)
at the atoms of F are needed (two binary searches); a continuous F0 has F0(u−) = F0(u).

Consequences used below:

* d_0 is the KS statistic (at L = 1, T3 ≤ ½(T1 + T2)), and an optimal G is any point between the lowest
  and the highest feasible cumulative weights, both given by the shortest-path form of the constraints.
* Each term is a maximum of functions affine in L with slopes −P_t, −(1 − P_s), −½(P_t − P_s) ≤ 0, so
  d_α is convex, non-increasing and piecewise linear in L = 1/(1−α). Its limit as α → 1 is
  d_1− = max{F0(u_1−), 1 − F0(u_K), ½·max_k [F0(u_{k+1}−) − F0(u_k)]} (the best fit of F0 by any
  distribution on the atoms of F); it is reached at the latest at L = 1/min_k p_k.
* α̂ is therefore exact: Newton's method on the convex, decreasing d(L) − c(L), started at L = 1, solves
  the linear equation of the active affine piece at each step, never overshoots, and stops on the
  segment that holds the root (usually 2–4 steps of O(K) each). A bisection step is interleaved after
  a few Newton steps, so the worst case is O(K log(1/eps)) whatever the number of pieces.

Complexity: one sort of each sample and two binary searches (O((n + m) log(n + m))), then O(K) vector
operations per evaluation of d_α; no Python loop over the points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from model_audit_probes.trimmed_ks.choices import RULES

__all__ = [
    "RULES",
    "TrimmedKS",
    "alpha_hat",
    "d_alpha_curve",
    "d_alpha_limit",
    "optimal_trimming",
    "threshold",
    "trimmed_ks_distance",
]

DEFAULT_LEVEL = {"ks_asymptotic": 0.05, "dkw_conservative": 0.05, "authors": 0.01}

ThresholdSpec = float | str | Callable[[float], float]


# ------------------------------------------------------------------------------------------ thresholds


def ks_constant(level: float) -> float:
    """c(ε): the exact upper-ε quantile of Kolmogorov's limit distribution, P(K > c) = ε with
    P(K > c) = 2 Σ_{k≥1} (−1)^{k−1} exp(−2k²c²) (``scipy.stats.kstwobign``; 1.3581 at 5 %, 1.2238 at 10 %).

    Not the series' first term √(−ln(ε/2)/2), which is close only for small ε: 1.35810 for 1.35810 at 5 %,
    but 0.8326 for 0.8276 at 50 % and 0.6319 for 0.5712 at 90 %."""
    from scipy.stats import kstwobign

    _check_level(level)
    return float(kstwobign.isf(level))


def _check_level(level: float) -> None:
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must lie in (0, 1), got {level!r}")


def _check_sizes(n: float, m: float | None) -> None:
    if not n > 0:
        raise ValueError(f"the candidate sample size n must be positive, got {n!r}")
    if m is not None and not m > 0:
        raise ValueError(f"the reference sample size m must be positive or None, got {m!r}")


def threshold_coefficients(
    rule: str, n: float, m: float | None = None, level: float | None = None
) -> tuple[float, float]:
    """(A, B) such that the critical value of `rule` at trimming level α is c(α) = A + B/(1−α).

    Why linear in L = 1/(1−α): the trimmed statistic is L-Lipschitz in the candidate's CDF and 1-Lipschitz
    in the reference's (a = F0 − L·F), so a bound that is valid at every α scales the candidate's
    sampling error by L; the other rules do not depend on α (B = 0). Keeping the form explicit lets
    `alpha_hat` solve d_α = c(α) exactly on each linear piece. ``m=None`` means a continuous reference.
    """
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; expected one of {', '.join(RULES)}")
    _check_sizes(n, m)
    eps = DEFAULT_LEVEL[rule] if level is None else float(level)
    _check_level(eps)
    if rule == "ks_asymptotic":
        # Two-sample KS at level ε: c(ε)·√((n+m)/(nm)); one-sample (continuous F0): c(ε)/√n.
        scale = math.sqrt(1.0 / n) if m is None else math.sqrt((n + m) / (n * m))
        return ks_constant(eps) * scale, 0.0
    if rule == "dkw_conservative":
        # DKW with Massart's constant, P(sup|F_n − F| > t) ≤ 2·exp(−2nt²), for each sample with ε/2 each
        # (union bound: ln(4/ε)); the candidate's term is multiplied by L = 1/(1−α) (Lipschitz constant).
        # For a continuous reference only the candidate is random: ln(2/ε).
        if m is None:
            return 0.0, math.sqrt(math.log(2.0 / eps) / (2.0 * n))
        return math.sqrt(math.log(4.0 / eps) / (2.0 * m)), math.sqrt(math.log(4.0 / eps) / (2.0 * n))
    # "authors": the rule of the released code of Banerjee et al. (github.com/Sinjini77/RobustKSTest,
    # robustkstest_ray.py, "setting the threshold using two sample DKW inequality"): δ = √(ln(2/ε)/N) + 1/N
    # with ε = 0.01, where N is the size of the reference sample (equal to the candidate's size in their
    # experiments). A continuous reference has no sample size: N = n then.
    size = n if m is None else m
    return math.sqrt(math.log(2.0 / eps) / size) + 1.0 / size, 0.0


def threshold(
    rule: str, n: float, m: float | None = None, level: float | None = None, alpha: float = 0.0
) -> float:
    """The critical value for d_α under a named rule (see `RULES`), for sample sizes n (candidate), m.

    Rules (ε = `level`; defaults 0.05, 0.05, 0.01):

    * ``"ks_asymptotic"``: the plain asymptotic KS critical value c(ε)·√((n+m)/(nm)),
      c(ε) the exact asymptotic Kolmogorov quantile (1.3581 at 5 %); c(ε)/√n for a continuous reference
      (m = None). Ignores α.
    * ``"dkw_conservative"``: a finite-sample bound valid at every n, m and α:
      √(ln(4/ε)/(2n))/(1−α) + √(ln(4/ε)/(2m)) (DKW–Massart for each eCDF at ε/2, the candidate's deviation
      scaled by the Lipschitz constant 1/(1−α) of d_α in F); √(ln(2/ε)/(2n))/(1−α) for a continuous reference.
    * ``"authors"``: √(ln(2/ε)/N) + 1/N with ε = 0.01 and N the reference sample size, as in the authors'
      released script (Sinjini77/RobustKSTest); it ignores α and the candidate's size.
    """
    if not (0.0 <= alpha < 1.0):
        raise ValueError(f"alpha must lie in [0, 1), got {alpha!r}")
    a, b = threshold_coefficients(rule, n, m, level)
    return a + b / (1.0 - alpha)


# ------------------------------------------------------------------------------------------ inputs


def _as_sample(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _as_weights(weights: object, size: int, name: str) -> np.ndarray | None:
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != (size,):
        raise ValueError(f"{name} has {w.size} entries for {size} points")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    if not w.sum() > 0:
        raise ValueError(f"{name} sum to zero")
    return w


def _sorted_with_cumulative(values: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and the cumulative distribution after 0, 1, …, N of them (length N + 1, ends at 1)."""
    if weights is None:
        v = np.sort(values)
        cum = np.arange(v.size + 1, dtype=np.float64) / v.size  # exact i/N
    else:
        order = np.argsort(values, kind="stable")
        v = values[order]
        cum = np.concatenate(([0.0], np.cumsum(weights[order])))
        cum /= cum[-1]
    cum[-1] = 1.0
    return v, cum


def _effective_size(size: int, weights: np.ndarray | None) -> float:
    """Kish's effective sample size (Σw)²/Σw², = N without weights: what the threshold rules scale with."""
    if weights is None:
        return float(size)
    return float(weights.sum() ** 2 / np.sum(weights * weights))


# ------------------------------------------------------------------------------------------ the problem


@dataclass(frozen=True)
class _Threshold:
    """c(L) = A + B·L, or a user function of α (non-decreasing) when `func` is set."""

    a: float = 0.0
    b: float = 0.0
    func: Callable[[float], float] | None = None

    def at(self, big_l: float) -> float:
        if self.func is not None:
            return float(self.func(1.0 - 1.0 / big_l))
        return self.a + self.b * big_l

    def solve_piece(self, icpt: float, slope: float, lo: float, hi: float) -> float:
        """The root of icpt − slope·L = c(L) (slope ≥ 0) on [lo, hi]; inf where there is none."""
        if self.func is None:
            denom = slope + self.b
            return math.inf if denom <= 0.0 else (icpt - self.a) / denom
        g = lambda big_l: icpt - slope * big_l - self.at(big_l)  # noqa: E731
        if g(hi) > 0.0:
            return math.inf
        if g(lo) <= 0.0:
            return lo
        return brentq(g, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=200)


class TrimmedKS:
    """The sorted problem (F, F0) prepared once; d_α, α̂, the optimal trimming and curves from it.

    Preparing costs the sorts and binary searches; each later evaluation of d_α is O(K) vector work, so a
    probe that asks for d_α at several α, α̂ under several rules and a curve pays for the sorting once.
    """

    def __init__(
        self,
        x: object,
        reference: object | None = None,
        *,
        reference_cdf: Callable[[np.ndarray], np.ndarray] | None = None,
        x_weights: object | None = None,
        reference_weights: object | None = None,
    ) -> None:
        if (reference is None) == (reference_cdf is None):
            raise ValueError(
                "give exactly one of `reference` (a sample) and `reference_cdf` (a continuous CDF)"
            )
        xs = _as_sample(x, "x")
        xw = _as_weights(x_weights, xs.size, "x_weights")
        if xw is not None:  # a point of zero weight is not an atom of F: no trimming may put mass there
            keep = xw > 0
            xs, xw = xs[keep], xw[keep]
        self.n_eff = _effective_size(xs.size, xw)
        v, cum = _sorted_with_cumulative(xs, xw)
        first = np.empty(v.size, dtype=bool)
        first[0] = True
        np.not_equal(v[1:], v[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        ends = np.append(starts[1:], v.size)
        self.atoms = v[starts]
        p_upto = cum[ends]  # P_k = F(u_k)
        p_before = cum[starts]  # P_{k−1} = F(u_k−)
        self.masses = p_upto - p_before
        if reference_cdf is not None:
            f0 = np.asarray(reference_cdf(self.atoms), dtype=np.float64)
            if f0.shape != self.atoms.shape or not np.all(np.isfinite(f0)):
                raise ValueError(
                    "reference_cdf must map an array of points to finite values of the same shape"
                )
            if np.any(np.diff(f0) < 0):
                raise ValueError("reference_cdf is not non-decreasing")
            f0 = np.clip(f0, 0.0, 1.0)
            f0_before = f0  # continuous: the left limit is the value
            self.m_eff: float | None = None
        else:
            ys = _as_sample(reference, "reference")
            yw = _as_weights(reference_weights, ys.size, "reference_weights")
            self.m_eff = _effective_size(ys.size, yw)
            yv, ycum = _sorted_with_cumulative(ys, yw)
            f0 = ycum[np.searchsorted(yv, self.atoms, side="right")]  # F0(u_k)
            f0_before = ycum[np.searchsorted(yv, self.atoms, side="left")]  # F0(u_k−)
        k = self.atoms.size
        # The interleaved sequence u_1−, u_1, u_2−, u_2, …: F and F0 at each point.
        self._f = np.empty(2 * k)
        self._f[0::2] = p_before
        self._f[1::2] = p_upto
        self._f0 = np.empty(2 * k)
        self._f0[0::2] = f0_before
        self._f0[1::2] = f0
        # Past L_max every affine piece with a slope is ≤ 0 (its slope is at least min_k p_k in size and its
        # intercept at most 1), so d = lim d_α from there on; the margin covers rounding in the P_k.
        self._l_max = (1.0 + 1e-9) / float(self.masses.min())

    # ---------------------------------------------------------------- d as a function of L = 1/(1−α)

    def _terms(self, big_l: float) -> tuple[np.ndarray, float, int, float, int, float, int]:
        a = self._f0 - big_l * self._f
        i1 = int(np.argmax(a))
        rise = a - np.minimum.accumulate(a)
        i3 = int(np.argmax(rise))
        i2 = int(np.argmin(a))  # T2 = (1 − L) − min a
        return a, float(a[i1]), i1, (1.0 - big_l) - float(a[i2]), i2, 0.5 * float(rise[i3]), i3

    def _d_at(self, big_l: float) -> float:
        if big_l >= self._l_max:  # exact there, and free of the cancellation in F0 − L·F at huge L
            return self.limit()
        _, t1, _, t2, _, t3, _ = self._terms(big_l)
        return max(t1, t2, t3)

    def _active_piece(self, big_l: float) -> tuple[float, float, float]:
        """d(L) and one affine piece icpt − slope·L of the max that attains it (any one will do)."""
        a, t1, i1, t2, i2, t3, i3 = self._terms(big_l)
        f, f0 = self._f, self._f0
        d = max(t1, t2, t3)
        if t1 == d:
            return d, float(f0[i1]), float(f[i1])
        if t2 == d:
            return d, 1.0 - float(f0[i2]), 1.0 - float(f[i2])
        s = int(np.argmin(a[: i3 + 1]))
        return d, 0.5 * float(f0[i3] - f0[s]), 0.5 * float(f[i3] - f[s])

    @staticmethod
    def _check_alpha(alpha: float) -> float:
        alpha = float(alpha)
        if not (0.0 <= alpha < 1.0):
            raise ValueError(f"alpha must lie in [0, 1), got {alpha!r}")
        return alpha

    # ---------------------------------------------------------------- public

    def distance(self, alpha: float) -> float:
        """d_α (see the module docstring): three maxima over the interleaved sequence, O(K)."""
        return self._d_at(1.0 / (1.0 - self._check_alpha(alpha)))

    def limit(self) -> float:
        """lim_{α→1} d_α: how well any distribution on the atoms of F can fit F0; α̂ exists iff c reaches it."""
        f0 = self._f0
        gaps = f0[2::2] - f0[1:-1:2]  # F0(u_{k+1}−) − F0(u_k)
        inner = 0.5 * float(gaps.max()) if gaps.size else 0.0
        return max(float(f0[0]), 1.0 - float(f0[-1]), inner)

    def curve(self, alphas: Sequence[float] | np.ndarray, chunk_elements: int = 1 << 22) -> np.ndarray:
        """d_α at every α of `alphas`, broadcast over blocks of α (memory ≤ `chunk_elements` floats a block)."""
        al = np.asarray(alphas, dtype=np.float64)
        flat = al.ravel()
        if np.any(~np.isfinite(flat)) or np.any(flat < 0) or np.any(flat >= 1):
            raise ValueError("every alpha must lie in [0, 1)")
        big_l = 1.0 / (1.0 - flat)
        out = np.empty(flat.size)
        rows = max(1, chunk_elements // self._f.size)
        for start in range(0, flat.size, rows):
            ls = big_l[start : start + rows, None]
            a = self._f0[None, :] - ls * self._f[None, :]
            t1 = a.max(axis=1)
            t2 = (1.0 - ls[:, 0]) - a.min(axis=1)
            t3 = 0.5 * (a - np.minimum.accumulate(a, axis=1)).max(axis=1)
            out[start : start + rows] = np.maximum(np.maximum(t1, t2), t3)
        out[big_l >= self._l_max] = self.limit()
        return out.reshape(al.shape)

    def trimming(self, alpha: float) -> np.ndarray:
        """Optimal trimming weights per input point of `x` (sum 1, w_i ≤ x_weight_i/(1−α)) achieving d_α.

        Built from the two extreme feasible cumulative weights at ε = d_α (shortest paths of the difference
        constraints): highest W_k = min(min_{j≥k} hi_j, L·P_k + min_{j≤k}(hi_j − L·P_j)) and lowest
        W_k = max(max_{j≤k} lo_j, L·P_k + max_{j≥k}(lo_j − L·P_j)); the band is convex, so their midpoint is
        feasible too and is returned (it keeps a margin from both sides when the optimum is not unique).
        Weights are per atom; tied input points share their atom's weight in proportion to their own.
        """
        big_l = 1.0 / (1.0 - self._check_alpha(alpha))
        eps = self._d_at(big_l)
        f0 = self._f0
        k = self.atoms.size
        cum_l = big_l * self._f[1::2]  # L·P_k, k = 1..K
        cum_l = np.concatenate(([0.0], cum_l))  # k = 0..K
        hi = np.concatenate(([0.0], f0[1::2][:-1] + eps, [1.0]))  # node K: W_K = 1
        lo = np.concatenate(([0.0], f0[2::2] - eps, [1.0]))  # lo_k = F0(u_{k+1}−) − ε
        high = np.minimum(np.minimum.accumulate(hi[::-1])[::-1], cum_l + np.minimum.accumulate(hi - cum_l))
        low = np.maximum(np.maximum.accumulate(lo), cum_l + np.maximum.accumulate((lo - cum_l)[::-1])[::-1])
        w_cum = np.clip(0.5 * (high + low), 0.0, 1.0)
        w_cum[0], w_cum[-1] = 0.0, 1.0
        w = np.clip(np.diff(w_cum), 0.0, big_l * self.masses)
        w /= w.sum()
        assert w.size == k
        return w

    def alpha_hat(self, c: _Threshold, if_unreachable: float = 1.0) -> float:
        """min{α : d_α ≤ c(α)} by Newton steps on the active linear piece, with bisection as a safeguard.

        Invariant: D(L) = d(L) − c(L) > 0 at `lo` and ≤ 0 at `hi`. The active piece at `lo` lies below d
        everywhere and c does not decrease, so the root of (piece − c) is in (lo, L*]: a Newton step never
        overshoots, and when it lands where D ≤ 0 it has landed on L* itself.
        """
        lo = 1.0
        d, icpt, slope = self._active_piece(lo)
        if d <= c.at(lo):
            return 0.0
        d_lim = self.limit()
        hi = self._l_max  # d(hi) = d_lim
        l_cap = 2.0**52  # beyond it 1 − 1/L rounds to 1
        if d_lim > c.at(hi):  # d is constant from here on: only a growing c can still reach it
            if c.func is None:
                if c.b <= 0.0:
                    return if_unreachable
                hi = max(hi, (d_lim - c.a) / c.b * (1.0 + 1e-12))
            while d_lim > c.at(hi) and hi < l_cap:
                hi = min(4.0 * hi, l_cap)
            if d_lim > c.at(hi):
                return if_unreachable
        for step in range(200):
            nxt = c.solve_piece(icpt, slope, lo, hi)
            if nxt <= lo:
                return 1.0 - 1.0 / lo  # lo solves the active piece up to rounding: D(lo) ≈ 0
            if math.isfinite(nxt) and nxt <= hi:
                d, i_nxt, s_nxt = self._active_piece(nxt)
                if d <= c.at(nxt):
                    return 1.0 - 1.0 / nxt
                lo, icpt, slope = nxt, i_nxt, s_nxt
            if step >= 3 or not (math.isfinite(nxt) and nxt <= hi):  # safeguard: a bisection step as well
                mid = math.sqrt(lo * hi)
                d, i_mid, s_mid = self._active_piece(mid)
                if d <= c.at(mid):
                    hi = mid
                else:
                    lo, icpt, slope = mid, i_mid, s_mid
            if self._converged(lo, hi):
                break
        return 1.0 - 1.0 / hi

    @staticmethod
    def _converged(lo: float, hi: float) -> bool:
        return hi - lo <= 4 * np.finfo(float).eps * hi


# ------------------------------------------------------------------------------------------ functions


def _problem(x, reference, reference_cdf, x_weights, reference_weights) -> TrimmedKS:
    return TrimmedKS(
        x, reference, reference_cdf=reference_cdf, x_weights=x_weights, reference_weights=reference_weights
    )


def trimmed_ks_distance(
    x: object,
    alpha: float,
    reference: object | None = None,
    *,
    reference_cdf: Callable[[np.ndarray], np.ndarray] | None = None,
    x_weights: object | None = None,
    reference_weights: object | None = None,
) -> float:
    """d_α = inf over α-trimmings G of F (the eCDF of `x`) of sup_x |G − F0|, exactly.

    F0 is the eCDF of `reference` (ties and weights allowed) or `reference_cdf`, a continuous CDF (a
    callable on arrays, e.g. ``scipy.stats.norm.cdf``; its left limits are taken equal to its values).
    α = 0 gives the KS statistic. Cost: O((n + m) log(n + m)).
    """
    return _problem(x, reference, reference_cdf, x_weights, reference_weights).distance(alpha)


def optimal_trimming(
    x: object,
    alpha: float,
    reference: object | None = None,
    *,
    reference_cdf: Callable[[np.ndarray], np.ndarray] | None = None,
    x_weights: object | None = None,
    reference_weights: object | None = None,
) -> np.ndarray:
    """Weights on the points of `x` (in their input order) of an α-trimming G that achieves d_α.

    w_i ≥ 0, Σw_i = 1, w_i ≤ p_i/(1−α) with p_i the normalised weight of x_i (1/n without weights), and
    sup |G − F0| = d_α for G(t) = Σ_{x_i ≤ t} w_i. Useful to see *which* scores the trimming discards.
    """
    prob = _problem(x, reference, reference_cdf, x_weights, reference_weights)
    w_atom = prob.trimming(alpha)
    xs = np.asarray(x, dtype=np.float64).ravel()
    own = np.ones(xs.size) if x_weights is None else np.asarray(x_weights, dtype=np.float64).ravel()
    idx = np.searchsorted(prob.atoms, xs)
    idx = np.minimum(idx, prob.atoms.size - 1)
    on_atom = own > 0
    share = np.zeros(xs.size)
    atom_total = np.bincount(idx[on_atom], weights=own[on_atom], minlength=prob.atoms.size)
    share[on_atom] = own[on_atom] / atom_total[idx[on_atom]]
    return w_atom[idx] * share


def d_alpha_curve(
    x: object,
    alphas: Sequence[float] | np.ndarray,
    reference: object | None = None,
    *,
    reference_cdf: Callable[[np.ndarray], np.ndarray] | None = None,
    x_weights: object | None = None,
    reference_weights: object | None = None,
) -> np.ndarray:
    """d_α for every α of `alphas` (same shape), sorting once: for plots of d_α against α."""
    return _problem(x, reference, reference_cdf, x_weights, reference_weights).curve(alphas)


def d_alpha_limit(
    x: object,
    reference: object | None = None,
    *,
    reference_cdf: Callable[[np.ndarray], np.ndarray] | None = None,
    x_weights: object | None = None,
    reference_weights: object | None = None,
) -> float:
    """lim_{α→1} d_α: max{F0(u_1−), 1 − F0(u_K), ½ max_k [F0(u_{k+1}−) − F0(u_k)]} over the atoms u of F.

    It is not 0 in general: a trimming only reweights the candidate's own scores, so a reference that has
    mass where the candidate has none stays out of reach at any α < 1.
    """
    return _problem(x, reference, reference_cdf, x_weights, reference_weights).limit()


def alpha_hat(
    x: object,
    threshold: ThresholdSpec,
    reference: object | None = None,
    *,
    reference_cdf: Callable[[np.ndarray], np.ndarray] | None = None,
    x_weights: object | None = None,
    reference_weights: object | None = None,
    level: float | None = None,
    if_unreachable: float = 1.0,
) -> float:
    """The exact smallest trimming level α with d_α ≤ c(α): how much of the candidate must be discarded
    before it is indistinguishable from the reference at the threshold's resolution.

    `threshold` is a number c, a rule name of `RULES` (sizes from the samples: Kish's effective size for
    weighted samples, m = None for `reference_cdf`; `level` is its ε) or a function c(α) that does not
    decrease. Returns 0.0 when d_0 ≤ c(0). When no α < 1 reaches it — c stays below lim_{α→1} d_α
    (`d_alpha_limit`), i.e. the reference has mass where the candidate has none — returns `if_unreachable`
    (1.0 by default: "everything would have to go", which sorts after every reachable value and fails any
    gate of the form α̂ ≤ a; pass ``math.nan`` to keep such cases apart). The result satisfies
    d_α̂ = c(α̂) up to rounding whenever α̂ > 0 (d_α is continuous in α).
    """
    prob = _problem(x, reference, reference_cdf, x_weights, reference_weights)
    if isinstance(threshold, str):
        a, b = threshold_coefficients(threshold, prob.n_eff, prob.m_eff, level)
        c = _Threshold(a, b)
    elif callable(threshold):
        c = _Threshold(func=threshold)
    else:
        value = float(threshold)
        if not (value >= 0.0 and math.isfinite(value)):
            raise ValueError(f"threshold must be a finite number ≥ 0, got {threshold!r}")
        c = _Threshold(value, 0.0)
    return prob.alpha_hat(c, if_unreachable)
