"""Models and datasets as plain data: what `audit.toml` declares, resolved against the config's folder.

These values travel from the driver to workers (other processes, other machines) inside a job, so they hold
only strings, numbers and paths, and :func:`relocated` moves their paths to where a worker finds the project.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

# model kinds a library builds: key -> (the module imported, the extra that installs it)
MODEL_LIBRARIES = {
    "huggingface": ("transformers", "hf"),
    "torchvision": ("torchvision", "torchvision"),
    "timm": ("timm", "timm"),
}
# the files a Hugging Face directory must hold: its config and safetensors weights (one file or sharded)
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def params_json(params: dict[str, Any]) -> str:
    """A probe's validated parameters as the catalog stores them (``results.params``): canonical JSON."""
    return json.dumps(params, sort_keys=True)


def params_fingerprint(params: dict[str, Any]) -> str:
    """What tells two probe entries apart in SQL (``results/metrics.params_fingerprint``): the first 16 hex
    digits of the SHA-256 of :func:`params_json`. Migration 3 computes the same value in SQL for results
    stored before it (``left(sha256(params::varchar), 16)``), so keep the two definitions together."""
    return hashlib.sha256(params_json(params).encode()).hexdigest()[:16]

@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    torchscript: Path | None = None
    pickle: Path | None = None
    family: str | None = None  # the [models.NAME] table of a glob-expanded model ("NAME/<file stem>")
    huggingface: Path | None = None  # a save_pretrained directory: config.json + model.safetensors
    torchvision: str | None = None  # a torchvision.models name, built with weights=None
    timm: str | None = None  # a timm model name, built with pretrained=False
    model_class: str | None = None  # `class = "..."`: the transformers class of a huggingface directory
    output: str | int | None = None  # what probes see of a structured forward result; None = "auto"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: Path | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: str | list[str] = "inputs"
    targets: str | None = None
    task: str | None = None
    # rows with a NaN or infinite input or target: None (the default) refuses the dataset at load, naming
    # the array, the count and the first row; "drop" leaves those rows out (array datasets)
    nonfinite: str | None = None


Spec = TypeVar("Spec", ModelSpec, DatasetSpec)


def relocated(spec: Spec, old_root: Path, new_root: Path) -> Spec:
    """The spec with every path under `old_root` moved under `new_root` (a worker whose copy of the project
    lies elsewhere, e.g. a Ray node); paths outside the project stay as they are."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, Path) and value.is_relative_to(old_root):
            changes[f.name] = new_root / value.relative_to(old_root)
    return dataclasses.replace(spec, **changes) if changes else spec


def as_json(spec: ModelSpec | DatasetSpec) -> dict[str, Any]:
    """The spec's set fields, paths as strings (what the catalog's models/datasets tables record)."""
    return {
        f.name: (str(v) if isinstance(v, Path) else v)
        for f in dataclasses.fields(spec)
        if (v := getattr(spec, f.name)) not in (None, {}, [])
    }
