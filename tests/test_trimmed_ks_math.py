"""The trimmed KS mathematics against independent references: linear programmes, scipy's KS, hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linprog

from model_audit_probes.trimmed_ks.dalpha import (
    RULES,
    TrimmedKS,
    alpha_hat,
    d_alpha_curve,
    d_alpha_limit,
    optimal_trimming,
    threshold,
    threshold_coefficients,
    trimmed_ks_distance,
)

LP_OPTIONS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}

# ----------------------------------------------------------------- independent references (brute force + LP)


def _atoms(x, w=None):
    """Distinct values of x and their normalised masses, by brute force."""
    x = np.asarray(x, float)
    w = np.ones(x.size) if w is None else np.asarray(w, float)
    atoms = np.unique(x[w > 0])
    mass = np.array([w[x == u].sum() for u in atoms]) / w.sum()
    return atoms, mass


def _band(x, xw, y, yw, cdf):
    """Rows M (G at the evaluation points = M @ w) and F0 there, for every point where |G − F0| can peak.

    Two step functions (empirical F0): their difference is constant between consecutive pooled points, so
    the values at the pooled points and the left limits there cover every x. Continuous F0: between atoms
    of F, G is constant and F0 sweeps [F0(u_k), F0(u_{k+1})], so the values and left limits at the atoms.
    """
    atoms, p = _atoms(x, xw)
    if cdf is not None:
        pts = atoms
        f0_val = cdf(pts)
        f0_left = f0_val
    else:
        y = np.asarray(y, float)
        yw = np.ones(y.size) if yw is None else np.asarray(yw, float)
        pts = np.unique(np.concatenate([atoms, y]))
        f0_val = np.array([yw[y <= z].sum() for z in pts]) / yw.sum()
        f0_left = np.array([yw[y < z].sum() for z in pts]) / yw.sum()
    m_val = (atoms[None, :] <= pts[:, None]).astype(float)
    m_left = (atoms[None, :] < pts[:, None]).astype(float)
    return atoms, p, np.vstack([m_val, m_left]), np.concatenate([f0_val, f0_left])


def lp_distance(x, alpha, y=None, cdf=None, xw=None, yw=None):
    """min ε s.t. |Σ_{u_k ≤ z} w_k − F0(z)| ≤ ε at every evaluation point, 0 ≤ w_k ≤ p_k/(1−α), Σw = 1."""
    _, p, mat, f0 = _band(x, xw, y, yw, cdf)
    k = p.size
    a_ub = np.block([[mat, -np.ones((mat.shape[0], 1))], [-mat, -np.ones((mat.shape[0], 1))]])
    b_ub = np.concatenate([f0, -f0])
    a_eq = np.concatenate([np.ones(k), [0.0]])[None, :]
    bounds = [(0.0, pk / (1.0 - alpha)) for pk in p] + [(0.0, None)]
    cost = np.zeros(k + 1)
    cost[-1] = 1.0
    res = linprog(
        cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0], bounds=bounds, method="highs", options=LP_OPTIONS
    )
    assert res.status == 0, res.message
    return res.fun


def lp_alpha_hat(x, c_const, c_slope=0.0, y=None, cdf=None, xw=None, yw=None):
    """min L s.t. |G − F0| ≤ A + B·L, 0 ≤ w_k ≤ p_k·L, Σw = 1 (L ≥ 1); α̂ = 1 − 1/L, nan if infeasible."""
    _, p, mat, f0 = _band(x, xw, y, yw, cdf)
    k = p.size
    rows = mat.shape[0]
    a_ub = np.block(
        [
            [mat, -c_slope * np.ones((rows, 1))],
            [-mat, -c_slope * np.ones((rows, 1))],
            [np.eye(k), -p[:, None]],
        ]
    )
    b_ub = np.concatenate([f0 + c_const, c_const - f0, np.zeros(k)])
    a_eq = np.concatenate([np.ones(k), [0.0]])[None, :]
    cost = np.zeros(k + 1)
    cost[-1] = 1.0
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=[1.0],
        bounds=[(0, None)] * k + [(1.0, None)],
        method="highs",
        options=LP_OPTIONS,
    )
    if res.status == 2:
        return math.nan
    assert res.status == 0, res.message
    return 1.0 - 1.0 / res.x[-1]


def sup_gap(x, w, y=None, cdf=None, yw=None):
    """sup_t |G(t) − F0(t)| for G = Σ w_i δ_{x_i}, by brute force at every point and left limit."""
    x = np.asarray(x, float)
    if cdf is not None:
        pts = np.unique(x)
        f0_val = f0_left = cdf(pts)
    else:
        y = np.asarray(y, float)
        yw = np.ones(y.size) if yw is None else np.asarray(yw, float)
        pts = np.unique(np.concatenate([x, y]))
        f0_val = np.array([yw[y <= z].sum() for z in pts]) / yw.sum()
        f0_left = np.array([yw[y < z].sum() for z in pts]) / yw.sum()
    g_val = np.array([w[x <= z].sum() for z in pts])
    g_left = np.array([w[x < z].sum() for z in pts])
    return max(np.abs(g_val - f0_val).max(), np.abs(g_left - f0_left).max())


def random_case(rng: np.random.Generator, kind: str) -> dict:
    """A small random problem of one family: continuous F0, tied integer samples, weights, real samples."""
    n = int(rng.integers(1, 16))
    m = int(rng.integers(1, 16))
    if kind == "continuous":
        x = rng.normal(rng.uniform(-1, 1), rng.uniform(0.5, 2), n)
        shift = rng.uniform(-1, 1)
        return {"x": x, "cdf": lambda t, s=shift: stats.norm.cdf(t, loc=s)}
    if kind == "ties":
        return {"x": rng.integers(0, 6, n).astype(float), "y": rng.integers(0, 6, m).astype(float)}
    if kind == "weights":
        x = rng.integers(0, 8, n).astype(float)
        xw = rng.uniform(0, 1, n) * (rng.uniform(size=n) > 0.2)
        xw[rng.integers(n)] += 0.5  # at least one positive weight
        y = rng.integers(0, 8, m).astype(float)
        yw = rng.uniform(0.1, 1, m)
        return {"x": x, "y": y, "xw": xw, "yw": yw}
    x = rng.normal(0, 1, n)
    y = np.concatenate([rng.normal(0, 1, m), x[: int(rng.integers(0, n + 1))]])  # shared values: pooled ties
    return {"x": x, "y": y}


def ours(case, alpha):
    return trimmed_ks_distance(
        case["x"],
        alpha,
        case.get("y"),
        reference_cdf=case.get("cdf"),
        x_weights=case.get("xw"),
        reference_weights=case.get("yw"),
    )


def random_alpha(rng):
    return float(rng.choice([0.0, rng.uniform(0, 0.3), rng.uniform(0, 0.95)]))


# ----------------------------------------------------------------- d_α against the LP


@pytest.mark.parametrize("kind", ["continuous", "ties", "weights", "real"])
def test_distance_matches_linear_programme(kind):
    rng = np.random.default_rng(["continuous", "ties", "weights", "real"].index(kind))
    worst = 0.0
    for case_no in range(100):
        case = random_case(rng, kind)
        alpha = random_alpha(rng)
        ref = lp_distance(case["x"], alpha, case.get("y"), case.get("cdf"), case.get("xw"), case.get("yw"))
        got = ours(case, alpha)
        worst = max(worst, abs(got - ref))
        assert got == pytest.approx(ref, abs=1e-9), (kind, case_no, alpha, case)
    assert worst < 1e-9


def test_between_atoms_term_is_needed():
    """x = (0, 10) against N(5, 1): G can only sit on 0 and 10, so d_α ≥ ½ at every α (LP agrees)."""
    cdf = lambda t: stats.norm.cdf(t, loc=5)  # noqa: E731
    for alpha in (0.0, 0.3, 0.5, 0.9):
        got = trimmed_ks_distance([0.0, 10.0], alpha, reference_cdf=cdf)
        assert got == pytest.approx(lp_distance([0.0, 10.0], alpha, cdf=cdf), abs=1e-12)
        assert got >= 0.5 - 1e-6
    assert d_alpha_limit([0.0, 10.0], reference_cdf=cdf) == pytest.approx(0.5 * (cdf(10) - cdf(0)))


def test_hand_checkable_case():
    """x = 1..4 against eCDF(1, 2, 3): trimming the 4 away needs α = 1/4; d_α = max(0, (1/4 − α)/(1 − α))."""
    for alpha in np.linspace(0, 0.9, 37):
        expect = max(0.0, (0.25 - alpha) / (1 - alpha))
        assert trimmed_ks_distance([1, 2, 3, 4], alpha, [1, 2, 3]) == pytest.approx(expect, abs=1e-14)
    w = optimal_trimming([1, 2, 3, 4], 0.25, [1, 2, 3])
    np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-14)
    assert alpha_hat([1, 2, 3, 4], 0.0, [1, 2, 3]) == pytest.approx(0.25, abs=1e-14)
    assert alpha_hat([4, 3, 2, 1], 0.1, [1, 2, 3]) == pytest.approx((0.25 - 0.1) / 0.9, abs=1e-14)


def test_d0_is_the_ks_statistic():
    rng = np.random.default_rng(10)
    for _ in range(60):
        n, m = rng.integers(1, 300, 2)
        if rng.uniform() < 0.5:
            x, y = rng.integers(0, 10, n).astype(float), rng.integers(0, 12, m).astype(float)
        else:
            x, y = rng.normal(0, 1, n), rng.normal(rng.uniform(-1, 1), 1, m)
        assert trimmed_ks_distance(x, 0.0, y) == pytest.approx(stats.ks_2samp(x, y).statistic, abs=1e-14)
        loc = rng.uniform(-1, 1)
        cdf = lambda t, loc=loc: stats.norm.cdf(t, loc=loc)  # noqa: E731
        one = stats.kstest(x, cdf).statistic
        assert trimmed_ks_distance(x, 0.0, reference_cdf=cdf) == pytest.approx(one, abs=1e-14)


def test_integer_weights_equal_repeated_points():
    rng = np.random.default_rng(11)
    for _ in range(30):
        x, y = rng.normal(0, 1, 12), rng.normal(0.3, 1, 9)
        cx, cy = rng.integers(0, 4, 12), rng.integers(1, 4, 9)
        cx[0] = max(cx[0], 1)
        alpha = random_alpha(rng)
        weighted = trimmed_ks_distance(x, alpha, y, x_weights=cx, reference_weights=cy)
        repeated = trimmed_ks_distance(np.repeat(x, cx), alpha, np.repeat(y, cy))
        assert weighted == pytest.approx(repeated, abs=1e-13)


# ----------------------------------------------------------------- shape in α


def test_monotone_convex_piecewise_linear_in_L():
    rng = np.random.default_rng(12)
    for trial in range(20):
        x = rng.normal(0, 1, 25)
        y = rng.normal(0.7, 1.3, 30)
        big_l = np.linspace(1.0, 6.0, 4001)
        d = d_alpha_curve(x, 1 - 1 / big_l, y)
        assert np.all(np.diff(d) <= 1e-14), trial  # non-increasing in L, so in α
        second = d[2:] - 2 * d[1:-1] + d[:-2]
        assert second.min() >= -1e-13, trial  # convex in L
        kinks = np.count_nonzero(np.abs(second) > 1e-12)
        assert kinks <= 60, (trial, kinks)  # linear but at the few breakpoints (4001-point grid)
        # and the curve is not a single line: it does bend
        assert kinks >= 1 or d[-1] == d[0]


def test_curve_equals_pointwise_and_limit():
    rng = np.random.default_rng(13)
    x, y = rng.integers(0, 20, 40).astype(float), rng.integers(5, 25, 30).astype(float)
    alphas = np.array([[0.0, 0.1], [0.5, 0.97]])
    curve = d_alpha_curve(x, alphas, y)
    assert curve.shape == alphas.shape
    for a, d in zip(alphas.ravel(), curve.ravel(), strict=True):
        assert d == trimmed_ks_distance(x, a, y)
    lim = d_alpha_limit(x, y)
    assert lim > 0  # the reference has mass on 20..24 where the candidate has none
    assert d_alpha_curve(x, [1 - 1e-9], y)[0] == pytest.approx(lim, abs=1e-12)
    assert trimmed_ks_distance(x, 0.99, y) == pytest.approx(lim, abs=1e-12)  # L = 100 > 1/min p = 40
    assert lp_distance(x, 0.99, y) == pytest.approx(lim, abs=1e-9)
    assert trimmed_ks_distance(x, 0.0, y) > lim + 0.01


# ----------------------------------------------------------------- optimal trimming


@pytest.mark.parametrize("kind", ["continuous", "ties", "weights", "real"])
def test_optimal_trimming_is_feasible_and_optimal(kind):
    rng = np.random.default_rng(20 + ["continuous", "ties", "weights", "real"].index(kind))
    for case_no in range(50):
        case = random_case(rng, kind)
        alpha = random_alpha(rng)
        x = case["x"]
        w = optimal_trimming(
            x,
            alpha,
            case.get("y"),
            reference_cdf=case.get("cdf"),
            x_weights=case.get("xw"),
            reference_weights=case.get("yw"),
        )
        p = np.ones(x.size) if case.get("xw") is None else case["xw"]
        p = p / p.sum()
        assert w.shape == x.shape
        assert np.all(w >= 0)
        assert w.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(w <= p / (1 - alpha) * (1 + 1e-12) + 1e-15), (kind, case_no)
        gap = sup_gap(x, w, case.get("y"), case.get("cdf"), case.get("yw"))
        assert gap == pytest.approx(ours(case, alpha), abs=1e-9), (kind, case_no, alpha)


# ----------------------------------------------------------------- α̂


@pytest.mark.parametrize("kind", ["continuous", "ties", "weights", "real"])
def test_alpha_hat_matches_lp_and_is_tight(kind):
    rng = np.random.default_rng(30 + ["continuous", "ties", "weights", "real"].index(kind))
    checked = 0
    for case_no in range(80):
        case = random_case(rng, kind)
        prob = TrimmedKS(
            case["x"],
            case.get("y"),
            reference_cdf=case.get("cdf"),
            x_weights=case.get("xw"),
            reference_weights=case.get("yw"),
        )
        d0, lim = prob.distance(0.0), prob.limit()
        if d0 - lim < 1e-6:
            continue
        c = lim + rng.uniform(0.01, 0.99) * (d0 - lim)
        slope = float(rng.choice([0.0, rng.uniform(0, 0.05)]))
        thr = c if slope == 0 else (lambda a, c=c, s=slope: c - s + s / (1 - a))  # c(α) = c + s(L − 1)
        got = alpha_hat(
            case["x"],
            thr,
            case.get("y"),
            reference_cdf=case.get("cdf"),
            x_weights=case.get("xw"),
            reference_weights=case.get("yw"),
        )
        ref = lp_alpha_hat(
            case["x"], c - slope, slope, case.get("y"), case.get("cdf"), case.get("xw"), case.get("yw")
        )
        assert got == pytest.approx(ref, abs=1e-9), (kind, case_no)
        c_at = c - slope + slope / (1 - got)
        assert prob.distance(got) == pytest.approx(c_at, abs=1e-9)
        below = got - 1e-6
        assert prob.distance(below) > c - slope + slope / (1 - below)
        checked += 1
    assert checked >= 40


def test_alpha_hat_matches_fine_bisection():
    rng = np.random.default_rng(40)
    for _ in range(20):
        x = np.concatenate([rng.normal(0, 1, 400), rng.normal(3, 1, int(rng.integers(10, 120)))])
        y = rng.normal(0, 1, 500)
        prob = TrimmedKS(x, y)
        c = float(rng.uniform(0.02, 0.08))
        lo, hi = 0.0, 1 - 1e-12
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if prob.distance(mid) <= c else (mid, hi)
        assert alpha_hat(x, c, y) == pytest.approx(hi, abs=1e-9)


def test_alpha_hat_edge_cases():
    cdf = lambda t: stats.norm.cdf(t, loc=5)  # noqa: E731
    assert alpha_hat([0.0, 10.0], 0.1, reference_cdf=cdf) == pytest.approx(
        1.0, abs=1e-15
    )  # out of reach: limit ≈ ½
    assert math.isnan(alpha_hat([0.0, 10.0], 0.1, reference_cdf=cdf, if_unreachable=math.nan))
    assert alpha_hat([0.0, 10.0], 0.6, reference_cdf=cdf) == pytest.approx(0.0, abs=1e-15)
    rng = np.random.default_rng(41)
    x, y = rng.normal(0, 1, 50), rng.normal(0, 1, 60)
    assert alpha_hat(x, 1.0, y) == pytest.approx(0.0, abs=1e-15)
    # a growing threshold always gets there eventually, even from an unreachable limit
    got = alpha_hat([0.0, 10.0], lambda a: 0.1 / (1 - a), reference_cdf=cdf)
    lim = d_alpha_limit([0.0, 10.0], reference_cdf=cdf)
    assert got == pytest.approx(1 - 0.1 / lim, abs=1e-9)


def test_contamination_level_is_recovered():
    """x ~ (1−c)N(0,1) + cN(5,1) against N(0,1): N(0,1) is a c-trimming of the mixture and of no smaller
    α-trimming, so α̂ (at the KS critical value, which shrinks like 1/√n) approaches c from below."""
    c = 0.1
    rng = np.random.default_rng(50)
    reference = rng.normal(0, 1, 200_000)
    errors = {}
    for n in (1_000, 10_000, 100_000):
        k = round(c * n)  # the composition fixed, so that only the within-component noise varies with n
        x = np.concatenate([rng.normal(0, 1, n - k), rng.normal(5, 1, k)])
        to_cdf = alpha_hat(x, "ks_asymptotic", reference_cdf=stats.norm.cdf)
        to_sample = alpha_hat(x, "ks_asymptotic", reference)
        assert to_cdf <= c + 0.01 and to_sample <= c + 0.01
        errors[n] = max(abs(to_cdf - c), abs(to_sample - c))
    assert errors[100_000] < 0.02
    assert errors[100_000] < errors[1_000] / 3


# ----------------------------------------------------------------- thresholds


def test_threshold_rules():
    assert set(RULES) == {"ks_asymptotic", "dkw_conservative", "authors"}
    n, m = 300, 500
    ks = threshold("ks_asymptotic", n, m)  # 5 %: Kolmogorov's limit law quantile
    assert ks == pytest.approx(stats.kstwobign.isf(0.05) * math.sqrt((n + m) / (n * m)), rel=1e-4)
    assert threshold("ks_asymptotic", n, None, 0.01) == pytest.approx(
        stats.kstwobign.isf(0.01) / math.sqrt(n), rel=1e-4
    )
    assert threshold("ks_asymptotic", n, m, alpha=0.4) == pytest.approx(ks, rel=1e-15)  # α plays no part
    dkw = threshold("dkw_conservative", n, m, 0.05, alpha=0.2)
    assert dkw == pytest.approx(math.sqrt(math.log(80) / (2 * n)) / 0.8 + math.sqrt(math.log(80) / (2 * m)))
    assert threshold("authors", n, m) == pytest.approx(math.sqrt(math.log(200) / m) + 1 / m)
    assert threshold("authors", n, None) == pytest.approx(math.sqrt(math.log(200) / n) + 1 / n)
    assert threshold_coefficients("dkw_conservative", n, None)[0] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        threshold("bonferroni", n, m)
    with pytest.raises(ValueError, match="level"):
        threshold("ks_asymptotic", n, m, 1.5)


@pytest.mark.parametrize("level", [0.01, 0.05, 0.5, 0.9])
def test_ks_asymptotic_uses_the_exact_kolmogorov_quantile(level):
    """c(ε) solves 2 Σ (−1)^{k−1} exp(−2k²c²) = ε (the series summed here, independently of scipy); the
    first-term shortcut √(−ln(ε/2)/2) is 0.6 % off at 50 % and 11 % off at 90 %."""
    c = threshold("ks_asymptotic", 1.0, None, level)
    tail = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * c * c) for k in range(1, 200))
    assert tail == pytest.approx(level, rel=1e-9)


def test_dkw_rule_holds_its_level_under_a_trimmed_null():
    """At α = c the trimmed distance between the populations is 0; the conservative critical value at 5 %
    must then be exceeded in (far) fewer than 5 % of samples. The asymptotic one, without the 1/(1−α)
    factor, is a sanity contrast only (not asserted beyond being smaller)."""
    c, n, m, reps = 0.2, 400, 400, 150
    rng = np.random.default_rng(60)
    exceed = 0
    for _ in range(reps):
        k = rng.binomial(n, c)
        x = np.concatenate([rng.normal(0, 1, n - k), rng.normal(4, 1, k)])
        y = rng.normal(0, 1, m)
        exceed += trimmed_ks_distance(x, c, y) > threshold("dkw_conservative", n, m, 0.05, alpha=c)
    assert exceed <= 0.05 * reps
    assert threshold("ks_asymptotic", n, m) < threshold("dkw_conservative", n, m, alpha=c)


def test_rule_name_threshold_is_alpha_dependent_and_exact():
    rng = np.random.default_rng(70)
    x = np.concatenate([rng.normal(0, 1, 900), rng.normal(4, 1, 100)])
    y = rng.normal(0, 1, 800)
    got = alpha_hat(x, "dkw_conservative", y)
    assert 0 < got < 0.1
    assert trimmed_ks_distance(x, got, y) == pytest.approx(
        threshold("dkw_conservative", 1000, 800, alpha=got), abs=1e-12
    )
    via_callable = alpha_hat(x, lambda a: threshold("dkw_conservative", 1000, 800, alpha=a), y)
    assert via_callable == pytest.approx(got, abs=1e-12)
    plain = alpha_hat(x, threshold("ks_asymptotic", 1000, 800), y)
    assert plain == alpha_hat(x, "ks_asymptotic", y)


# ----------------------------------------------------------------- input errors


def test_input_errors():
    with pytest.raises(ValueError, match="exactly one"):
        trimmed_ks_distance([1.0], 0.0)
    with pytest.raises(ValueError, match="exactly one"):
        trimmed_ks_distance([1.0], 0.0, [1.0], reference_cdf=stats.norm.cdf)
    with pytest.raises(ValueError, match="alpha"):
        trimmed_ks_distance([1.0], 1.0, [1.0])
    with pytest.raises(ValueError, match="NaN"):
        trimmed_ks_distance([1.0, math.nan], 0.0, [1.0])
    with pytest.raises(ValueError, match="empty"):
        trimmed_ks_distance([], 0.0, [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        trimmed_ks_distance([1.0, 2.0], 0.0, [1.0], x_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="sum to zero"):
        trimmed_ks_distance([1.0, 2.0], 0.0, [1.0], x_weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="threshold"):
        alpha_hat([1.0], -0.1, [1.0])
