"""Embeddings of each source, streamed once: a streaming PCA fed with every batch, and a seeded subsample
kept for the statistics that need the points themselves (LDA, cross-validation, MMD, silhouette).

One pass over the data is the design constraint: the forward passes of a large embedding model are the
expensive part, and 10⁶ × 4096 float32 embeddings (16 GB) do not fit in memory, while their d×d scatter
(134 MB in float64) does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from audit.api.errors import ProbeInputError
from model_audit_probes.embedding.choices import POOLINGS


def pool(t: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, d) stays; (batch, seq, d) is pooled over the sequence axis; more axes are flattened."""
    if t.dim() == 2:
        return t
    if t.dim() == 3 and how != "flatten":
        if how == "mean":
            return t.mean(dim=1)
        if how == "first":
            return t[:, 0]
        if how == "last":
            return t[:, -1]
        if how == "max":
            return t.amax(dim=1)
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")
    return t.reshape(t.shape[0], -1)


@dataclass
class Sample:
    """The kept rows of one source: embeddings (k, d) float64 and their targets (or None)."""

    x: np.ndarray
    targets: np.ndarray | None
    n_total: int


def keep_indices(n: int, keep: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded, sorted choice of min(n, keep) row indices, drawn before streaming."""
    return np.arange(n) if n <= keep else np.sort(rng.choice(n, size=keep, replace=False))


def collect(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor | None]], n: int, keep: np.ndarray, on_batch
) -> Sample:
    """Stream (embeddings, targets) batches: call on_batch(embeddings) for each, keep the rows in `keep`."""
    rows: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    start = 0
    lo = 0
    for emb, y in batches:
        if emb.dim() != 2:
            raise ProbeInputError(f"embeddings must be (batch, d) after pooling, got {tuple(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise ProbeInputError("the embeddings contain NaN or infinite values")
        on_batch(emb)
        stop = start + emb.shape[0]
        hi = int(np.searchsorted(keep, stop))
        if hi > lo:
            local = torch.from_numpy(keep[lo:hi] - start).to(emb.device)
            rows.append(emb.index_select(0, local).double().cpu().numpy())
            if y is not None:
                rows_y = y.reshape(y.shape[0], -1).index_select(0, local.to(y.device))
                ys.append(rows_y.cpu().numpy().reshape(hi - lo, -1).squeeze(1))
        lo, start = hi, stop
    if start != n:
        raise ProbeInputError(f"the dataset yielded {start} rows, expected {n}")
    if not rows:
        raise ProbeInputError("a source has no rows")
    return Sample(np.concatenate(rows), np.concatenate(ys) if ys else None, n)
