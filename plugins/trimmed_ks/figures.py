"""Figures of a stored `trimmed_ks` result, drawn only from its stored arrays and metrics (nothing recomputed).

* **α̂ per model**: each candidate's minimal trimming beside the reference models' leave-one-out values —
  the spread of α̂ within seed variability, the scale a candidate is judged on.
* **Per candidate**: its score eCDF F against the pooled reference eCDF F0, with the optimal α̂-trimming
  G (the stored weights per distinct score) and the mass it moved shaded between F and G; and the d_α
  curve against α with the test's threshold, α̂ and lim d_α, over the reference models' own curves.
"""

from __future__ import annotations

import math

import numpy as np

from audit import Figure, ResultView
from audit.api.figures import canvas


def trimmed_cdf(x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atoms, F, G): the distinct values of x ascending, its eCDF and the trimmed CDF at each atom.

    ``weights`` are the stored optimal trimming: one weight per distinct value of x (what
    ``TrimmedKS.trimming`` returns; one per point when there are no ties), summing to 1.
    """
    atoms, counts = np.unique(np.asarray(x, dtype=np.float64), return_counts=True)
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size != atoms.size:
        raise ValueError(f"{w.size} trimming weights for {atoms.size} distinct scores")
    f = np.cumsum(counts) / counts.sum()
    g = np.cumsum(w) / w.sum()
    return atoms, f, g


def _steps(ax, atoms: np.ndarray, cdf: np.ndarray, **kw) -> None:
    ax.step(np.concatenate(([atoms[0]], atoms)), np.concatenate(([0.0], cdf)), where="post", **kw)


def reference_cdf(reference: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The pooled reference's eCDF F0 evaluated at the given points (right-continuous)."""
    ref = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    return np.searchsorted(ref, np.asarray(at, dtype=np.float64), side="right") / ref.size


def candidate_figure(
    name: str,
    x: np.ndarray,
    reference: np.ndarray,
    trimming: np.ndarray | None,
    alpha_hat: float,
    *,
    alphas: np.ndarray | None = None,
    curve: np.ndarray | None = None,
    null_curves: list[np.ndarray] | None = None,
    threshold: float = math.nan,
    limit: float = math.nan,
    score_kind: str = "score",
):
    """Three panels: the eCDFs on the score axis (F, F0, the trimmed G, the mass it moved shaded); the
    same as a P–P plot (F and G against F0, with the test's acceptance band |·| ≤ threshold around the
    diagonal); and, with a curve, d_α against α."""
    panels = 3 if alphas is not None and curve is not None else 2
    fig = canvas(4.6 * panels, 3.9, ncols=panels)
    ax, pp = fig.axes[0], fig.axes[1]
    ref = np.sort(np.asarray(reference, dtype=np.float64).ravel())
    atoms, counts = np.unique(np.asarray(x, dtype=np.float64), return_counts=True)
    f = np.cumsum(counts) / counts.sum()
    g = None
    if trimming is not None and alpha_hat < 1:
        atoms, f, g = trimmed_cdf(x, trimming)
    _steps(
        ax,
        ref,
        np.arange(1, ref.size + 1) / ref.size,
        color="0.35",
        linewidth=1.4,
        label=f"reference F0 (m = {ref.size})",
    )
    _steps(ax, atoms, f, color="C0", linewidth=1.4, label=f"{name} F (n = {counts.sum()})")
    f0 = reference_cdf(ref, atoms)
    pp.plot([0, 1], [0, 1], color="0.35", linewidth=1, label="F = F0")
    if math.isfinite(threshold):
        band = np.array([0.0, 1.0])
        pp.fill_between(
            band,
            band - threshold,
            band + threshold,
            color="0.85",
            label=f"accepted: |G − F0| ≤ {threshold:.3g}",
        )
    pp.plot(f0, f, color="C0", linewidth=1.4, label="F")
    if g is not None:
        _steps(
            ax, atoms, g, color="C3", linewidth=1.2, linestyle="--", label=f"trimmed G (α̂ = {alpha_hat:.3g})"
        )
        ax.fill_between(
            atoms, f, g, step="post", color="C3", alpha=0.25, linewidth=0, label="mass moved by the trimming"
        )
        pp.plot(f0, g, color="C3", linewidth=1.2, linestyle="--", label="G")
        pp.fill_between(f0, f, g, color="C3", alpha=0.25, linewidth=0)
    lo, hi = np.quantile(np.concatenate([ref, atoms]), [0.005, 0.995])
    if hi > lo:
        pad = 0.03 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel(score_kind + " (central 99 %)")
    ax.set_ylabel("cumulative share")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{name}: eCDF against the reference", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    pp.set_xlim(0, 1)
    pp.set_ylim(0, 1)
    pp.set_aspect("equal")
    pp.set_xlabel("reference F0")
    pp.set_ylabel("candidate F, trimmed G")
    pp.set_title("P–P plot", fontsize=10)
    pp.legend(fontsize=7, loc="upper left")
    for a in (ax, pp):
        a.grid(alpha=0.3)
    if panels == 3:
        ax = fig.axes[2]
        for i, c in enumerate(null_curves or []):
            ax.plot(
                alphas,
                c,
                color="0.7",
                linewidth=0.8,
                label="reference models (leave-one-out)" if i == 0 else None,
            )
        ax.plot(alphas, curve, color="C0", linewidth=1.8, label=f"{name} d_α")
        if math.isfinite(threshold):
            ax.axhline(
                threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}"
            )
        if math.isfinite(limit):
            ax.axhline(limit, color="C0", linestyle=":", linewidth=1, label=f"lim d_α = {limit:.3g}")
        if math.isfinite(alpha_hat) and alpha_hat <= float(np.max(alphas)):
            ax.axvline(alpha_hat, color="C3", linewidth=1.2, label=f"α̂ = {alpha_hat:.3g}")
        ax.set_xlabel("trimming level α")
        ax.set_ylabel("trimmed KS distance d_α")
        ax.set_title("d_α against α", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def overview_figure(values: list[tuple[str, float, bool]], null_max: float = math.nan):
    """α̂ per model as horizontal bars: (name, α̂, is_reference); reference models grey."""
    fig = canvas(6.4, 0.9 + 0.28 * len(values))
    ax = fig.axes[0]
    ys = np.arange(len(values))[::-1]
    colours = ["0.65" if ref else "C0" for _, _, ref in values]
    shown = [v if math.isfinite(v) else 0.0 for _, v, _ in values]
    ax.barh(ys, shown, color=colours)
    for y, (_, v, _) in zip(ys, values, strict=True):
        ax.text(min(v, 0.86) + 0.01 if math.isfinite(v) else 0.01, y, f"{v:.3g}", va="center", fontsize=7)
    ax.set_yticks(ys, [n for n, _, _ in values], fontsize=7.5)
    if math.isfinite(null_max):
        ax.axvline(
            null_max,
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"max over the reference = {null_max:.3g}",
        )
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("α̂ (minimal trimming for the KS test to accept)")
    ax.grid(alpha=0.3, axis="x")
    return fig


def render(result: ResultView) -> list[Figure]:
    arrays = result.arrays
    refs = [str(r) for r in np.asarray(arrays.get("reference_models", [])).ravel()]
    ordered = refs + [m for m in result.models if m not in refs]
    scored = [m for m in ordered if f"{m}:scores" in arrays]
    kind = str(np.asarray(arrays["score_kind"]).ravel()[0]) if "score_kind" in arrays else "score"
    dataset = ",".join(result.datasets) or None
    rule = result.params.get("rule", "")
    out = []
    null_max = result.metric("null_alpha_hat_max")
    values = [(m, result.metric("alpha_hat", model=m), m in refs) for m in scored]
    if values:
        out.append(
            Figure.from_matplotlib(
                overview_figure(values, null_max),
                "α̂ of each model",
                f"Minimal trimming α̂ at which the KS test ({rule or 'rule as configured'}) accepts each model's "
                f"{kind} distribution on {dataset} as the reference ensemble's. Grey: the reference models, each "
                "against the others (leave-one-out) — the spread within seed variability; blue: the candidates.",
                dataset=dataset,
            )
        )
    alphas = arrays.get("d_alpha:alphas")
    null_curves = [arrays[f"{m}:d_alpha"] for m in refs if f"{m}:d_alpha" in arrays]
    for m in scored:
        if m in refs or "reference:scores" not in arrays:
            continue  # a reference model was scored against the others, which the pooled scores include
        a_hat = result.metric("alpha_hat", model=m)
        fig = candidate_figure(
            m,
            arrays[f"{m}:scores"],
            arrays["reference:scores"],
            arrays.get(f"{m}:trimming"),
            a_hat,
            alphas=alphas,
            curve=arrays.get(f"{m}:d_alpha"),
            null_curves=null_curves,
            threshold=result.metric("ks_threshold", model=m),
            limit=result.metric("d_alpha_limit", model=m),
            score_kind=kind,
        )
        if f"{m}:trimming" in arrays:
            trim = (
                f"The shaded band is the mass the optimal α̂-trimming (α̂ = {a_hat:.3g}) moves: G discards at most a share "
                "α̂ of F and re-weights the rest by at most 1/(1−α̂), never adding mass where F has none."
            )
        else:
            trim = (
                "No trimming makes it pass (α̂ = 1): the reference has mass where this model has none, which "
                "trimming cannot add."
            )
        half = "its half of " if result.params.get("split", "halves") == "halves" else ""
        threshold_note = (
            " (at α = 0; this rule's threshold grows with α)" if rule == "dkw_conservative" else ""
        )
        caption = (
            f"Left: the eCDF of {m}'s {kind} on {half}{dataset} against the reference ensemble's pooled eCDF; "
            "middle: the same as a P–P plot, where the KS distance is the largest vertical gap from the diagonal "
            f"and the grey band what the test accepts. {trim} Right: d_α, the KS distance after the best "
            f"α-trimming, against α, with the test's threshold{threshold_note}; grey: the reference models' "
            "own curves. KS distance "
            f"{result.metric('ks_distance', model=m):.3g}, accuracy {result.metric('accuracy', model=m):.3g}, "
            f"churn against the ensemble {result.metric('churn_ensemble', model=m):.3g}."
        )
        out.append(
            Figure.from_matplotlib(fig, f"{m} against the reference", caption, model=m, dataset=dataset)
        )
    return out
