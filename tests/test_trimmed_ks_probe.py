"""The `trimmed_ks` probe: in-process on hand-made ensembles, and end to end on the demo project."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from audit.api.context import Context, DatasetHandle, ModelHandle
from conftest import audit_cli
from model_audit_probes.trimmed_ks import dalpha
from model_audit_probes.trimmed_ks import metrics as tm
from model_audit_probes.trimmed_ks.probe import TrimmedKSProbe

# ------------------------------------------------------------------ in process: a Context, no catalog


class Fixed(nn.Module):
    """A 'model' whose logits for example i are row i of a table (inputs are the row indices)."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.register_buffer("table", torch.from_numpy(logits))

    def forward(self, idx):
        return self.table[idx.long().reshape(-1)]


def dataset(y: np.ndarray) -> DatasetHandle:
    idx = np.arange(len(y))

    def batches(bs, device):  # onto the job's device, as the runner's datasets do
        for s in range(0, len(y), bs):
            yield torch.from_numpy(idx[s : s + bs]).to(device), torch.from_numpy(y[s : s + bs]).to(device)

    return DatasetHandle("test", "fp-test", len(y), "classification", True, batches)


def run_probe(tables: dict[str, np.ndarray], y: np.ndarray, device="cpu", **params):
    handles = [ModelHandle(name, f"fp-{name}", (lambda t=t: Fixed(t).to(device))) for name, t in tables.items()]
    probe = TrimmedKSProbe()
    ctx = Context(handles, [dataset(y)], torch.device(device), seed=0)
    return probe.run(ctx, probe.validate_params(params))


def values(result, name):
    return {m.model: m.value for m in result.metrics if m.name == name}


def binary_ensemble(rng, n=2000, members=8):
    """Logit margins of siblings: a shared signal plus seed noise; y from the signal."""
    signal = rng.normal(size=n)
    y = (signal + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    tables = {
        f"seed/{i}": np.stack([np.zeros(n), 2 * signal + 0.3 * rng.normal(size=n)], 1) for i in range(members)
    }
    return signal, y, tables


def test_sibling_passes_and_contaminated_candidate_is_trimmed_by_its_contamination(device):
    rng = np.random.default_rng(0)
    signal, y, tables = binary_ensemble(rng)
    n = len(y)
    tables["cand_sibling"] = np.stack([np.zeros(n), 2 * signal + 0.3 * rng.normal(size=n)], 1)
    bad = 2 * signal + 0.3 * rng.normal(size=n)
    hit = rng.random(n) < 0.3
    bad[hit] += 6.0  # 30 % of its behaviour pushed far out: extra mass the reference does not have
    tables["cand_shifted"] = np.stack([np.zeros(n), bad], 1)
    result = run_probe(tables, y, device, reference="seed/*")
    a = values(result, "alpha_hat")
    assert set(a) == {*(f"seed/{i}" for i in range(8)), "cand_sibling", "cand_shifted"}
    assert a["cand_sibling"] <= 0.05
    assert max(a[f"seed/{i}"] for i in range(8)) <= 0.05
    assert 0.2 < a["cand_shifted"] < 0.4  # about the contaminated share
    assert result.arrays["score_kind"].tolist() == ["margin"]
    assert result.arrays["reference_models"].tolist() == [f"seed/{i}" for i in range(8)]
    # disjoint halves: the candidate's sample is half the test set, the reference pools 8 halves
    assert result.arrays["cand_shifted:scores"].shape == (n // 2,)
    assert result.arrays["reference:scores"].shape == (8 * (n - n // 2),)
    # α̂ is exactly the root of d_α = threshold on these very samples
    x, ref = result.arrays["cand_shifted:scores"], result.arrays["reference:scores"]
    c = dalpha.threshold("ks_asymptotic", len(x), len(ref))
    assert dalpha.trimmed_ks_distance(x, a["cand_shifted"], ref) == pytest.approx(c, abs=1e-9)


def test_the_candidate_is_never_in_its_own_reference(device):
    # identical copies of one candidate in the reference would make it pass; leave-one-out must not
    rng = np.random.default_rng(1)
    _, y, tables = binary_ensemble(rng, n=600, members=3)
    odd = np.stack([np.zeros(600), 10 + rng.normal(size=600)], 1)
    tables["seed/odd"] = odd  # a reference member unlike its siblings
    result = run_probe(tables, y, device, reference="seed/*", split="same")
    assert values(result, "alpha_hat")["seed/odd"] > 0.5
    assert result.arrays["seed/odd:scores"].shape == (600,)  # split = same: every example on both sides


def test_companions_match_direct_computation(device):
    rng = np.random.default_rng(2)
    n, c = 500, 4
    y = rng.integers(0, c, n)
    tables = {f"seed/{i}": rng.normal(size=(n, c)) + 2 * np.eye(c)[y] for i in range(5)}
    tables["cand"] = rng.normal(size=(n, c)) + 2 * np.eye(c)[y]
    result = run_probe(tables, y, device, reference="seed/*", leave_one_out=False)
    pred = tables["cand"].argmax(1)
    refs = [tables[f"seed/{i}"] for i in range(5)]
    churns = [np.mean(pred != r.argmax(1)) for r in refs]
    assert values(result, "accuracy") == {"cand": pytest.approx(np.mean(pred == y))}
    assert values(result, "churn_mean")["cand"] == pytest.approx(np.mean(churns))
    assert values(result, "churn_min")["cand"] == pytest.approx(min(churns))
    assert values(result, "churn_max")["cand"] == pytest.approx(max(churns))
    ens = np.mean([np.exp(r) / np.exp(r).sum(1, keepdims=True) for r in refs], axis=0).argmax(1)
    assert values(result, "churn_ensemble")["cand"] == pytest.approx(np.mean(pred != ens))
    p = np.exp(tables["cand"]) / np.exp(tables["cand"]).sum(1, keepdims=True)
    assert values(result, "ece")["cand"] == pytest.approx(tm.expected_calibration_error(p, y, 15))
    assert result.arrays["score_kind"].tolist() == ["true_logprob"]  # the documented choice for C > 2
    assert "null_alpha_hat_max" not in {m.name for m in result.metrics}  # leave_one_out = false


def test_bad_reference_and_score_choices_are_refused():
    rng = np.random.default_rng(3)
    _, y, tables = binary_ensemble(rng, n=100, members=2)
    with pytest.raises(ValueError, match="name the reference ensemble"):
        run_probe(tables, y)
    with pytest.raises(ValueError, match="matches 0 of the job's models"):
        run_probe(tables, y, reference="ref/*")
    tables10 = {k: np.concatenate([v, np.zeros((100, 8))], 1) for k, v in tables.items()}
    with pytest.raises(ValueError, match="binary"):
        run_probe(tables10, y, reference="seed/*", score="margin")


# ------------------------------------------------------------------ end to end on the demo project


@pytest.fixture
def ran(demo_ran):
    """A copy of the demo project after `audit demo` ran every probe (the demo's gates need them all)."""
    return demo_ran


def latest(project, metric):
    out = audit_cli(
        "query",
        f"select model, value from latest_metrics where probe = 'trimmed_ks' and metric = '{metric}'",
        "--format",
        "json",
        "--config",
        str(project / "audit.toml"),
    )
    return {r["model"]: r["value"] for r in json.loads(out.stdout)}


def test_demo_ensemble_ranks_the_candidates(ran):
    a = latest(ran, "alpha_hat")
    assert len([m for m in a if m.startswith("seed/")]) == 10  # every sibling against the other nine
    assert a["cand_seed"] <= 0.1  # a held-out seed of the same recipe sits within seed variability
    assert 0.1 < a["cand_long"] < 1  # twice the epochs: over-confident on a share of the examples
    for name in ("cand_sgd", "cand_short", "cand_noisy"):  # under-confident everywhere: no trimming helps
        assert a[name] == 1
    limit = latest(ran, "d_alpha_limit")
    assert min(limit[n] for n in ("cand_sgd", "cand_short", "cand_noisy")) > 5 * limit["cand_seed"]
    acc, churn = latest(ran, "accuracy"), latest(ran, "churn_mean")
    for name in a:  # |err_f − err_g| ≤ churn ≤ err_f + err_g holds on average over the references too
        assert churn[name] <= (1 - acc[name]) + max(1 - acc[m] for m in a if m.startswith("seed/")) + 1e-12


def test_gate_on_alpha_hat_and_its_markdown_context(ran, tmp_path):
    config = ran / "audit.toml"
    ok = audit_cli("gate", "--config", str(config), "--markdown", str(tmp_path / "ok.md"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    config.write_text(
        config.read_text()
        + '\n[[gates]]\nprobe = "trimmed_ks"\nmetric = "alpha_hat"\nmodel = "cand_*"\nmax = 0.1\n'
    )
    failed = audit_cli("gate", "--config", str(config), "--markdown", str(tmp_path / "g.md"))
    assert failed.returncode == 1
    md = (tmp_path / "g.md").read_text()
    sgd = next(line for line in md.splitlines() if "| cand_sgd |" in line)
    assert "❌ fail" in sgd and "accuracy" in sgd and "churn_mean" in sgd and "ece" in sgd
    seed = next(line for line in md.splitlines() if "| cand_seed |" in line)
    assert "✅ pass" in seed


def test_adding_a_candidate_computes_only_its_outputs(ran):
    config = ran / "audit.toml"
    count = "select count(*) as n, max(created_at) as t from model_outputs"
    before = json.loads(audit_cli("query", count, "--format", "json", "--config", str(config)).stdout)[0]
    from safetensors.torch import load_file, save_file

    weights = load_file(ran / "models" / "cand_seed.safetensors")  # new content: a new fingerprint
    g = torch.Generator().manual_seed(0)
    save_file(
        {k: v + 1e-4 * torch.randn(v.shape, generator=g) for k, v in weights.items()},
        ran / "models" / "cand_copy.safetensors",
    )
    text = config.read_text()
    block = text[text.index("[models.cand_seed]") :].split("\n\n")[0]
    config.write_text(text.replace(block, block + "\n\n" + block.replace("cand_seed", "cand_copy")))
    r = audit_cli("run", "trimmed_ks", "--config", str(config))
    assert r.returncode == 0, r.stderr
    after = json.loads(audit_cli("query", count, "--format", "json", "--config", str(config)).stdout)[0]
    assert after["n"] == before["n"] + 1  # one new (model, dataset) output row: the reference was reused
    a = latest(ran, "alpha_hat")
    assert a["cand_copy"] <= 0.1  # nearly the same weights: within seed variability too
