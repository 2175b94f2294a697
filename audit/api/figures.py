"""Figures that probes contribute to reports, and how the core collects them from every plugin.

Why a value type and not matplotlib objects: a report embeds finished images (PNG bytes or SVG text), so
a probe may draw with anything; the core never needs to know how. A probe implements the
``render_figures`` hook (see :mod:`audit.api.hookspecs`), looks at ``result.probe``, and returns
:class:`Figure` values drawn only from what the result stored — a report never recomputes a probe.

Helpers for the common case (matplotlib, no pyplot global state)::

    from audit import Figure
    from audit.api.figures import canvas

    fig = canvas(8, 3.5, ncols=2)            # a matplotlib.figure.Figure, constrained layout
    ax_left, ax_right = fig.axes
    ...
    return [Figure.from_matplotlib(fig, "title", "caption", model="m", dataset="d")]

:func:`audit.face.rendering.collect_figures` calls each plugin's renderer on its own, so a renderer that
raises costs only its own figures: the report shows "figure failed: …" and goes on.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import matplotlib.figure


# resolution of PNGs rendered from matplotlib: sharp on a laptop screen, ~50–150 kB a figure
DEFAULT_DPI = 110


@dataclass(frozen=True)
class Figure:
    """One finished image for a report: a title, a caption, and PNG bytes or SVG text (exactly one).

    ``model`` and ``dataset`` say what the figure describes when a result covers several (e.g. one
    candidate of a seed-ensemble job); None means the result as a whole.
    """

    title: str
    caption: str = ""
    png: bytes | None = None
    svg: str | None = None
    model: str | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        if (self.png is None) == (self.svg is None):
            raise ValueError(f"figure {self.title!r}: give exactly one of png (bytes) and svg (text)")
        if self.png is not None and not (isinstance(self.png, bytes) and self.png):
            raise ValueError(f"figure {self.title!r}: png must be non-empty bytes")
        if self.svg is not None and not (isinstance(self.svg, str) and self.svg.strip()):
            raise ValueError(f"figure {self.title!r}: svg must be non-empty text")

    @property
    def mime(self) -> str:
        return "image/png" if self.png is not None else "image/svg+xml"

    def data_uri(self) -> str:
        """The image as a ``data:`` URI, so an HTML page embeds it and needs no file or network."""
        raw = self.png if self.png is not None else self.svg.encode("utf-8")  # type: ignore[union-attr]
        return f"data:{self.mime};base64,{base64.b64encode(raw).decode('ascii')}"

    @classmethod
    def from_matplotlib(
        cls,
        fig: matplotlib.figure.Figure,
        title: str,
        caption: str = "",
        *,
        model: str | None = None,
        dataset: str | None = None,
        dpi: int = DEFAULT_DPI,
    ) -> Figure:
        """Render a matplotlib figure to PNG (Agg, through the figure itself: no pyplot state)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
        return cls(title=title, caption=caption, png=buf.getvalue(), model=model, dataset=dataset)


def canvas(
    width: float = 6.4, height: float = 4.0, *, nrows: int = 1, ncols: int = 1, **subplot_kw: Any
) -> matplotlib.figure.Figure:
    """A matplotlib Figure of nrows × ncols axes with constrained layout, made without pyplot.

    ``matplotlib.figure.Figure`` owns no global state (no figure manager, no backend switch), so
    rendering figures in a library never leaks open figures or changes a user's backend.
    """
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), layout="constrained")
    if nrows * ncols:
        fig.subplots(nrows, ncols, squeeze=False, subplot_kw=subplot_kw or None)
    return fig
