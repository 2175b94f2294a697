"""The optimizer-forensics experiment (Wang et al. 2023) on a small seeded instance: the spectra separate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model_audit_probes.entk.forensics import (
    ADAM,
    EXPECTED,
    LARGE_STEP,
    NEAR_INIT,
    UNCLEAR,
    TwoLayer,
    classify,
    forensic_statistics,
    run_experiment,
    teacher_student_data,
    train,
)

D = 400


# 3–5 s per seed: the full suite only; tests/test_entk_forensics_cli.py checks the same separations on a
# smaller instance (d = h = n = 300, seed 0) in `-m "not slow"` too
@pytest.fixture(
    scope="module", params=[pytest.param(0, marks=pytest.mark.slow), pytest.param(1, marks=pytest.mark.slow)]
)
def table(request) -> dict[str, dict[str, float]]:
    return run_experiment(d=D, h=D, n=D, steps=600, seed=request.param)


def test_gd_and_small_sgd_leave_the_bulk(table):
    for name in ("gd", "sgd_small"):
        assert table[name]["spikes"] == 0, name
        assert table[name]["top_edge_ratio"] < 1.05, name


def test_large_step_sgd_spikes_past_the_edge(table):
    s = table["sgd_large"]
    assert s["spikes"] >= 10
    assert s["top_edge_ratio"] > 2.5
    assert s["alpha"] < 3.5 < min(table["gd"]["alpha"], table["sgd_small"]["alpha"])


def test_adam_update_is_high_rank(table):
    assert table["adam"]["dw_stable_rank"] > 5 * table["gd"]["dw_stable_rank"]
    assert table["adam"]["spikes"] < 5
    assert table["gd"]["dw_stable_rank"] < 3


def test_classify_maps_each_optimizer(table):
    for name, stats in table.items():
        assert classify(stats) == EXPECTED[name], (name, stats)


def test_small_step_update_aligns_with_teacher(table):
    # the low-rank change of GD / small-step SGD points along β; chance is about 1/√d = 0.05
    for name in ("gd", "sgd_small"):
        assert table[name]["align_dw"] > 6 / np.sqrt(D), name


def test_classify_rule_uses_the_count_past_the_edge():
    base = {"spikes": 0.0, "top_edge_ratio": 1.0, "dw_stable_rank": 1.5, "alpha": 2.0}
    assert classify(base) == NEAR_INIT  # a small α alone does not mean the spectrum changed
    assert classify({**base, "spikes": 20.0, "top_edge_ratio": 5.0}) == LARGE_STEP
    assert classify({**base, "spikes": 2.0, "top_edge_ratio": 1.1, "dw_stable_rank": 20.0}) == ADAM
    assert classify({**base, "spikes": 2.0}) == UNCLEAR


def test_teacher_data_and_student():
    x, y, beta = teacher_student_data(4000, 50, tau=1.0, noise=0.0, seed=3)
    assert x.shape == (4000, 50) and y.shape == (4000,) and beta.shape == (50,)
    assert x.dtype == torch.float32
    assert float(beta.norm()) == pytest.approx(1.0, abs=1e-6)
    quad = y - torch.tanh(x @ beta)  # the centred quadratic term has mean zero
    assert abs(float(quad.mean())) < 0.05
    model = TwoLayer(50, 60, seed=0)
    assert model.hidden.weight.shape == (60, 50)
    # the sample variance of 3000 N(0, 1/50) weights (seed 0) has relative sd √(2/2999) ≈ 0.026: 4 sd margin
    assert float(model.hidden.weight.detach().var()) == pytest.approx(1 / 50, rel=4 * math.sqrt(2 / 2999))
    assert not model.readout.weight.requires_grad
    w0 = model.hidden.weight.detach().clone()
    trained = train(model, x[:200], y[:200], "sgd_small", steps=5, seed=0)
    assert torch.equal(model.hidden.weight, w0)  # the original keeps W0
    assert not torch.equal(trained.hidden.weight, w0)
    assert torch.equal(trained.readout.weight, model.readout.weight)
    with pytest.raises(ValueError):
        train(model, x, y, "lbfgs", steps=1, seed=0)


def test_forensic_statistics_of_a_planted_spike():
    rng = np.random.default_rng(0)
    d = 200
    beta = rng.standard_normal(d)
    beta /= np.linalg.norm(beta)
    w0 = rng.standard_normal((d, d)) / np.sqrt(d)
    w = w0 + 3.0 * np.outer(rng.standard_normal(d) / np.sqrt(d), beta)
    s = forensic_statistics(w0, w, beta)
    assert s["spikes"] == 1
    assert s["dw_stable_rank"] == pytest.approx(1.0)
    assert s["align_dw"] == pytest.approx(1.0)
    assert s["align_w"] > 0.9
