"""Every probe that reads a network (cka, entk, embedding, trimmed_ks) on the architectures users audit,
configured with no `layers`: a ResNet-18 written to torchvision's definition (in-place ReLUs, ``out +=
identity``, BatchNorm), Hugging Face models loaded from save_pretrained directories (ResNet, ViT, ViT
classifier, BERT), an ``nn.TransformerEncoder`` and LSTM/GRU classifiers (both sequence-first).

One project with all of them is built and run once (inline, through audit.toml, the runner and a real
catalog); each test reads what one architecture produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from architectures import RecurrentClassifier, TransformerClassifier, hf_models, resnet18, seeded
from safetensors.torch import save_file

from audit.catalog.store import Catalog
from audit.config import load_config
from audit.registry import installed_probes
from audit.run.plan import plan
from audit.run.runner import Runner

pytest.importorskip("transformers", reason="the Hugging Face architectures need transformers ([hf] extra)")

N = 24  # examples per dataset
SEEDS = (0, 1, 2)  # the reference ensemble of trimmed_ks: three initialisations of each architecture

FACTORIES = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from architectures import RecurrentClassifier, TransformerClassifier, resnet18, seeded

def resnet(seed=0):
    return resnet18(num_classes=3, seed=seed)

def transformer(seed=0):
    return seeded(TransformerClassifier, seed)

def recurrent(kind="lstm", seed=0):
    return seeded(RecurrentClassifier, seed, kind=kind)
"""

# name -> (how it is configured, its two datasets: in-distribution first)
ARCHITECTURES = {
    "resnet18": ("factory", ("images", "images_shifted")),
    "hf_resnet": ("huggingface", ("images", "images_shifted")),
    "hf_vit_model": ("huggingface", ("images", "images_shifted")),
    "hf_vit_classifier": ("huggingface", ("images", "images_shifted")),
    "hf_bert": ("huggingface", ("tokens", "tokens_low")),
    "transformer": ("factory", ("sequences", "sequences_shifted")),
    "lstm": ("factory", ("sequences", "sequences_shifted")),
    "gru": ("factory", ("sequences", "sequences_shifted")),
}


def _write_models(root: Path) -> list[str]:
    (root / "factories.py").write_text(FACTORIES)
    (root / "models").mkdir()
    tables = []
    for seed in SEEDS:
        for name, module in hf_models(seed).items():
            module.save_pretrained(root / "models" / f"{name}_s{seed}")
            tables.append(f'[models.{name}_s{seed}]\nhuggingface = "models/{name}_s{seed}"\n')
        built = {
            "resnet18": ("resnet", {}, resnet18(3, seed)),
            "transformer": ("transformer", {}, seeded(TransformerClassifier, seed)),
            "lstm": ("recurrent", {"kind": "lstm"}, seeded(RecurrentClassifier, seed, kind="lstm")),
            "gru": ("recurrent", {"kind": "gru"}, seeded(RecurrentClassifier, seed, kind="gru")),
        }
        for name, (factory, kwargs, module) in built.items():
            path = root / "models" / f"{name}_s{seed}.safetensors"
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
            kw = ", ".join(f'{k} = "{v}"' for k, v in kwargs.items())
            tables.append(
                f'[models.{name}_s{seed}]\nfactory = "factories:{factory}"\nkwargs = {{ {kw} }}\n'
                f'weights = "models/{path.name}"\n'
            )
    return tables


def _write_data(root: Path) -> list[str]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, N)
    images = rng.normal(size=(N, 3, 32, 32)).astype(np.float32)
    sequences = rng.normal(size=(N, 8, 6)).astype(np.float32)
    arrays = {
        "images": images,
        "images_shifted": images[::-1] * 0.5 + 1.0,
        "tokens": rng.integers(0, 50, (N, 12)),
        "tokens_low": rng.integers(0, 10, (N, 12)),  # another token distribution
        "sequences": sequences,
        "sequences_shifted": sequences[::-1] + 1.5,
    }
    tables = []
    for name, x in arrays.items():
        np.savez(root / f"{name}.npz", x=x, y=y)
        tables.append(f'[datasets.{name}]\npath = "{name}.npz"\ninputs = "x"\ntargets = "y"\n')
    return tables


def _entries(name: str, datasets: tuple[str, str]) -> list[dict]:
    # the exact eNTK of an 11M-parameter ResNet-18 is more than a test needs: a seeded subsample of
    # parameters (Campbell et al.) of the summed output; the small models take the exact trace kernel
    entk = {"max_examples": 8, "weight_spectra": False}
    if name == "resnet18":
        entk |= {"mode": "subsampled", "subsample_params": 20_000, "output": "sum"}
    first, second = f"{name}_s0", [f"{name}_s{s}" for s in SEEDS]
    return [
        {"probe": "cka", "models": [first], "datasets": list(datasets), "params": {"batch_size": 8}},
        {"probe": "entk", "models": [first], "datasets": [datasets[0]], "params": entk},
        {
            "probe": "embedding",
            "models": [first],
            "datasets": list(datasets),
            "params": {"permutations": 20, "mmd_permutations": 50, "folds": 3, "batch_size": 8},
        },
        {
            "probe": "trimmed_ks",
            "models": second,
            "datasets": [datasets[0]],
            "params": {"reference": f"{name}_s[12]", "batch_size": 8},
        },
    ]


def _toml(entries: list[dict]) -> str:
    out = []
    for e in entries:
        out.append("[[probes]]")
        for key in ("probe", "models", "datasets"):
            out.append(f"{key} = {json.dumps(e[key])}")
        params = ", ".join(f"{k} = {json.dumps(v)}" for k, v in e["params"].items())
        out.append(f"params = {{ {params} }}\n")
    return "\n".join(out)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Catalog:
    root = tmp_path_factory.mktemp("architectures")
    text = 'catalog = "catalog.duckdb"\nseed = 0\ndevice = "cpu"\n\n'
    text += "\n".join(_write_models(root) + _write_data(root))
    entries = [e for name, (_, data) in ARCHITECTURES.items() for e in _entries(name, data)]
    (root / "audit.toml").write_text(text + "\n" + _toml(entries))
    probes = installed_probes()
    config = load_config(root / "audit.toml", probes)
    catalog = Catalog(config.catalog)
    summary = Runner(config, catalog, torch.device("cpu")).run(plan(config, probes), ["pytest"])
    failed = [(o.job.label, o.job.probe.name, o.error) for o in summary.outcomes if o.status != "ok"]
    assert not failed, failed
    return catalog


def results(catalog: Catalog, name: str) -> dict[str, tuple[str, list[str]]]:
    """probe -> (result id, warnings) of the architecture's jobs."""
    _, rows = catalog.query(
        "select probe, result_id, warnings from results where list_contains(models, ?) and status = 'ok'",
        [f"{name}_s0"],
    )
    return {probe: (rid, json.loads(w) if isinstance(w, str) else list(w or [])) for probe, rid, w in rows}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_probe_runs_with_default_layers(catalog, name):
    found = results(catalog, name)
    assert set(found) == {"cka", "entk", "embedding", "trimmed_ks"}
    (view,) = catalog.result_views([found["cka"][0]])
    layers = list(view.arrays["layers"])
    assert len(layers) >= 3 and layers[-1] == "output"
    assert not any(layer.endswith("out_proj") for layer in layers)  # never called by attention
    for key in [k for k in view.arrays if k.startswith("matrix_")]:
        matrix = view.arrays[key]
        assert np.isfinite(matrix).all(), (key, layers)
        np.testing.assert_allclose(np.diag(matrix), 1.0, rtol=0, atol=1e-6)
    assert view.metric("nonpositive_self_hsic_layers") == 0
    (entk,) = catalog.result_views([found["entk"][0]])
    assert np.isfinite(entk.metric("ntk_effective_rank")) and entk.metric("ntk_effective_rank") >= 1
    (emb,) = catalog.result_views([found["embedding"][0]])
    assert 0.0 <= emb.metric("lda_cv_accuracy") <= 1.0
    (tks,) = catalog.result_views([found["trimmed_ks"][0]])
    assert 0.0 <= tks.metric("alpha_hat", model=f"{name}_s0") <= 1.0


@pytest.mark.slow
def test_resnet18_layers_are_every_conv_bn_and_fc(catalog):
    (view,) = catalog.result_views([results(catalog, "resnet18")["cka"][0]])
    layers = list(view.arrays["layers"])
    assert layers[:4] == ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1"]
    assert "layer2.0.downsample.1" in layers and layers[-2:] == ["fc", "output"]
    assert len(layers) == 42


@pytest.mark.slow
def test_structured_outputs_are_read_as_documented(catalog):
    """ViTModel and BertModel return pooler_output (no logits); the classifiers their logits."""
    for name, width in (("hf_vit_model", 32), ("hf_bert", 32), ("hf_vit_classifier", 3), ("hf_resnet", 3)):
        _, rows = catalog.query(
            "select value from metric_values where result_id = ? and metric = 'dimension'",
            [results(catalog, name)["embedding"][0]],
        )
        assert rows and rows[0][0] == pytest.approx(width), name
