"""Figures of a stored `embedding` result, drawn only from its stored arrays and metrics (nothing recomputed).

* **Sources in PCA and LDA**: the kept rows (at most ``keep_per_source`` per source) projected on the
  first two principal components and on the LDA discriminant(s), coloured by source — whether the
  instrument separates the sources, and along which directions.
* **Separability against chance**: the cross-validated LDA accuracy against its label-permutation null,
  and the PCA spectrum with each component's association with the source label.
"""

from __future__ import annotations

import math

import numpy as np

from audit import Figure, ResultView
from audit.api.figures import canvas


def _names(result: ResultView) -> list[str]:
    if "source_names" in result.arrays:
        return [str(x) for x in np.asarray(result.arrays["source_names"]).ravel()]
    return list(result.datasets)


def projection_figure(
    pca_2d: np.ndarray,
    source: np.ndarray,
    names: list[str],
    lda: np.ndarray | None = None,
    pca_ratio: np.ndarray | None = None,
):
    """PCA scatter (PC1, PC2) coloured by source and, when given, the LDA projection beside it
    (a scatter for two or more discriminants, per-source histograms for one)."""
    panels = 1 + (lda is not None)
    fig = canvas(5.0 * panels, 4.2, ncols=panels)
    ax = fig.axes[0]
    source = np.asarray(source).ravel().astype(int)
    pts = np.asarray(pca_2d, dtype=float).reshape(len(source), -1)
    for i, name in enumerate(names):
        sel = source == i
        y = pts[sel, 1] if pts.shape[1] > 1 else np.zeros(sel.sum())
        ax.scatter(
            pts[sel, 0], y, s=7, alpha=0.55, color=f"C{i % 10}", label=f"{name} ({sel.sum()})", linewidths=0
        )
    ratio = np.asarray(pca_ratio if pca_ratio is not None else [], dtype=float)
    ax.set_xlabel("PC1" + (f" ({100 * ratio[0]:.1f} % of variance)" if ratio.size > 0 else ""))
    ax.set_ylabel("PC2" + (f" ({100 * ratio[1]:.1f} %)" if ratio.size > 1 else ""))
    ax.set_title("PCA", fontsize=10)
    ax.legend(fontsize=7, markerscale=2)
    ax.grid(alpha=0.3)
    if lda is not None:
        ax = fig.axes[1]
        z = np.asarray(lda, dtype=float).reshape(len(source), -1)
        if z.shape[1] >= 2:
            for i, name in enumerate(names):
                sel = source == i
                ax.scatter(
                    z[sel, 0], z[sel, 1], s=7, alpha=0.55, color=f"C{i % 10}", label=name, linewidths=0
                )
            ax.set_ylabel("LD2")
        else:
            edges = np.histogram_bin_edges(z[:, 0], bins=40)
            for i, name in enumerate(names):
                ax.hist(
                    z[source == i, 0],
                    bins=edges,
                    histtype="stepfilled",
                    alpha=0.45,
                    color=f"C{i % 10}",
                    label=name,
                )
            ax.set_ylabel("rows")
        ax.set_xlabel("LD1")
        ax.set_title("LDA (fitted on all kept rows)", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def separability_figure(
    null: np.ndarray | None,
    observed: float,
    chance: float,
    ratio: np.ndarray | None,
    association: np.ndarray | None,
):
    """Left: the permutation null of the CV accuracy with the observed value; right: PCA spectrum and
    each component's |association| with the source."""
    panels = int(null is not None) + int(ratio is not None)
    fig = canvas(5.0 * max(panels, 1), 3.6, ncols=max(panels, 1))
    axes = list(fig.axes)
    if null is not None:
        ax = axes.pop(0)
        ax.hist(np.asarray(null, dtype=float), bins=20, color="0.6", label=f"permutation null ({len(null)})")
        if math.isfinite(observed):
            ax.axvline(observed, color="C3", linewidth=1.8, label=f"observed {observed:.3g}")
        if math.isfinite(chance):
            ax.axvline(chance, color="black", linestyle=":", linewidth=1, label=f"chance {chance:.3g}")
        ax.set_xlabel("cross-validated LDA accuracy")
        ax.set_ylabel("permutations")
        ax.set_title("separability against the null", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if ratio is not None:
        ax = axes.pop(0)
        r = np.asarray(ratio, dtype=float)
        ks = np.arange(1, r.size + 1)
        ax.bar(ks, r, color="C0", alpha=0.7, label="explained variance ratio")
        if association is not None:
            a = np.abs(np.asarray(association, dtype=float))[: r.size]
            ax.plot(ks[: a.size], a, color="C3", marker="o", markersize=4, label="|association| with source")
        ax.set_xlabel("principal component")
        ax.set_ylim(0, 1.02)
        ax.set_title("PCA spectrum", fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    return fig


def render(result: ResultView) -> list[Figure]:
    arrays = result.arrays
    names = _names(result)
    model = ",".join(result.models) or None
    sources = ", ".join(names)
    out = []
    if "pca_2d" in arrays and "source" in arrays:
        fig = projection_figure(
            arrays["pca_2d"],
            arrays["source"],
            names,
            arrays.get("lda_2d"),
            arrays.get("pca_explained_variance_ratio"),
        )
        caption = (
            f"Kept rows of each source ({sources}) in the instrument's embedding, projected on the first two "
            "principal components (left) and on the LDA discriminant(s) (right), coloured by source. "
            f"Cross-validated LDA accuracy {result.metric('lda_cv_accuracy'):.3g} (p = {result.metric('lda_p_value'):.3g}), "
            f"silhouette {result.metric('silhouette'):.3g}, Fisher ratio {result.metric('fisher_ratio'):.3g}."
        )
        out.append(
            Figure.from_matplotlib(
                fig, "sources in PCA and LDA", caption, model=model, dataset=", ".join(names)
            )
        )
    null = arrays.get("lda_null_accuracy")
    ratio = arrays.get("pca_explained_variance_ratio")
    if null is not None or ratio is not None:
        fig = separability_figure(
            null,
            result.metric("lda_cv_accuracy"),
            result.metric("chance_accuracy"),
            ratio,
            arrays.get("association_source"),
        )
        caption = (
            "Left: cross-validated LDA accuracy of predicting the source, against its distribution when the source "
            "labels are permuted (the p-value is the share of permutations at least as accurate). Right: the "
            "share of variance of each principal component and how strongly it tracks the source (correlation "
            f"ratio). Least separated pair: MMD p = {result.metric('mmd_p_value_max'):.3g}."
        )
        out.append(
            Figure.from_matplotlib(
                fig, "separability against chance", caption, model=model, dataset=", ".join(names)
            )
        )
    return out
