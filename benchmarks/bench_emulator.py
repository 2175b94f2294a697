"""Benchmark of the emulator probe's χ² arithmetic (`plugins/emulator/chi2.py`).

Why it measures what it measures:

* The unit of work is what the probe computes per model × test set: χ² of every sample against one covariance
  (then p-values, the KS calibration test, pulls and fractional-error percentiles). Two sizes: n = 10⁶ boxes ×
  p = 14 bins (Nadler & To's SMF bins, a large emulator validation set) and n = 10⁵ × p = 500 (a power
  spectrum or correlation-function data vector).
* There is no peer library for this (the papers' code computes it inline), so the yardsticks are the two ways
  people write it: the explicit inverse and an einsum over samples (`r @ inv(Σ) * r`), and a Python loop with
  `np.linalg.solve` per sample (timed on a subsample, scaled per sample and labelled as such). The explicit
  inverse's answer is also the correctness check (max relative difference printed).
* BLAS/OpenMP threads are pinned to 1 before NumPy is imported. Times are the best of --repeats calls; the
  machine's load average is printed before and after.

Run: python benchmarks/bench_emulator.py   (about half a minute on 2 idle cores)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from common import load_ours  # noqa: E402


def best(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def problem(n: int, p: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, p))
    sigma = a @ a.T / p + np.diag(0.9 ** np.arange(p)) + 1e-3 * np.eye(p)
    r = rng.standard_normal((n, p)) @ np.linalg.cholesky(sigma).T
    return r, sigma


def run_size(chi2, n: int, p: int, repeats: int, loop_n: int) -> None:
    r, sigma = problem(n, p)
    cov = chi2.Covariance.from_matrix(sigma)
    t_ours, ours = best(lambda: cov.raw_chi2(r), repeats)
    t_full, _ = best(lambda: chi2.chi2_per_sample(r, cov), repeats)
    t_inv, direct = best(lambda: np.einsum("ij,jk,ik->i", r, np.linalg.inv(sigma), r, optimize=True), repeats)
    sub = r[:loop_n]
    t_loop, _ = best(lambda: np.array([x @ np.linalg.solve(sigma, x) for x in sub]), 1)
    t_loop_all = t_loop * n / loop_n
    rel = float(np.max(np.abs(ours - direct) / direct))
    print(f"\nn = {n:,} samples × p = {p} bins")
    print(f"  ours (Cholesky, one triangular solve)   {t_ours * 1e3:9.1f} ms")
    print(
        f"  explicit inverse + einsum               {t_inv * 1e3:9.1f} ms   ours is {t_inv / t_ours:5.2f}× its speed"
    )
    print(
        f"  per-sample np.linalg.solve loop         {t_loop_all * 1e3:9.1f} ms   (scaled from {loop_n:,}; "
        f"ours is {t_loop_all / t_ours:,.0f}× faster)"
    )
    print(f"  ours with dof, mask check and p-values  {t_full * 1e3:9.1f} ms")
    print(f"  max relative difference to the explicit inverse: {rel:.1e}")

    def everything():
        res = chi2.chi2_per_sample(r, cov)
        chi2.calibration(res.p_values)
        chi2.pull_summary(chi2.pulls(r, cov.sigma))
        ref = 1.0 + 0.01 * np.abs(r)
        chi2.percentiles(chi2.fractional_errors(ref * 1.001, ref))
        return res

    t_all, _ = best(everything, repeats)
    print(f"  all of a model × dataset (χ², p-values, KS, pulls, percentiles) {t_all * 1e3:9.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-n", type=int, default=20_000, help="samples timed in the per-sample loop")
    args = ap.parse_args()
    chi2 = load_ours("emulator.chi2")
    print(f"numpy {np.__version__}; load average before: {os.getloadavg()[0]:.2f}")
    run_size(chi2, 1_000_000, 14, args.repeats, args.loop_n)
    run_size(chi2, 100_000, 500, args.repeats, min(args.loop_n, 2_000))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
