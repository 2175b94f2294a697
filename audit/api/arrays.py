"""Arrays at the torch/NumPy boundary: what a probe's mathematics converts its inputs with.

A probe's functions usually accept either a torch tensor (on any device, possibly requiring grad) or
anything NumPy reads; :func:`to_numpy` is the one conversion they share. It does not import torch: a
tensor cannot exist before torch is imported, so a module of NumPy/SciPy mathematics that uses it
(``model_audit_probes.entk.surrogates``) stays free of torch.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["to_numpy"]


def to_numpy(x: Any, dtype: npt.DTypeLike = None) -> np.ndarray:
    """A NumPy array of a torch tensor (detached, moved to the CPU; bfloat16, which NumPy lacks, widened to
    float32) or of an array-like, converted to `dtype` when one is given. No copy when `x` already is a CPU
    array (or tensor) of that dtype."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        x = x.cpu().numpy()
    return np.asarray(x, dtype=dtype)
