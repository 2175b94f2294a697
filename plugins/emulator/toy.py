"""A toy galaxy–halo emulation problem with a known truth and a known noise model (for the demo and tests).

In the spirit of Nadler & To's UniverseMachine emulator: a model maps four galaxy–halo parameters θ to the
stellar mass function (SMF) in 14 logarithmic stellar-mass bins, and each "simulation sub-box" measures that SMF
with correlated noise. Here the simulation is cheap and exact, so every claim the ``emulator`` probe makes can be
checked against the truth:

* truth: a generalised Schechter function, log10 φ(M) = log10(ln 10 · φ*) + (1 + α)(M − M_c) − 10^{β(M − M_c)}/ln 10,
  with θ = (M_c, α, log10 φ*, β) drawn uniformly from :data:`PRIOR`, evaluated at the bin centres
  :data:`BIN_CENTRES` (log10 M*/M_⊙ from 9.1 to 11.7);
* noise: Gaussian in log10 φ with the fixed covariance :func:`noise_covariance` — per-bin errors from 0.02 dex at
  low mass (many galaxies) to 0.12 dex at high mass (few), and a correlated part shared by nearby bins (cosmic
  variance of one box moves neighbouring bins together).

Dataset factories (``factory = "model_audit_probes.emulator.toy:smf_boxes"`` …): ``smf_boxes`` (inputs θ, targets
the noisy log10 SMF of each box, plus the noiseless ``truth``), ``smf_realisations`` (repeated boxes at the
fiducial θ: a simulation-estimated covariance), ``smf_errors`` (per-bin errors) and ``smf_covariance`` (the full
matrix). Model factories train in about a second from a seed: ``smf_emulator`` (an MLP, the "ResNet" role) and
``smf_polynomial`` (a least-squares polynomial in θ, the weak baseline, the random forest's role in the paper).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

N_BINS = 14
BIN_CENTRES = np.round(9.1 + 0.2 * np.arange(N_BINS), 10)
PARAMETERS = ("log10_M_c", "alpha", "log10_phi_star", "beta")
PRIOR = np.array([[10.2, 11.4], [-1.8, -0.8], [-3.5, -2.5], [0.4, 1.0]])
FIDUCIAL = PRIOR.mean(axis=1)


def true_log_smf(theta: np.ndarray) -> np.ndarray:
    """log10 φ in each bin for each row of θ (n, 4), float64."""
    t = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    m_c, alpha, log_phi, beta = (t[:, k : k + 1] for k in range(4))
    x = BIN_CENTRES[None, :] - m_c
    return np.log10(np.log(10.0)) + log_phi + (1.0 + alpha) * x - np.power(10.0, beta * x) / np.log(10.0)


def noise_sigma() -> np.ndarray:
    """Per-bin standard deviation of log10 φ in one box (dex)."""
    u = np.arange(N_BINS) / (N_BINS - 1)
    return 0.02 + 0.10 * u**2


def noise_covariance(correlated: float = 0.5, length: float = 3.0) -> np.ndarray:
    """Σ_ij = σ_i σ_j [(1 − c) δ_ij + c exp(−|i − j| / ℓ)]: positive definite for 0 ≤ c < 1."""
    s = noise_sigma()
    lag = np.abs(np.arange(N_BINS)[:, None] - np.arange(N_BINS)[None, :])
    corr = (1.0 - correlated) * np.eye(N_BINS) + correlated * np.exp(-lag / length)
    return s[:, None] * corr * s[None, :]


def sample_theta(n: int, rng: np.random.Generator) -> np.ndarray:
    return PRIOR[:, 0] + (PRIOR[:, 1] - PRIOR[:, 0]) * rng.random((n, len(PARAMETERS)))


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((n, N_BINS)) @ np.linalg.cholesky(noise_covariance()).T


def smf_boxes(n: int = 1000, seed: int = 0, noise: bool = True, bias: float = 0.0) -> dict[str, np.ndarray]:
    """`n` simulated boxes: ``inputs`` θ (n, 4), ``targets`` the measured log10 SMF (n, 14) (truth + noise, plus
    an optional constant `bias` in dex, to play a biased simulation), ``truth`` the noiseless log10 SMF."""
    rng = np.random.default_rng(seed)
    theta = sample_theta(n, rng)
    truth = true_log_smf(theta)
    measured = truth + (_noise(n, rng) if noise else 0.0) + bias
    return {
        "inputs": theta.astype(np.float32),
        "targets": measured.astype(np.float32),
        "truth": truth.astype(np.float32),
    }


def smf_realisations(n: int = 400, seed: int = 1) -> dict[str, np.ndarray]:
    """`n` boxes at the fiducial θ, differing only by their noise: rows from which a covariance is estimated."""
    rng = np.random.default_rng(seed)
    rows = true_log_smf(FIDUCIAL) + _noise(n, rng)
    return {"inputs": rows.astype(np.float64)}


def smf_errors() -> dict[str, np.ndarray]:
    """The per-bin errors as one row (a diagonal covariance: what a survey's error bars give)."""
    return {"inputs": noise_sigma()[None, :]}


def smf_covariance() -> dict[str, np.ndarray]:
    """The full noise covariance (14 × 14)."""
    return {"inputs": noise_covariance()}


# ------------------------------------------------------------------------------------------------ models


class _Standardise(nn.Module):
    """Maps θ from the prior box to [−1, 1] (fixed, so the weights file says everything)."""

    def __init__(self) -> None:
        super().__init__()
        lo, hi = torch.tensor(PRIOR[:, 0]), torch.tensor(PRIOR[:, 1])
        self.register_buffer("centre", ((lo + hi) / 2).float())
        self.register_buffer("half_width", ((hi - lo) / 2).float())

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return (theta - self.centre) / self.half_width


class SMFEmulator(nn.Module):
    """θ → log10 SMF: an MLP with SiLU activations and a skip from a linear map (a one-block residual net)."""

    def __init__(self, hidden: int = 64, depth: int = 2) -> None:
        super().__init__()
        self.standardise = _Standardise()
        layers: list[nn.Module] = []
        width = len(PARAMETERS)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*layers, nn.Linear(width, N_BINS))
        self.linear = nn.Linear(len(PARAMETERS), N_BINS)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        z = self.standardise(theta)
        return self.linear(z) + self.body(z)


class PolynomialEmulator(nn.Module):
    """θ → log10 SMF by least squares on all monomials of θ (standardised) up to `degree`."""

    def __init__(self, degree: int = 2) -> None:
        super().__init__()
        self.standardise = _Standardise()
        self.exponents = [e for e in _exponents(len(PARAMETERS), degree)]
        self.head = nn.Linear(len(self.exponents), N_BINS)

    def features(self, theta: torch.Tensor) -> torch.Tensor:
        z = self.standardise(theta)
        # the exponents on z's device and in its dtype: a CPU tensor here fails on CUDA inputs
        powers = torch.tensor(self.exponents, dtype=z.dtype, device=z.device)  # (monomials, parameters)
        return torch.prod(z[:, None, :] ** powers[None, :, :], dim=2)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(theta))


def _exponents(k: int, degree: int) -> list[tuple[int, ...]]:
    """Every exponent tuple of k variables with total degree 1..degree (the constant is the bias)."""
    out: list[tuple[int, ...]] = []

    def rec(prefix: tuple[int, ...], left: int) -> None:
        if len(prefix) == k:
            if sum(prefix) > 0:
                out.append(prefix)
            return
        for e in range(left + 1):
            rec((*prefix, e), left - e)

    rec((), degree)
    return out


def smf_emulator(
    hidden: int = 64, depth: int = 2, epochs: int = 3000, n_train: int = 2000, seed: int = 0, lr: float = 1e-2
) -> SMFEmulator:
    """An :class:`SMFEmulator` trained (full-batch Adam, cosine schedule, MSE in log10 φ) on `n_train` noisy boxes
    of seed 1000 + `seed` (never the demo's test boxes). Deterministic for a given seed on the CPU."""
    data = smf_boxes(n_train, seed=1000 + seed)
    x, y = torch.from_numpy(data["inputs"]), torch.from_numpy(data["targets"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SMFEmulator(hidden, depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.mean((model(x) - y) ** 2)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def smf_polynomial(degree: int = 2, n_train: int = 2000, seed: int = 0) -> PolynomialEmulator:
    """A :class:`PolynomialEmulator` fitted in closed form (float64 least squares) on the same training boxes."""
    data = smf_boxes(n_train, seed=1000 + seed)
    model = PolynomialEmulator(degree)
    with torch.no_grad():
        feats = model.features(torch.from_numpy(data["inputs"])).double()
        design = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)
        coef = torch.linalg.lstsq(design, torch.from_numpy(data["targets"]).double()).solution
        model.head.weight.copy_(coef[:-1].T.float())
        model.head.bias.copy_(coef[-1].float())
    return model.eval()
