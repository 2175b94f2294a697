"""Generate example 01 offline: two "simulation suites" of CAMELS-like 2-D maps and a CNN trained on each.

A toy of CAMELS (Villaescusa-Navarro et al. 2021), seeded and in NumPy only:

* **Cosmology → linear field.** A Gaussian random field on a 32×32 periodic grid of a 25 Mpc/h box (the
  CAMELS box size) with power spectrum P(k) = A·k^n_s·T(k)², T the BBKS transfer function (Bardeen et al.
  1986) whose shape parameter Γ = Ω_m·h moves the turnover, and A set so that the field smoothed with a 2-D
  top hat of 8 Mpc/h has rms σ_8. Ω_m ∈ [0.1, 0.5] and σ_8 ∈ [0.6, 1.0] are drawn uniformly (CAMELS' ranges).
  The 2-D spectrum is the 3-D formula used as is: a documented toy, not a projection.
* **Non-linear density.** A log-normal transform ρ = exp(g − σ_g²/2) (Coles & Jones 1991).
* **"Baryonic feedback" — what tells the suites apart.** A fraction f of the matter is redistributed over a
  Gaussian kernel of radius r: ρ_fb = (1 − f)·ρ + f·(ρ ∗ G_r). Like IllustrisTNG and SIMBA, the two suites share
  the cosmology and the dark-matter physics but not the feedback model. f and r are drawn per map, as CAMELS
  varies its feedback parameters per simulation: suite ``tng`` from no feedback to strong (f ∈ [0, 0.9],
  r ∈ [0.5, 2] Mpc/h), suite ``simba`` (whose AGN jets push gas farther) always strong and far-reaching
  (f ∈ [0.6, 0.9], r ∈ [1.5, 2] Mpc/h): inside tng's range, at its smooth end. ``--counterexample`` swaps
  which suite is narrow (see the README). The map is log10(ρ_fb) plus a little pixel noise, standardised with
  fixed constants (the same for both suites).

Then one CNN (``factories.cnn``) is trained on each suite's training maps to regress (Ω_m, σ_8) — seeded,
on the CPU — and saved as safetensors; each suite's test maps are saved for `audit run`.

Usage: ``python make_data.py`` (the full example) or ``python make_data.py --quick`` (the reduced version the
test runs: fewer maps and epochs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from factories import cnn
from scipy.special import j1

HERE = Path(__file__).resolve().parent
GRID = 32  # pixels per side
BOX = 25.0  # Mpc/h, the CAMELS box
LITTLE_H = 0.7
N_S = 0.96
R8 = 8.0  # Mpc/h
OMEGA_M = (0.1, 0.5)
SIGMA_8 = (0.6, 1.0)
# Feedback of each suite, drawn per map: the redistributed fraction f ~ U(f_lo, f_hi) and the kernel radius
# r ~ U(r_lo, r_hi) in Mpc/h.
SUITES = {
    "tng": {"fraction": (0.0, 0.9), "radius": (0.5, 2.0)},
    "simba": {"fraction": (0.6, 0.9), "radius": (1.5, 2.0)},
}
# The counterexample (--counterexample, see the README): the suite with sharper maps is now the narrow one
# (weak, short-range feedback only) and the smooth suite spans a broad range of feedback.
COUNTER_SUITES = {
    "tng": {"fraction": (0.05, 0.3), "radius": (0.6, 0.6)},
    "simba": {"fraction": (0.0, 0.9), "radius": (2.0, 2.0)},
}
NOISE = 0.02  # pixel noise, in dex
MAP_MEAN, MAP_STD = -0.26, 0.48  # fixed standardisation of log10 ρ_fb (the tng suite's), for both suites

FULL = {"n_train": 2000, "n_test": 512, "epochs": 15}
QUICK = {"n_train": 800, "n_test": 256, "epochs": 8}


# ----------------------------------------------------------------------------------------------- the fields


def transfer(k: np.ndarray, omega_m: float) -> np.ndarray:
    """BBKS transfer function, k in h/Mpc, shape parameter Γ = Ω_m·h (no baryon correction: a toy)."""
    q = k / (omega_m * LITTLE_H)
    return (
        np.log1p(2.34 * q)
        / (2.34 * q)
        * (1 + 3.89 * q + (16.1 * q) ** 2 + (5.46 * q) ** 3 + (6.71 * q) ** 4) ** -0.25
    )


_K_INT = np.logspace(-4, 2.5, 6000)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed trapz; the project supports 1.26 too


def amplitude(omega_m: float, sigma_8: float) -> float:
    """A such that ∫ A·k^n_s·T²·W_TH(kR8)² d²k/(2π)² = σ_8², W_TH(x) = 2·J1(x)/x (the 2-D top hat)."""
    x = _K_INT * R8
    window = 2 * j1(x) / x
    integrand = _K_INT**N_S * transfer(_K_INT, omega_m) ** 2 * window**2 * _K_INT / (2 * np.pi)
    return sigma_8**2 / _trapezoid(integrand, _K_INT)


def _grid_k() -> np.ndarray:
    k1 = 2 * np.pi * np.fft.fftfreq(GRID, d=BOX / GRID)
    k = np.sqrt(k1[:, None] ** 2 + k1[None, :] ** 2)
    k[0, 0] = 1.0  # the mean mode is zeroed in the spectrum; 1.0 only avoids a division by zero
    return k


K_GRID = _grid_k()


def _kernel_ft(radius: float) -> np.ndarray:
    """Fourier transform of a periodic, positive, unit-sum Gaussian kernel of the given radius (Mpc/h).

    Built in real space and normalised there, so that the smoothed density stays positive (a Gaussian cut
    in k space rings and can go negative next to a high peak).
    """
    d = np.minimum(np.arange(GRID), GRID - np.arange(GRID)) * BOX / GRID
    kernel = np.exp(-0.5 * (d[:, None] ** 2 + d[None, :] ** 2) / radius**2)
    return np.fft.fft2(kernel / kernel.sum())


def make_map(omega_m: float, sigma_8: float, fraction: float, kernel_ft: np.ndarray, rng) -> np.ndarray:
    """One standardised map: Gaussian field → log-normal density → feedback → log10 → noise."""
    power = amplitude(omega_m, sigma_8) * K_GRID**N_S * transfer(K_GRID, omega_m) ** 2
    power[0, 0] = 0.0
    # white noise with unit variance per pixel has <|w_k|²> = GRID²; the field's variance is Σ_k P(k)/BOX².
    w = np.fft.fft2(rng.standard_normal((GRID, GRID)))
    g = np.fft.ifft2(w * np.sqrt(power) * GRID / BOX).real
    rho = np.exp(g - power.sum() / BOX**2 / 2)
    smoothed = np.fft.ifft2(np.fft.fft2(rho) * kernel_ft).real
    rho_fb = (1 - fraction) * rho + fraction * np.maximum(smoothed, 1e-12)
    log_map = np.log10(rho_fb) + NOISE * rng.standard_normal((GRID, GRID))
    return ((log_map - MAP_MEAN) / MAP_STD).astype(np.float32)


def make_suite(
    suite: str, n: int, rng: np.random.Generator, suites: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """n maps of one suite: inputs (n, 1, 32, 32) float32, targets (n, 2) float32 = (Ω_m, σ_8)."""
    spec = (suites or SUITES)[suite]
    params = np.column_stack([rng.uniform(*OMEGA_M, n), rng.uniform(*SIGMA_8, n)])
    fractions = rng.uniform(*spec["fraction"], n)
    radii = rng.uniform(*spec["radius"], n)
    x = np.stack(
        [
            make_map(om, s8, f, _kernel_ft(r), rng)
            for (om, s8), f, r in zip(params, fractions, radii, strict=True)
        ]
    )
    return x[:, None], params.astype(np.float32)


# ----------------------------------------------------------------------------------------------- training


def r2(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """R² per target: 1 − SSE/SST (what the `cka` probe stores as r2_0, r2_1)."""
    return 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def train(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> torch.nn.Module:
    """Adam on the MSE of the standardised parameters, with the maps' 8 symmetries as augmentation."""
    torch.manual_seed(seed)
    model = cnn()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    target = (yt - model.centre) / model.scale
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * -(-len(xt) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            xb = xt[idx]
            k = int(torch.randint(0, 4, (1,), generator=g))
            xb = torch.rot90(xb, k, dims=(2, 3))
            if torch.rand(1, generator=g) < 0.5:
                xb = torch.flip(xb, dims=(3,))
            opt.zero_grad()
            torch.nn.functional.mse_loss(model.standardised(xb), target[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced version the test runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--counterexample",
        action="store_true",
        help="the suites of the README's counterexample (same file names)",
    )
    args = parser.parse_args()
    specs = COUNTER_SUITES if args.counterexample else SUITES
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    (HERE / "data").mkdir(exist_ok=True)
    (HERE / "models").mkdir(exist_ok=True)
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    suites = {}
    for i, suite in enumerate(specs):
        rng = np.random.default_rng([args.seed, i])
        xtr, ytr = make_suite(suite, cfg["n_train"], rng, specs)
        xte, yte = make_suite(suite, cfg["n_test"], rng, specs)
        np.savez(HERE / "data" / f"{suite}_test.npz", x=xte, y=yte)
        suites[suite] = (xtr, ytr, xte, yte)
    print(
        f"generated {len(specs)} suites × {cfg['n_train']} + {cfg['n_test']} maps in {time.perf_counter() - t0:.1f} s"
    )

    for i, (suite, (xtr, ytr, _, _)) in enumerate(suites.items()):
        t1 = time.perf_counter()
        model = train(xtr, ytr, cfg["epochs"], seed=args.seed * 100 + i)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(HERE / "models" / f"cnn_{suite}.safetensors"),
        )
        with torch.no_grad():
            scores = {s: r2(model(torch.from_numpy(v[2])).numpy(), v[3]) for s, v in suites.items()}
        line = ", ".join(f"{s}: R²(Ω_m) {a:.3f}, R²(σ_8) {b:.3f}" for s, (a, b) in scores.items())
        print(f"trained cnn_{suite} in {time.perf_counter() - t1:.1f} s — {line}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
