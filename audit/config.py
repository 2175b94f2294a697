"""audit.toml → typed objects. Every error names the file, the key and what was expected.

Layout of the file (all paths relative to the file's folder)::

    catalog = ".audit/catalog.duckdb"   # optional, this is the default
    seed = 0                            # optional: seeds every probe's random generator
    device = "auto"                     # optional: auto | cpu | cuda | cuda:N

    [models.NAME]       factory = "module:function", kwargs = {...}, weights = "x.safetensors" | "x.pt"
                        or torchscript = "x.ts"  or  pickle = "x.pt" with trust = true
    [datasets.NAME]     path = "x.npz" | "x.npy" | "x.pt" | "x.parquet"  or  factory = "module:function"
                        inputs = "x", targets = "y" (optional), task = "classification" | "regression"
    [[probes]]          probe = "cka", models = [...], datasets = [...], params = {...}
    [[gates]]           probe, metric, min and/or max, model, dataset, baseline (all but probe/metric optional)
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import ConfigError
from audit.probe import Probe

DEFAULT_CATALOG = ".audit/catalog.duckdb"
DATASET_SUFFIXES = (".npz", ".npy", ".pt", ".pth", ".parquet")
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    torchscript: Path | None = None
    pickle: Path | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: Path | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: str | list[str] = "inputs"
    targets: str | None = None
    task: str | None = None


@dataclass(frozen=True)
class ProbeEntry:
    index: int
    probe: str
    models: list[str]
    datasets: list[str]
    params: dict[str, Any]


@dataclass(frozen=True)
class GateSpec:
    index: int
    probe: str
    metric: str
    min: float | None = None
    max: float | None = None
    model: str | None = None
    dataset: str | None = None
    baseline: str | None = None
    name: str = ""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        bounds = " and ".join(
            s
            for s in (
                f">= {self.min:g}" if self.min is not None else "",
                f"<= {self.max:g}" if self.max is not None else "",
            )
            if s
        )
        rel = f" - {self.baseline}" if self.baseline else ""
        return f"{self.probe}.{self.metric}{rel} {bounds}"


@dataclass(frozen=True)
class Config:
    path: Path
    root: Path
    catalog: Path
    seed: int
    device: str
    models: dict[str, ModelSpec]
    datasets: dict[str, DatasetSpec]
    probes: list[ProbeEntry]
    gates: list[GateSpec]
    text_hash: str


class _Table:
    """A view of one TOML table that reports errors with its dotted key path."""

    def __init__(self, file: Path, key: str, data: Any):
        if not isinstance(data, dict):
            raise ConfigError(file, key, f"expected a table, got {type(data).__name__}")
        self.file, self.key, self.data = file, key, data

    def sub(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.sub(name), message)

    def only(self, allowed: set[str]) -> None:
        for k in self.data:
            if k not in allowed:
                raise self.error(k, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def get(
        self, name: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False
    ) -> Any:
        if name not in self.data:
            if required:
                raise self.error(name, "missing (required)")
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"expected {_kind_names(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(name, f"expected {_kind_names(kinds)}, got {value!r}")
        return value

    def names(self, name: str, default: list[str] | None = None) -> list[str]:
        value = self.get(name, (list, str), default)
        if value is None:
            raise self.error(name, "missing (required): a list of names")
        value = [value] if isinstance(value, str) else value
        if not all(isinstance(v, str) for v in value):
            raise self.error(name, f"expected a list of names, got {value!r}")
        return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _path(root: Path, table: _Table, name: str, must_exist: bool = False) -> Path | None:
    value = table.get(name, str)
    if value is None:
        return None
    p = (root / value).resolve()
    if must_exist and not p.exists():
        raise table.error(name, f"file not found: {p}")
    return p


def _factory(table: _Table) -> str | None:
    value = table.get("factory", str)
    if value is not None and (value.count(":") != 1 or not all(value.split(":"))):
        raise table.error("factory", f"expected 'module:function', got {value!r}")
    return value


def _model(file: Path, root: Path, name: str, data: Any) -> ModelSpec:
    t = _Table(file, f"models.{name}", data)
    t.only({"factory", "kwargs", "weights", "torchscript", "pickle", "trust"})
    factory = _factory(t)
    kwargs = _Table(file, t.sub("kwargs"), t.get("kwargs", dict, {})).data
    weights = _path(root, t, "weights", must_exist=True)
    torchscript = _path(root, t, "torchscript", must_exist=True)
    pickled = _path(root, t, "pickle", must_exist=True)
    trust = t.get("trust", bool, False)
    if sum(x is not None for x in (factory, torchscript, pickled)) != 1:
        raise ConfigError(
            file,
            t.key,
            "expected exactly one of: factory (with weights), torchscript, or pickle (with trust = true)",
        )
    if weights is not None and factory is None:
        raise t.error("weights", "weights need a factory = 'module:function' that builds the module")
    if weights is not None and weights.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise t.error("weights", f"expected a .safetensors or a .pt/.pth state dict, got {weights.name!r}")
    if pickled is not None and not trust:
        raise t.error(
            "pickle",
            "loading a pickled module runs code from the file; set trust = true if you trust it, "
            "or save a state dict/safetensors and use factory + weights",
        )
    return ModelSpec(name, factory, dict(kwargs), weights, torchscript, pickled)


def _dataset(file: Path, root: Path, name: str, data: Any) -> DatasetSpec:
    t = _Table(file, f"datasets.{name}", data)
    t.only({"path", "factory", "kwargs", "inputs", "targets", "task"})
    path = _path(root, t, "path", must_exist=True)
    factory = _factory(t)
    if (path is None) == (factory is None):
        raise ConfigError(file, t.key, "expected exactly one of path = 'file' or factory = 'module:function'")
    if path is not None and path.suffix not in DATASET_SUFFIXES:
        raise t.error("path", f"expected one of {', '.join(DATASET_SUFFIXES)}, got {path.name!r}")
    kwargs = _Table(file, t.sub("kwargs"), t.get("kwargs", dict, {})).data
    inputs = t.get("inputs", (str, list), "inputs")
    if isinstance(inputs, list) and not all(isinstance(v, str) for v in inputs):
        raise t.error("inputs", f"expected an array name or a list of column names, got {inputs!r}")
    task = t.get("task", str)
    if task is not None and task not in TASKS:
        raise t.error("task", f"expected one of {', '.join(TASKS)}, got {task!r}")
    return DatasetSpec(name, path, factory, dict(kwargs), inputs, t.get("targets", str), task)


def _check_arity(t: _Table, key: str, given: list[str], bounds: tuple[int, int | None], probe: str) -> None:
    lo, hi = bounds
    if len(given) < lo:
        raise t.error(key, f"probe {probe!r} needs at least {lo}, got {len(given)}")
    if hi is not None and hi > 1 and len(given) > hi:
        raise t.error(key, f"probe {probe!r} takes at most {hi} per job, got {len(given)}")


def _probe_entry(
    file: Path, index: int, data: Any, cfg_models: dict, cfg_data: dict, probes: dict[str, Probe]
):
    t = _Table(file, f"probes[{index}]", data)
    t.only({"probe", "models", "datasets", "params"})
    name = t.get("probe", str, required=True)
    if name not in probes:
        raise t.error("probe", f"unknown probe {name!r} (installed: {', '.join(probes) or 'none'})")
    probe = probes[name]
    models = t.names("models", list(cfg_models) if probe.needs.models[0] > 0 else [])
    datasets = t.names("datasets", list(cfg_data) if probe.needs.datasets[0] > 0 else [])
    for m in models:
        if m not in cfg_models:
            raise t.error("models", f"unknown model {m!r} (defined: {', '.join(cfg_models) or 'none'})")
    for d in datasets:
        if d not in cfg_data:
            raise t.error("datasets", f"unknown dataset {d!r} (defined: {', '.join(cfg_data) or 'none'})")
    _check_arity(t, "models", models, probe.needs.models, name)
    _check_arity(t, "datasets", datasets, probe.needs.datasets, name)
    raw = _Table(file, t.sub("params"), t.get("params", dict, {})).data
    try:
        params = probe.validate_params(raw)
    except KeyError as e:
        raise t.error("params", e.args[0]) from None
    except ValueError as e:
        raise t.error("params." + str(e).split(":", 1)[0], str(e).split(":", 1)[1].strip()) from None
    return ProbeEntry(index, name, models, datasets, params)


def _gate(file: Path, index: int, data: Any, cfg: dict[str, Any], probes: dict[str, Probe]) -> GateSpec:
    t = _Table(file, f"gates[{index}]", data)
    t.only({"name", "probe", "metric", "min", "max", "model", "dataset", "baseline"})
    probe = t.get("probe", str, required=True)
    if probe not in probes:
        raise t.error("probe", f"unknown probe {probe!r} (installed: {', '.join(probes) or 'none'})")
    lo = t.get("min", (int, float))
    hi = t.get("max", (int, float))
    if lo is None and hi is None:
        raise ConfigError(file, t.key, "a gate needs min and/or max")
    if lo is not None and hi is not None and lo > hi:
        raise t.error("min", f"min ({lo}) is above max ({hi})")
    model = t.get("model", str)
    baseline = t.get("baseline", str)
    dataset = t.get("dataset", str)
    # a job over several models/datasets is labelled by their comma-joined names ("mlp_a,mlp_b")
    for key, value, kind in (
        ("model", model, "models"),
        ("baseline", baseline, "models"),
        ("dataset", dataset, "datasets"),
    ):
        for part in (value or "").split(",") if value else []:
            if part not in cfg[kind]:
                defined = ", ".join(cfg[kind]) or "none"
                raise t.error(key, f"unknown {kind[:-1]} {part!r} (defined: {defined})")
    return GateSpec(
        index,
        probe,
        t.get("metric", str, required=True),
        None if lo is None else float(lo),
        None if hi is None else float(hi),
        model,
        dataset,
        baseline,
        t.get("name", str, ""),
    )


def load_config(path: Path, probes: dict[str, Probe]) -> Config:
    """Parse and validate audit.toml against the installed probes."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            path, "", "file not found (create an audit.toml, pass --config, or try `audit demo`)"
        )
    raw_bytes = path.read_bytes()
    try:
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    root = path.resolve().parent
    top = _Table(path, "", raw)
    top.only({"catalog", "seed", "device", "models", "datasets", "probes", "gates"})
    models = {
        n: _model(path, root, n, d)
        for n, d in _Table(path, "models", top.get("models", dict, {})).data.items()
    }
    datasets = {
        n: _dataset(path, root, n, d)
        for n, d in _Table(path, "datasets", top.get("datasets", dict, {})).data.items()
    }
    probe_list = top.get("probes", list, [])
    entries = [_probe_entry(path, i, d, models, datasets, probes) for i, d in enumerate(probe_list)]
    known = {"models": models, "datasets": datasets}
    gates = [_gate(path, i, d, known, probes) for i, d in enumerate(top.get("gates", list, []))]
    device = top.get("device", str, "auto")
    catalog = (root / top.get("catalog", str, DEFAULT_CATALOG)).resolve()
    return Config(
        path=path.resolve(),
        root=root,
        catalog=catalog,
        seed=top.get("seed", int, 0),
        device=device,
        models=models,
        datasets=datasets,
        probes=entries,
        gates=gates,
        text_hash=hashlib.sha256(raw_bytes).hexdigest(),
    )
