"""benchmarks/bench_gpu.py --smoke: every section runs at small sizes on each device, and its own error
columns show our paths at their float64 accuracy (a few seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SUBPROCESS_ENV

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def test_bench_gpu_smoke_runs_every_section(tmp_path, device):
    pytest.importorskip("sklearn")
    out = tmp_path / "smoke.json"
    ran = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--device", str(device), "--json", str(out)],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    for title in ("## CKA", "## eNTK", "## embedding", "floor: forward", "Jacobian contraction float64"):
        assert title in ran.stdout
    got = json.loads(out.read_text())
    assert got["smoke"] and got["device"].startswith(device.type)
    cka = {r["label"].split(":")[0]: r for r in got["cka"]["rows"]}
    # float32 Grams, centred and summed in float64: far below float32's 6e-8 per Gram entry
    assert cka["ours"]["max_error"] < 1e-5 and got["cka"]["t_ours"] > 0
    entk = {r["label"]: r for r in got["entk"]["rows"]}
    assert got["entk"]["reference"] == "Jacobian contraction float64"
    assert entk["ours float64"]["max_rel_error"] < 1e-12  # float64 rounding of two independent routes
    # float32: ~1e-7 on the CPU; cuDNN's convolutions on CUDA, 2e-4 measured (see test_entk_kernels)
    assert entk["ours float32"]["max_rel_error"] < (1e-5 if device.type == "cpu" else 1e-3)
    emb = got["embedding"]
    assert emb["pca"]["max_evr_error"] < 1e-10  # float64 scatter: rounding only
    assert emb["mmd"]["rel_error"] < 1e-10  # the same float64 statistic, other kernel code
    assert emb["lda"]["disagreement"] <= 0.01  # the same estimator: a tie may differ, nothing more
