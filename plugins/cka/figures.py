"""Figures of a stored `cka` result, drawn only from its stored arrays and metrics (nothing recomputed).

As in Gondhalekar et al. (Fig. 1): the layer×layer CKA matrix of the in-distribution and the
out-of-distribution data side by side on one colour scale, then the distribution of the off-diagonal
values and the eigenvalue spectrum of each matrix — a block structure on OOD data (layers that stopped
transforming the representation) shows as a heavier upper tail of the off-diagonal histogram and a
larger leading eigenvalue. For model A against model B: the A×B matrix and the distribution of its
entries. In the terminal (`audit show`): each matrix as a coloured grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from audit import Figure, ResultView
from audit.api.figures import canvas
from model_audit_probes.cka.summary import offdiagonal

CMAP = "viridis"


def _labels(result: ResultView, name: str) -> list[str]:
    return [str(x) for x in np.asarray(result.arrays[name]).ravel()]


def _ticks(ax, labels: Sequence[str], axis: str, max_ticks: int = 24) -> None:
    step = max(1, -(-len(labels) // max_ticks))
    idx = list(range(0, len(labels), step))
    if axis == "x":
        ax.set_xticks(idx, [labels[i] for i in idx], rotation=90, fontsize=7)
    else:
        ax.set_yticks(idx, [labels[i] for i in idx], fontsize=7)


def heatmaps(
    panels: Sequence[tuple[str, np.ndarray]],
    rows: Sequence[str],
    cols: Sequence[str] | None = None,
    *,
    xlabel: str = "layer",
    ylabel: str = "layer",
):
    """One CKA heatmap per (title, matrix) side by side on the shared scale [0, 1] (NaN in grey)."""
    import matplotlib

    cols = list(rows if cols is None else cols)
    cmap = matplotlib.colormaps[CMAP].with_extremes(bad="#c8c8c8")
    side = 3.6 if len(panels) > 1 else 4.4
    fig = canvas(side * len(panels) + 1.0, side + 0.4, ncols=len(panels))
    image = None
    for ax, (title, m) in zip(fig.axes, panels, strict=True):
        image = ax.imshow(np.asarray(m, dtype=float), vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        _ticks(ax, cols, "x")
        _ticks(ax, rows, "y")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
    fig.colorbar(image, ax=fig.axes, shrink=0.85, label="linear CKA")
    return fig


def distributions(panels: Sequence[tuple[str, np.ndarray, np.ndarray]]):
    """Off-diagonal histogram (i < j) and eigenvalue spectrum of each (label, matrix, eigenvalues)."""
    fig = canvas(9.0, 3.4, ncols=2)
    ax_h, ax_e = fig.axes
    bins = np.linspace(0.0, 1.0, 26)
    for label, m, eig in panels:
        off = offdiagonal(m)
        lo = min(0.0, float(off.min())) if off.size else 0.0
        edges = bins if lo >= 0 else np.linspace(lo, 1.0, 26)
        ax_h.hist(off, bins=edges, histtype="step", linewidth=1.6, label=f"{label} (n = {off.size})")
        eig = np.asarray(eig, dtype=float)
        ax_e.plot(np.arange(1, eig.size + 1), eig, marker="o", markersize=4, linewidth=1.2, label=label)
    ax_h.set_xlabel("off-diagonal CKA (i < j)")
    ax_h.set_ylabel("layer pairs")
    ax_h.set_title("off-diagonal distribution", fontsize=10)
    ax_e.set_xlabel("index")
    ax_e.set_ylabel("eigenvalue of (M + Mᵀ)/2")
    ax_e.set_title("eigenvalue spectrum", fontsize=10)
    positive = np.concatenate([np.asarray(e, dtype=float) for _, _, e in panels])
    positive = positive[positive > 0]
    if (
        positive.size
        and positive.max() / positive.min() > 100
        and (positive.size == sum(len(e) for *_, e in panels))
    ):
        ax_e.set_yscale("log")
    for ax in (ax_h, ax_e):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig


def _fmt(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.3g}"


def render(result: ResultView) -> list[Figure]:
    """The figures of one stored cka result (single model: one or two datasets; or model A × model B)."""
    arrays = result.arrays
    model = ",".join(result.models)
    if "layers_a" in arrays:  # two models on one dataset
        a, b = result.models[:2]
        m = arrays["matrix"]
        fig = heatmaps(
            [(f"{a} × {b}", m)],
            _labels(result, "layers_a"),
            _labels(result, "layers_b"),
            xlabel=f"layer of {b}",
            ylabel=f"layer of {a}",
        )
        caption = (
            f"Linear CKA between every layer of {a} (rows) and of {b} (columns) on {', '.join(result.datasets)}. "
            f"Mean {_fmt(result.metric('cross_mean'))}, diagonal mean {_fmt(result.metric('cross_diag_mean'))}, "
            f"best match per layer of {a} {_fmt(result.metric('cross_best_match_mean'))}."
        )
        out = [Figure.from_matplotlib(fig, "CKA between two models", caption, model=model)]
        dist = canvas(5.0, 3.4)
        ax = dist.axes[0]
        finite = np.asarray(m, dtype=float)[np.isfinite(m)]
        ax.hist(
            finite,
            bins=np.linspace(min(0.0, finite.min(initial=0.0)), 1.0, 26),
            histtype="stepfilled",
            alpha=0.6,
        )
        if m.shape[0] == m.shape[1]:
            d = np.diag(m)
            for v in d[np.isfinite(d)]:
                ax.axvline(v, color="black", linewidth=0.6, alpha=0.5)
        ax.set_xlabel("CKA")
        ax.set_ylabel("layer pairs")
        ax.grid(alpha=0.3)
        out.append(
            Figure.from_matplotlib(
                dist,
                "distribution of the cross-model CKA",
                "All entries of the A×B matrix; thin vertical lines: the diagonal (layer i of A against layer i of B) "
                "when both models have as many layers.",
                model=model,
            )
        )
        return out

    layers = _labels(result, "layers")
    if len(result.datasets) == 1:
        named = [(result.datasets[0], arrays["matrix"], arrays["eigenvalues"])]
        roles = [result.datasets[0]]
    else:
        named = [(d, arrays[f"matrix_{d}"], arrays[f"eigenvalues_{d}"]) for d in result.datasets]
        roles = [f"ID: {named[0][0]}", *(f"OOD: {d}" for d, _, _ in named[1:])]
    fig = heatmaps([(role, m) for role, (_, m, _) in zip(roles, named, strict=True)], layers)
    if len(named) == 1:
        d = named[0][0]
        caption = (
            f"Linear CKA (unbiased minibatch HSIC) between every pair of hooked layers of {model} on {d}: "
            f"off-diagonal mean {_fmt(result.metric('offdiag_mean'))}, skew {_fmt(result.metric('offdiag_skew'))}, "
            f"leading eigenvalue share {_fmt(result.metric('eig_1_share'))}."
        )
    else:
        (id_d, *_), (ood_d, *_) = named[0], named[-1]

        def both(metric: str) -> str:
            return (
                f"{_fmt(result.metric(metric, dataset=id_d))} → {_fmt(result.metric(metric, dataset=ood_d))}"
            )

        caption = (
            f"Linear CKA between every pair of hooked layers of {model}, in distribution ({id_d}, left) and out of "
            f"distribution ({ood_d}, right), on one colour scale. A block of high off-diagonal values on OOD "
            f"data flags layers that no longer transform the representation (Gondhalekar et al.). ID → OOD: "
            f"off-diagonal mean {both('offdiag_mean')}, skew {both('offdiag_skew')}, leading eigenvalue share "
            f"{both('eig_1_share')}; Frobenius Δ {_fmt(result.metric('frobenius_delta'))}."
        )
        if np.isfinite(result.metric("accuracy", dataset=id_d)):
            caption += f" Accuracy {both('accuracy')}."
    out = [Figure.from_matplotlib(fig, "layer×layer CKA", caption, model=model)]
    dist = distributions([(role, m, e) for role, (_, m, e) in zip(roles, named, strict=True)])
    out.append(
        Figure.from_matplotlib(
            dist,
            "off-diagonal CKA and eigenvalue spectrum",
            "Left: histogram of the off-diagonal entries (i < j) of each matrix; right: the eigenvalues of the "
            "symmetrised matrix, descending (a dominant first eigenvalue means most layers look alike).",
            model=model,
        )
    )
    return out


def terminal(result: ResultView) -> list:
    """Each stored CKA matrix as a coloured grid for `audit show`."""
    from audit.api.terminal import matrix_grid

    arrays = result.arrays
    if "layers_a" in arrays:
        a, b = result.models[:2]
        return [
            matrix_grid(
                arrays["matrix"],
                _labels(result, "layers_a"),
                _labels(result, "layers_b"),
                title=f"CKA {a} (rows) × {b} (columns) on {', '.join(result.datasets)}",
                width=_width(),
            )
        ]
    layers = _labels(result, "layers")
    names = ["matrix"] if len(result.datasets) == 1 else [f"matrix_{d}" for d in result.datasets]
    return [
        matrix_grid(arrays[n], layers, title=f"CKA of {','.join(result.models)} on {d}", width=_width())
        for n, d in zip(names, result.datasets, strict=True)
    ]


def _width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 40)).columns
