"""`audit demo`: a small, real example project built in seconds on data that ships with scikit-learn.

It trains two MLPs (different seeds and widths) on the bundled 8×8 digits — plus a ten-seed ensemble of one
small recipe and five candidates (a held-out seed, twice the epochs, another optimizer, fewer epochs, 30 %
corrupted labels)
for the seed-variability probe — writes the training split, an
in-distribution test split and an out-of-distribution variant (the same test digits rotated by 90° plus pixel noise),
saves weights as safetensors and writes an audit.toml in which every installed probe that offers a
demo configuration appears (a third-party probe joins by implementing ``Probe.demo_entries``).
"""

from __future__ import annotations

import json
import time
from importlib import resources
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
    for name, probe in installed_probes().items():
        extra = probe.demo_tables()
        for kind in tables:
            tables[kind].update(extra.get(kind, {}))
        models = list(_recipes()) + list(extra.get("models", {}))
        datasets = {**DATASETS, **{n: n for n in extra.get("datasets", {})}}
        offered = probe.demo_entries(models, datasets)
        if not offered:
            say(f"[dim]probe {name!r} offers no demo configuration; not in the demo[/]")
        entries += offered
        gates += probe.demo_gates(models, datasets)
    (directory / "audit.toml").write_text(_config_text(entries, gates, tables))
    return directory
