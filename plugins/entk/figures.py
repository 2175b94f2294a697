"""Figures of a stored `entk` result, drawn only from its stored arrays and metrics (nothing recomputed).

* **Kernel spectra** — the eNTK and the conjugate kernel: the empirical complementary CDF of the positive
  eigenvalues on log-log axes with the fitted power-law tail (Clauset et al.; the probe stores α, x_min,
  the tail size and its KS distance), so the heavy tail and the quality of its fit are seen at once.
* **Weight spectra** — every weight matrix: the same plot for the eigenvalues of WᵀW/rows (scaled to unit
  mean, so σ² = 1), beside the Marchenko–Pastur law of an i.i.d. matrix of that shape and its bulk edge
  λ₊ = σ²(1 + √q)², q = cols/rows; eigenvalues past the edge (plus the Tracy–Widom margin the probe used)
  are the spikes training put there.
* **Surrogates** — network against kernel-regression and kGLM accuracy on each test set, and the share
  of the targets captured by the kernels' top eigenvectors.
"""

from __future__ import annotations

import math
import re

import numpy as np

from audit import Figure, ResultView
from audit.api.figures import canvas
from model_audit_probes.entk.spectra import marchenko_pastur_edges

TW_MARGIN = 3.0  # the margin (in Tracy–Widom scales) weight_spectrum counts spikes beyond


def mp_density(x: np.ndarray, q: float, sigma2: float = 1.0) -> np.ndarray:
    """Marchenko–Pastur density of the eigenvalues of XᵀX/n (X n×m, q = m/n ≤ 1, entry variance sigma2)."""
    if not 0 < q <= 1:
        raise ValueError(f"q = m/n must lie in (0, 1], got {q}")
    lo, hi = sigma2 * (1 - math.sqrt(q)) ** 2, sigma2 * (1 + math.sqrt(q)) ** 2
    x = np.asarray(x, dtype=np.float64)
    inside = (x > lo) & (x < hi)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = np.sqrt((hi - xi) * (xi - lo)) / (2 * math.pi * sigma2 * q * xi)
    return out


def mp_survival(x: np.ndarray, q: float, sigma2: float = 1.0, nodes: int = 4001) -> np.ndarray:
    """P(λ ≥ x) under the Marchenko–Pastur law (q ≤ 1, no atom at 0).

    Integrated in the angle θ of x = c − r·cos θ (c, r the bulk's centre and half-width), where the
    density times dx is smooth (the square-root edges cancel), so the trapezoid rule is accurate.
    """
    lo, hi = sigma2 * (1 - math.sqrt(q)) ** 2, sigma2 * (1 + math.sqrt(q)) ** 2
    c, r = (hi + lo) / 2, (hi - lo) / 2
    theta = np.linspace(0.0, math.pi, nodes)
    xs = c - r * np.cos(theta)
    # (r sin θ)²/x, written so that q = 1 (lower edge 0, where x → 0 with sin²θ) has its finite limit r(1 + cos θ)
    ratio = np.where(xs > 0, (r * np.sin(theta)) ** 2 / np.where(xs > 0, xs, 1.0), r * (1 + np.cos(theta)))
    integrand = ratio / (2 * math.pi * sigma2 * q)
    cdf = np.concatenate(([0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(theta))))
    cdf /= cdf[-1]  # exact total mass is 1; normalising removes the quadrature's last-digit error
    return 1.0 - np.interp(np.asarray(x, dtype=np.float64), xs, cdf, left=0.0, right=1.0)


def survival(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positive finite values, ascending, and the empirical P(X ≥ x) at each."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    v = v[np.isfinite(v) & (v > 0)]
    return v, 1.0 - np.arange(v.size) / max(v.size, 1)


def tail_line(
    alpha: float, xmin: float, n_tail: float, n: int, x_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """The fitted power-law tail as a survival curve: (n_tail/n)·(x/x_min)^(1−α) for x_min ≤ x ≤ x_max."""
    x = np.geomspace(xmin, max(x_max, xmin * 1.0001), 64)
    return x, (n_tail / n) * (x / xmin) ** (1.0 - alpha)


def _spectrum_panel(ax, eig: np.ndarray, fit: dict[str, float], label: str) -> None:
    x, s = survival(eig)
    if x.size == 0:
        ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", va="center", transform=ax.transAxes)
        return
    ax.loglog(x, s, marker=".", linestyle="none", markersize=4, label=f"{label} ({x.size} > 0)")
    if all(math.isfinite(fit.get(k, math.nan)) for k in ("alpha", "xmin", "n_tail")) and fit["n_tail"] > 0:
        tx, ty = tail_line(fit["alpha"], fit["xmin"], fit["n_tail"], x.size, float(x[-1]))
        ks = fit.get("ks", math.nan)
        ax.loglog(
            tx, ty, color="C3", linewidth=1.6, label=f"power-law tail α = {fit['alpha']:.2f} (KS {ks:.3f})"
        )
        ax.axvline(fit["xmin"], color="C3", linestyle=":", linewidth=1)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("P(Λ ≥ λ)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def _fit(result: ResultView, prefix: str) -> dict[str, float]:
    return {k: result.metric(f"{prefix}{k}") for k in ("alpha", "xmin", "n_tail", "ks")}


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"


def kernel_spectra(result: ResultView) -> Figure | None:
    kernels = [
        (p, n)
        for p, n in (("ntk", "eNTK"), ("ck", "conjugate kernel"))
        if f"{p}_eigenvalues" in result.arrays
    ]
    if not kernels:
        return None
    fig = canvas(4.6 * len(kernels), 3.8, ncols=len(kernels))
    for ax, (prefix, name) in zip(fig.axes, kernels, strict=True):
        _spectrum_panel(ax, result.arrays[f"{prefix}_eigenvalues"], _fit(result, f"{prefix}_"), name)
        ax.set_title(name, fontsize=10)
    train = result.datasets[0] if result.datasets else "the reference set"
    parts = [
        f"{name}: effective rank {_fmt(result.metric(f'{p}_effective_rank'))}, top share "
        f"{_fmt(result.metric(f'{p}_top_share'))}, target alignment {_fmt(result.metric(f'{p}_alignment'))}"
        for p, name in kernels
    ]
    caption = (
        f"Survival function of the positive eigenvalues of each kernel on {train} (log-log), with the power-law "
        f"tail fitted above x_min (dotted line) by maximum likelihood and KS distance (Clauset et al.). "
        + "; ".join(parts)
        + "."
    )
    return Figure.from_matplotlib(
        fig, "kernel spectra", caption, model=",".join(result.models), dataset=train
    )


_WEIGHT = re.compile(r"^w\[(.+)\]\.eigenvalues$")


def weight_spectra(result: ResultView) -> Figure | None:
    names = [m.group(1) for k in result.arrays if (m := _WEIGHT.match(k))]
    if not names:
        return None
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig = canvas(4.0 * ncols, 3.1 * nrows, nrows=nrows, ncols=ncols)
    for ax in fig.axes[len(names) :]:
        ax.set_visible(False)
    spikes = 0.0
    for ax, name in zip(fig.axes, names, strict=False):
        eig = result.arrays[f"w[{name}].eigenvalues"]
        rows, cols = result.metric(f"w[{name}].rows"), result.metric(f"w[{name}].cols")
        fit = _fit(result, f"w[{name}].")
        _spectrum_panel(ax, eig, fit, "eigenvalues")
        if math.isfinite(rows) and math.isfinite(cols) and rows >= cols > 0:
            q = cols / rows
            _, edge = marchenko_pastur_edges(int(rows), int(cols))
            stored = result.metric(f"w[{name}].mp_edge")
            edge = stored if math.isfinite(stored) else edge
            lo = (1 - math.sqrt(q)) ** 2
            grid = np.linspace(max(lo, 1e-6), edge, 200)
            ax.loglog(
                grid,
                mp_survival(grid, q),
                color="0.45",
                linewidth=1.2,
                label=f"Marchenko–Pastur, q = {q:.2f}",
            )
            ax.axvline(edge, color="black", linestyle="--", linewidth=1, label=f"MP edge λ₊ = {edge:.2f}")
            tw = result.metric(f"w[{name}].tw_scale")
            if math.isfinite(tw):
                ax.axvline(edge + TW_MARGIN * tw, color="black", linestyle=":", linewidth=0.8)
            # the bulk and beyond: eigenvalues far below the edge (q near 1 reaches 0) only squeeze the plot
            ax.set_xlim(left=max(ax.get_xlim()[0], 1e-3 * edge))
        if ax is fig.axes[0]:
            ax.legend(fontsize=6.5, loc="lower left")
        elif ax.get_legend() is not None:
            ax.get_legend().remove()
        n_spikes = result.metric(f"w[{name}].spikes")
        spikes += n_spikes if math.isfinite(n_spikes) else 0.0
        shape = f"{int(rows)}×{int(cols)}" if math.isfinite(rows) and math.isfinite(cols) else "?"
        ax.set_title(f"{name} ({shape}), {_fmt(n_spikes)} spike(s)", fontsize=8.5)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
    caption = (
        "Eigenvalues of WᵀW/rows of each weight matrix (oriented rows ≥ cols, scaled to unit mean so σ² = 1) as a "
        "survival function, against the Marchenko–Pastur law of an i.i.d. matrix of the same shape (grey) and "
        f"its bulk edge λ₊ = (1 + √q)² (dashed; dotted: + {TW_MARGIN:g} Tracy–Widom scales, beyond which the probe "
        f"counts spikes — {_fmt(spikes)} in all); red: the fitted power-law tail. Training that learns strong "
        "directions pushes eigenvalues past the edge and fattens the tail."
    )
    return Figure.from_matplotlib(fig, "weight spectra", caption, model=",".join(result.models))


def surrogates(result: ResultView) -> Figure | None:
    tests = [d for d in result.datasets[1:] if math.isfinite(result.metric("network_accuracy", dataset=d))]
    captured = [
        (p, n)
        for p, n in (("ntk", "eNTK"), ("ck", "conjugate kernel"))
        if f"{p}_target_captured" in result.arrays
    ]
    if not tests and not captured:
        return None
    panels = int(bool(tests)) + int(bool(captured))
    fig = canvas(4.8 * panels, 3.6, ncols=panels)
    axes = list(fig.axes)
    parts = []
    if tests:
        ax = axes.pop(0)
        series = [
            ("network", "network_accuracy"),
            ("eNTK kernel regression", "kernel_regression_accuracy"),
            ("trNTK kGLM", "kglm_acc_surrogate"),
        ]
        width = 0.8 / len(series)
        xs = np.arange(len(tests))
        for i, (label, metric) in enumerate(series):
            values = [result.metric(metric, dataset=d) for d in tests]
            ax.bar(xs + (i - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, label=label)
        ax.set_xticks(xs, tests, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title("surrogate accuracy", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        parts += [
            f"{d}: TAD {_fmt(result.metric('kglm_tad', dataset=d))}, Kendall τ "
            f"{_fmt(result.metric('kglm_kendall_tau', dataset=d))}, R_Miss {_fmt(result.metric('kglm_r_miss', dataset=d))}"
            for d in tests
        ]
    if captured:
        ax = axes.pop(0)
        for prefix, name in captured:
            c = np.asarray(result.arrays[f"{prefix}_target_captured"], dtype=float)
            ax.plot(np.arange(1, c.size + 1), c, marker="o", markersize=3, label=name)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("top eigenvectors kept")
        ax.set_ylabel("share of ‖Y‖² captured")
        ax.set_title("targets in the kernel's top eigenspace", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    texts = []
    if tests:
        texts.append(
            "The network's accuracy beside its eNTK kernel-regression and trNTK-kGLM surrogates on each test "
            "set (a faithful surrogate tracks the network in and out of distribution)."
        )
    if captured:
        texts.append(
            "The cumulative share of the centred targets in the span of each kernel's top eigenvectors."
        )
    if len(texts) == 2:
        texts = ["Left: " + texts[0], "Right: " + texts[1][0].lower() + texts[1][1:]]
    caption = " ".join(texts)
    if parts:
        caption += " Faithfulness — " + "; ".join(parts) + "."
    return Figure.from_matplotlib(fig, "kernel surrogates", caption, model=",".join(result.models))


def render(result: ResultView) -> list[Figure]:
    return [f for f in (kernel_spectra(result), weight_spectra(result), surrogates(result)) if f is not None]
