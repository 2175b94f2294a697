"""`audit.api.arrays.to_numpy`, the one torch/NumPy conversion the probes share."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from audit.api.arrays import to_numpy


def test_a_tensor_is_detached_moved_to_the_cpu_and_converted():
    t = torch.arange(4.0, requires_grad=True) * 2
    out = to_numpy(t)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.tolist() == [0, 2, 4, 6]
    assert to_numpy(t, np.float64).dtype == np.float64
    assert to_numpy(torch.tensor([1.5], dtype=torch.bfloat16)).tolist() == [1.5]  # NumPy has no bfloat16
    assert to_numpy(torch.tensor([3, 1]), np.int64).dtype == np.int64


def test_an_array_like_is_read_by_numpy_without_a_copy_when_it_already_fits():
    a = np.arange(3.0)
    assert to_numpy(a) is a and to_numpy(a, np.float64) is a
    assert to_numpy([1, 2], np.float64).tolist() == [1.0, 2.0]


def test_the_conversion_does_not_import_torch():
    code = "import sys; from model_audit_probes.entk import surrogates; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
