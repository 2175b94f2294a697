"""Figures of a stored `emulator` result for `audit report`: per test dataset, every model of the job overlaid.

Drawn only from stored arrays (``<model>@<dataset>:pull_mean`` … see :mod:`.probe`): per-bin mean pull with the
RMS pull as a band (bias and scatter in error bars: a calibrated emulator sits at 0 with RMS ≈ 1 when the
reference is a noisy simulation), per-bin fractional-error percentiles (68/95/99 %), and the histogram of the
per-sample p-values against the uniform density (calibration: a pile-up near 0 is an emulator whose errors
exceed the covariance).
"""

from __future__ import annotations

import numpy as np

from audit import Figure
from audit.api.figures import canvas

LINESTYLES = ("-", "--", ":")


def render(result) -> list[Figure]:
    arrays = result.arrays
    pairs = sorted({k.split(":")[0] for k in arrays if k.endswith(":pull_mean")})
    datasets = sorted({p.split("@", 1)[1] for p in pairs})
    percentiles = np.asarray(arrays.get("percentiles", np.array([68.0, 95.0, 99.0])))
    space = str(arrays["space"][0]) if "space" in arrays else "stored"
    kind = str(arrays["covariance_kind"][0]) if "covariance_kind" in arrays else "given"
    figures = []
    for dataset in datasets:
        models = [p.split("@", 1)[0] for p in pairs if p.split("@", 1)[1] == dataset]
        fig = canvas(13, 3.8, ncols=3)
        ax_pull, ax_frac, ax_p = fig.axes
        for i, model in enumerate(models):
            key = f"{model}@{dataset}"
            colour = f"C{i}"
            mean, rms = arrays[f"{key}:pull_mean"], arrays[f"{key}:pull_rms"]
            bins = np.arange(len(mean))
            ax_pull.plot(bins, mean, marker="o", ms=3, color=colour, label=f"{model} mean")
            ax_pull.fill_between(bins, mean - rms, mean + rms, color=colour, alpha=0.15, label=f"{model} ± RMS")
            frac = arrays.get(f"{key}:frac_err_percentiles")
            if frac is not None:
                for j, q in enumerate(percentiles):
                    ax_frac.plot(
                        bins,
                        frac[j],
                        color=colour,
                        linestyle=LINESTYLES[j % len(LINESTYLES)],
                        label=f"{model} {q:g}%",
                    )
            pvals = arrays.get(f"{key}:p_values")
            if pvals is not None and len(pvals):
                chi2_mean = result.metric("chi2_mean", model=model, dataset=dataset)
                ax_p.hist(
                    pvals,
                    bins=20,
                    range=(0, 1),
                    density=True,
                    histtype="step",
                    color=colour,
                    label=f"{model} (χ²/bin {chi2_mean:.3g})",
                )
        for y in (-1, 0, 1):
            ax_pull.axhline(y, color="0.6", lw=0.8, ls="-" if y == 0 else "--")
        ax_pull.set(xlabel="bin", ylabel="pull (reference − prediction) / σ", title="pulls per bin")
        ax_frac.set(xlabel="bin", ylabel="|prediction / reference − 1|", title="fractional error percentiles")
        ax_frac.set_yscale("log")
        ax_p.axhline(1.0, color="0.4", lw=1, ls="--", label="uniform")
        ax_p.set(xlabel="p-value", ylabel="density", title="calibration of per-sample p-values")
        for ax in fig.axes:
            ax.legend(fontsize=7)
        figures.append(
            Figure.from_matplotlib(
                fig,
                f"emulator agreement on {dataset}",
                f"Residuals in {space} space against a {kind} covariance. Left: mean pull per bin with ±RMS "
                "band (0 and RMS ≈ 1 when the residuals are the reference's own noise). Middle: 68/95/99th "
                "percentiles of the fractional error per bin. Right: per-sample p-values; a calibrated "
                "emulator's are uniform.",
                dataset=dataset,
            )
        )
    return figures
