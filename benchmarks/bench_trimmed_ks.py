"""Benchmark of the exact trimmed KS distance d_α and trimming level α̂ (`plugins/trimmed_ks/dalpha.py`).

Why it measures what it measures:

* The unit of work is what the probe asks for, from raw score arrays to a number: one d_α at a given α,
  and α̂ under each threshold rule. Sorting is part of every timing (no baseline gets pre-sorted data).
* Large n (default n = m = 10^6 scores, the size of a test set's worth of logit gaps pooled over seeds):
  our functions, with scipy's plain two-sample KS statistic (`ks_2samp`, i.e. d_0 only) as the yardstick
  of what a single sort-and-scan costs, and a 13-point α grid of our d_α (what a grid search would cost
  with our evaluator) beside the exact α̂.
* Small n (default n = m = 50, 200, 1000), against two independent baselines:
  - the linear programme (HiGHS through `scipy.optimize.linprog`) over cumulative trimming weights, sparse
    (two non-zeros a row), for d_α at one α and for α̂ (minimise L = 1/(1−α) subject to the band): what one
    would write without the closed form. Its answer is also a correctness check (|Δ| columns).
  - a grid search in the style of the authors' released script (Banerjee et al., Sinjini77/RobustKSTest):
    the same 13 α values (0 … 0.45), the eCDFs evaluated point by point in Python, the running extremum
    over prefixes rebuilt by slicing for every point (O(N²)), and α̂ = the first grid α whose d_α passes
    (0.5 if none). It is written here from the closed form, not copied; unlike their script it uses the
    step eCDF of the reference (they interpolate it linearly), so that its d_α can be checked against ours.
    Its α̂ is only as fine as the grid: the "grid α̂" column shows what that costs in accuracy.
* Everything here is single-threaded by design (NumPy sorts and scans, HiGHS's serial simplex), and
  BLAS/OpenMP threads are pinned to 1 before NumPy is imported, so the numbers do not depend on the core
  count. Times are the best of repeated calls (at least --repeats, more while a measurement is short);
  the repeat count is printed. The machine may be shared: the load average before and after is printed.

Run: python benchmarks/bench_trimmed_ks.py   (about a minute on 2 idle cores; --help for the options)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from common import best_time, load_ours  # noqa: E402
from scipy import sparse, stats  # noqa: E402
from scipy.optimize import linprog  # noqa: E402

GRID = (0.0, 0.010, 0.025, 0.050, 0.075, 0.10, 0.150, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45)  # the authors' grid


# --------------------------------------------------------------------------------------------- data


def make_scores(n: int, m: int, contamination: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate (1−c)·N(0,1) + c·N(3,1), reference N(0,1): N(0,1) is a c-trimming of the candidate."""
    rng = np.random.default_rng(seed)
    k = round(contamination * n)
    x = np.concatenate([rng.normal(0.0, 1.0, n - k), rng.normal(3.0, 1.0, k)])
    rng.shuffle(x)
    return x, rng.normal(0.0, 1.0, m)


# --------------------------------------------------------------------------------------------- baselines


def _atoms_and_reference(x: np.ndarray, y: np.ndarray):
    atoms, counts = np.unique(x, return_counts=True)
    ys = np.sort(y)
    f0 = np.searchsorted(ys, atoms, side="right") / ys.size
    f0_left = np.searchsorted(ys, atoms, side="left") / ys.size
    return atoms, counts / x.size, f0, f0_left


def _band_rows(k: int, n_var: int, eps_col: int, eps_coef: np.ndarray | float):
    """Sparse rows ±W_k − e·ε ≤ ±F0(u_k) and ±W_{k−1} − e·ε ≤ ±F0(u_k−), k = 1..K (W_0..W_K are columns)."""
    idx = np.arange(1, k + 1)
    rows, cols, vals = [], [], []
    r = 0
    for col_of_k, sign in ((idx, 1.0), (idx, -1.0), (idx - 1, 1.0), (idx - 1, -1.0)):
        rr = r + np.arange(k)
        rows += [rr, rr]
        cols += [col_of_k, np.full(k, eps_col)]
        vals += [np.full(k, sign), -np.broadcast_to(eps_coef, (k,))]
        r += k
    return r, np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def lp_distance(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """d_α by HiGHS: min ε over cumulative weights W_0 = 0 ≤ … ≤ W_K = 1 with increments ≤ p_k/(1−α)."""
    atoms, p, f0, f0_left = _atoms_and_reference(x, y)
    k = atoms.size
    n_var = k + 2  # W_0..W_K, ε
    r, rows, cols, vals = _band_rows(k, n_var, k + 1, 1.0)
    inc = r + np.arange(k)  # W_k − W_{k−1} ≤ L·p_k
    rows = np.concatenate([rows, inc, inc])
    cols = np.concatenate([cols, np.arange(1, k + 1), np.arange(k)])
    vals = np.concatenate([vals, np.ones(k), -np.ones(k)])
    a_ub = sparse.csr_array((vals, (rows, cols)), shape=(r + k, n_var))
    b_ub = np.concatenate([f0, -f0, f0_left, -f0_left, p / (1.0 - alpha)])
    bounds = [(0.0, 0.0)] + [(0.0, 1.0)] * (k - 1) + [(1.0, 1.0), (0.0, None)]
    # monotonicity (W_{k−1} ≤ W_k) as bounds cannot be said; as rows:
    mono = sparse.csr_array(
        (
            np.concatenate([np.ones(k), -np.ones(k)]),
            (np.r_[np.arange(k), np.arange(k)], np.r_[np.arange(k), np.arange(1, k + 1)]),
        ),
        shape=(k, n_var),
    )
    cost = np.zeros(n_var)
    cost[-1] = 1.0
    res = linprog(
        cost,
        A_ub=sparse.vstack([a_ub, mono]),
        b_ub=np.concatenate([b_ub, np.zeros(k)]),
        bounds=bounds,
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(res.message)
    return float(res.fun)


def lp_alpha_hat(x: np.ndarray, y: np.ndarray, c_const: float, c_slope: float = 0.0) -> float:
    """α̂ by HiGHS: min L s.t. |W − F0| ≤ A + B·L at the atoms and left limits, 0 ≤ W_k − W_{k−1} ≤ p_k·L."""
    atoms, p, f0, f0_left = _atoms_and_reference(x, y)
    k = atoms.size
    n_var = k + 2  # W_0..W_K, L
    r, rows, cols, vals = _band_rows(k, n_var, k + 1, c_slope)
    inc = r + np.arange(k)  # W_k − W_{k−1} − p_k·L ≤ 0
    mono = r + k + np.arange(k)  # W_{k−1} − W_k ≤ 0
    rows = np.concatenate([rows, inc, inc, inc, mono, mono])
    cols = np.concatenate(
        [cols, np.arange(1, k + 1), np.arange(k), np.full(k, k + 1), np.arange(k), np.arange(1, k + 1)]
    )
    vals = np.concatenate([vals, np.ones(k), -np.ones(k), -p, np.ones(k), -np.ones(k)])
    a_ub = sparse.csr_array((vals, (rows, cols)), shape=(r + 2 * k, n_var))
    b_ub = np.concatenate([f0 + c_const, c_const - f0, f0_left + c_const, c_const - f0_left, np.zeros(2 * k)])
    bounds = [(0.0, 0.0)] + [(0.0, 1.0)] * (k - 1) + [(1.0, 1.0), (1.0, None)]
    cost = np.zeros(n_var)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status == 2:
        return 1.0  # out of reach at every α < 1: the same convention as ours
    if res.status != 0:
        raise RuntimeError(res.message)
    return 1.0 - 1.0 / float(res.x[-1])


def naive_distance(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """d_α evaluated naively, in the style of the authors' script: point-by-point eCDFs, O(N²) prefix minima."""
    xs, ys = np.sort(x), np.sort(y)
    pts = np.sort(np.concatenate([xs, ys]))
    big_l = 1.0 / (1.0 - alpha)
    seq = []
    for t in pts:  # the left limit at t, then the value at t
        f_left = np.searchsorted(xs, t, side="left") / xs.size
        f_val = np.searchsorted(xs, t, side="right") / xs.size
        g_left = np.searchsorted(ys, t, side="left") / ys.size
        g_val = np.searchsorted(ys, t, side="right") / ys.size
        seq += [g_left - big_l * f_left, g_val - big_l * f_val]
    size = len(seq)
    t1 = max(seq)
    t2 = max((1.0 - big_l) - v for v in seq)
    prefix_min = [min(seq[: i + 1]) for i in range(size)]
    t3 = 0.5 * max(seq[i] - prefix_min[i] for i in range(size))
    return max(t1, t2, t3)


def grid_alpha_hat(distance: Callable[[float], float], crit: float) -> tuple[float, list[float]]:
    """The authors' rule: the first grid α whose d_α ≤ crit; 0.5 ("≥ 0.5") when none does."""
    ds = [distance(a) for a in GRID]
    passing = [a for a, d in zip(GRID, ds, strict=True) if d <= crit]
    return (passing[0] if passing else 0.5), ds


# --------------------------------------------------------------------------------------------- runs


def fmt(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def run_large(dal, args: argparse.Namespace) -> None:
    n = m = args.large_n
    x, y = make_scores(n, m, args.contamination, args.seed)
    alpha = args.alpha
    print(
        f"\n## n = m = {n:,} (candidate {1 - args.contamination:g}·N(0,1) + {args.contamination:g}·N(3,1), "
        f"reference N(0,1)); from raw arrays, sorting included\n"
    )
    print("| operation | repeats | seconds | result | vs scipy ks_2samp (d_0 only) |")
    print("|---|---:|---:|---|---:|")
    t_ks, r_ks, ks = best_time(lambda: stats.ks_2samp(x, y).statistic, args.repeats)
    rows = [("scipy.stats.ks_2samp (plain KS, d_0)", t_ks, r_ks, f"{ks:.6f}")]
    t, r, d = best_time(lambda: dal.trimmed_ks_distance(x, alpha, y), args.repeats)
    rows.append((f"ours: trimmed_ks_distance at α = {alpha:g}", t, r, f"d = {d:.6f}"))
    t, r, d0 = best_time(lambda: dal.trimmed_ks_distance(x, 0.0, y), args.repeats)
    rows.append(
        ("ours: trimmed_ks_distance at α = 0", t, r, f"d = {d0:.6f} (Δ vs ks_2samp {abs(d0 - ks):.1e})")
    )
    for rule in dal.RULES:
        t, r, a = best_time(lambda rule=rule: dal.alpha_hat(x, rule, y), args.repeats)
        crit = dal.threshold(rule, n, m, alpha=a)
        rows.append((f"ours: alpha_hat, rule {rule}", t, r, f"α̂ = {a:.6f} (c(α̂) = {crit:.5f})"))
    t, r, a = best_time(lambda: dal.alpha_hat(x, "ks_asymptotic", reference_cdf=stats.norm.cdf), args.repeats)
    rows.append(("ours: alpha_hat vs the N(0,1) CDF, ks_asymptotic", t, r, f"α̂ = {a:.6f}"))
    t, r, w = best_time(lambda: dal.optimal_trimming(x, alpha, y), args.repeats)
    rows.append((f"ours: optimal_trimming at α = {alpha:g}", t, r, f"max w·n = {w.max() * n:.4f}"))
    t, r, curve = best_time(lambda: dal.d_alpha_curve(x, GRID, y), args.repeats)
    crit = dal.threshold("authors", n, m)
    g_alpha = next((a for a, d in zip(GRID, curve, strict=True) if d <= crit), 0.5)
    rows.append(
        ("ours: d_alpha_curve on the 13-point grid (grid α̂, authors' rule)", t, r, f"grid α̂ = {g_alpha:g}")
    )
    t_p, r_p, prob = best_time(lambda: dal.TrimmedKS(x, y), args.repeats)
    rows.append(
        ("ours: TrimmedKS(x, y) (prepare once: sorts, searches)", t_p, r_p, f"K = {prob.atoms.size:,} atoms")
    )
    t, r, d = best_time(lambda: prob.distance(alpha), args.repeats)
    rows.append(("ours: prepared .distance(α)", t, r, f"d = {d:.6f}"))
    for label, secs, reps, result in rows:
        ratio = f"{secs / t_ks:.2f}× its time" if not label.startswith("scipy") else "—"
        print(f"| {label} | {reps} | {fmt(secs)} | {result} | {ratio} |")


def run_small(dal, args: argparse.Namespace) -> None:
    alpha = args.alpha
    print(
        f"\n## small n = m (candidate {1 - args.small_contamination:g}·N(0,1) + {args.small_contamination:g}·N(3,1)): "
        f"ours against HiGHS and a naive 13-point grid; d_α at α = {alpha:g}, "
        "α̂ with the ks_asymptotic (c) and dkw_conservative (c(α)) rules, and the authors' rule on the grid\n"
    )
    print("| n = m | task | baseline | baseline time | ours | speed-up (baseline/ours) | |Δ| or values |")
    print("|---:|---|---|---:|---:|---:|---|")
    for n in args.n:
        x, y = make_scores(n, n, args.small_contamination, args.seed + n)
        reps = args.repeats
        t_lp, _, d_lp = best_time(lambda x=x, y=y: lp_distance(x, y, alpha), reps)
        t_us, _, d_us = best_time(lambda x=x, y=y: dal.trimmed_ks_distance(x, alpha, y), reps)
        print(
            f"| {n} | d_α | LP (HiGHS) | {fmt(t_lp)} | {fmt(t_us)} | {t_lp / t_us:.0f}× | {abs(d_lp - d_us):.1e} |"
        )
        c = dal.threshold("ks_asymptotic", n, n)
        t_lp, _, a_lp = best_time(lambda x=x, y=y, c=c: lp_alpha_hat(x, y, c), reps)
        t_us, _, a_us = best_time(lambda x=x, y=y: dal.alpha_hat(x, "ks_asymptotic", y), reps)
        print(
            f"| {n} | α̂ (ks_asymptotic) | LP (HiGHS) | {fmt(t_lp)} | {fmt(t_us)} | {t_lp / t_us:.0f}× "
            f"| {abs(a_lp - a_us):.1e} (α̂ = {a_us:.6f}) |"
        )
        ca, cb = dal.threshold_coefficients("dkw_conservative", n, n)
        t_lp, _, a_lp = best_time(lambda x=x, y=y, ca=ca, cb=cb: lp_alpha_hat(x, y, ca, cb), reps)
        t_us, _, a_us = best_time(lambda x=x, y=y: dal.alpha_hat(x, "dkw_conservative", y), reps)
        print(
            f"| {n} | α̂ (dkw_conservative) | LP (HiGHS) | {fmt(t_lp)} | {fmt(t_us)} | {t_lp / t_us:.0f}× "
            f"| {abs(a_lp - a_us):.1e} (α̂ = {a_us:.6f}) |"
        )
        crit = dal.threshold("authors", n, n)
        t_gr, _, (g_alpha, g_ds) = best_time(
            lambda x=x, y=y, crit=crit: grid_alpha_hat(lambda a: naive_distance(x, y, a), crit), 1, 0.0
        )
        t_us, _, a_us = best_time(lambda x=x, y=y: dal.alpha_hat(x, "authors", y), reps)
        ours_ds = dal.d_alpha_curve(x, GRID, y)
        agree = float(np.max(np.abs(np.asarray(g_ds) - ours_ds)))
        print(
            f"| {n} | α̂ (authors' rule) | naive 13-point grid | {fmt(t_gr)} | {fmt(t_us)} | {t_gr / t_us:.0f}× "
            f"| grid α̂ = {g_alpha:g}, exact α̂ = {a_us:.6f}; max |Δd| on the grid {agree:.1e} |"
        )
        t_gv, _, _ = best_time(lambda x=x, y=y: dal.d_alpha_curve(x, GRID, y), reps)
        print(
            f"| {n} | α̂ (authors' rule) | 13-point grid of our d_α | {fmt(t_gv)} | {fmt(t_us)} "
            f"| {t_gv / t_us:.1f}× | same grid α̂ |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--large-n", type=int, default=1_000_000, help="n = m of the large-n timings (0: skip)")
    p.add_argument(
        "--n", type=int, nargs="*", default=[50, 200, 1000], help="n = m of the baseline comparisons"
    )
    p.add_argument("--alpha", type=float, default=0.05, help="the trimming level of the d_α timings")
    p.add_argument("--contamination", type=float, default=0.1, help="share of N(3,1) scores in the candidate")
    p.add_argument(
        "--small-contamination",
        type=float,
        default=0.3,
        help="the same for the small-n comparisons (large enough that α̂ > 0 at n = 50)",
    )
    p.add_argument("--repeats", type=int, default=5, help="at least this many timed calls per measurement")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dal = load_ours("trimmed_ks.dalpha")
    print("# trimmed KS benchmark: exact d_α and α̂ (model-audit) against HiGHS and a naive grid")
    print(
        f"# python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}; "
        f"{os.cpu_count()} CPUs, 1 thread; best of ≥{args.repeats} calls"
    )
    load_before = os.getloadavg()
    if args.large_n:
        run_large(dal, args)
    if args.n:
        run_small(dal, args)
    load_after = os.getloadavg()
    print(
        f"\nload average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)} (this benchmark alone adds 1)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
