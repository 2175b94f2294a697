"""audit.toml → typed objects. Every error names the file, the key and what was expected.

Layout of the file (all paths relative to the file's folder)::

    catalog = ".audit/catalog.duckdb"   # optional, this is the default
    seed = 0                            # optional: seeds every probe's random generator
    device = "auto"                     # optional: auto | cpu | cuda | cuda:N

    [models.NAME]       factory = "module:function", kwargs = {...}, weights = "x.safetensors" | "x.pt"
                        or torchvision = "resnet18" / timm = "resnet18" (kwargs, optional weights)
                        or huggingface = "dir" (save_pretrained: config.json + model.safetensors),
                           class = "ViTForImageClassification" (optional), kwargs → from_pretrained
                        or torchscript = "x.ts"  or  pickle = "x.pt" with trust = true
                        output = "auto" | "logits" | "hidden_states.-1" | 0: what the probes see of a
                        structured forward result (any kind but torchscript)
                        weights/torchscript/pickle may be a glob ("ckpt/seed_*.safetensors"): a family,
                        one model per matching file in sorted order, named "NAME/<file stem>"
    [datasets.NAME]     path = "x.npz" | "x.npy" | "x.pt" | "x.parquet"  or  factory = "module:function"
                        inputs = "x", targets = "y" (optional), task = "classification" | "regression",
                        nonfinite = "error" (default: a NaN/inf input or target refuses the dataset) | "drop"
    [[probes]]          probe = "cka", models = [...], datasets = [...], params = {...}, label = "..."
    [[gates]]           probe, metric, min and/or max, model, dataset, baseline, entry (all but probe/metric
                        optional; `entry` = the label of the probe entry to read, required when one probe
                        has entries with different parameters); against = "accepted:NAME" | "git:REF" |
                        "run:ID" with max_increase and/or max_decrease (a number: absolute; "5%": relative
                        to |baseline value|): bounds on the change from that baseline (audit.history)

Model and dataset names in [[probes]] and the model/dataset of [[gates]] may be fnmatch patterns
("seed/*", "cand_?"). In a probe entry a pattern expands to the matching names in order of definition,
each name once; a pattern that matches no defined name is an error.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import importlib.util
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.api.errors import ConfigError
from audit.api.probe import Probe
from audit.history import Change, parse_against, parse_change
from audit.specs import HF_CONFIG, HF_WEIGHTS, MODEL_LIBRARIES, DatasetSpec, ModelSpec, params_fingerprint

DEFAULT_CATALOG = ".audit/catalog.duckdb"
DEFAULT_EXECUTOR = "local"  # the executor of a run that names none (audit.run.executors re-exports it)
DATASET_SUFFIXES = (".npz", ".npy", ".pt", ".pth", ".parquet")
TASKS = ("classification", "regression")
MODEL_FILE_KEYS = ("weights", "torchscript", "pickle")
# kwargs that would download weights or bypass the offline, safetensors-only loading: set by model-audit
_RESERVED_KWARGS = {
    "huggingface": ("local_files_only", "use_safetensors", "output_loading_info"),
    "torchvision": ("weights", "weights_backbone", "pretrained", "pretrained_backbone"),
    "timm": ("pretrained", "checkpoint_path"),
}
MODEL_KEYS = {*MODEL_FILE_KEYS, *MODEL_LIBRARIES, "factory", "kwargs", "trust", "output", "class"}
_OUTPUT_RULE = re.compile(r"[A-Za-z0-9_.\-\[\]]+")
_GLOB_CHARS = frozenset("*?[")


def is_pattern(value: str) -> bool:
    """Whether a path or name is a glob/fnmatch pattern (contains ``*``, ``?`` or ``[``)."""
    return not _GLOB_CHARS.isdisjoint(value)


def match_names(pattern: str, names: Any) -> list[str]:
    """The names (in their given order) that an exact name or an fnmatch pattern selects (case-sensitive)."""
    if not is_pattern(pattern):
        return [pattern] if pattern in names else []
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


@dataclass(frozen=True)
class ProbeEntry:
    index: int
    probe: str
    models: list[str]
    datasets: list[str]
    params: dict[str, Any]
    # how results, `metrics` rows, gates and the report name this entry: the config's `label`, else the
    # probe's name, or, when one probe has entries with different parameters, the name plus the parameters
    # that differ from the defaults ("cka(batch_size=64)"; the entry of default parameters stays "cka")
    label: str = ""

    @property
    def params_fingerprint(self) -> str:
        return params_fingerprint(self.params)


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
    # the defined models a `model` pattern matched when the config was loaded: each must have a stored
    # value, or the gate reports it as missing (a pattern gate must not pass because a model never ran)
    expected_models: tuple[str, ...] = ()
    # the probe entry whose results the gate reads: its label and its parameters' fingerprint (None: any
    # parameters — a gate built in code; the config always sets it)
    entry: str = ""
    params_fingerprint: str | None = None
    # a comparison with history (audit.history): `against` names the baseline results ("accepted:main",
    # "run:ID", "git:REF"; `audit gate --against` replaces it), and the bounds on the change value − baseline
    # value of the same entry, metric, model and dataset there; min/max still apply to the value itself
    against: str | None = None
    max_increase: Change | None = None
    max_decrease: Change | None = None

    @property
    def compares_history(self) -> bool:
        return self.max_increase is not None or self.max_decrease is not None

    @property
    def bounds(self) -> str:
        """The gate's bounds in words: ">= 0.9 and decrease <= 2% vs accepted:main"."""
        parts = [
            s
            for s in (
                f">= {self.min:g}" if self.min is not None else "",
                f"<= {self.max:g}" if self.max is not None else "",
                f"increase <= {self.max_increase.text}" if self.max_increase is not None else "",
                f"decrease <= {self.max_decrease.text}" if self.max_decrease is not None else "",
            )
            if s
        ]
        text = " and ".join(parts)
        return f"{text} vs {self.against}" if self.compares_history and self.against else text

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        rel = f" - {self.baseline}" if self.baseline else ""
        return f"{self.source}.{self.metric}{rel} {self.bounds}"

    @property
    def source(self) -> str:
        """The probe entry the gate reads, as verdicts name it: its label ("cka", "cka(batch_size=64)")."""
        return self.entry or self.probe


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
    # the [executor] table, validated at load against the installed executors: "name" (absent: the default
    # executor) and that executor's options with defaults filled in (see audit.run.executors)
    executor: dict[str, Any] = field(default_factory=dict)


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


def _model_files(root: Path, table: _Table, name: str) -> tuple[list[Path], bool] | None:
    """The file(s) of a model key: (paths, is_family). A value with ``*``, ``?`` or ``[`` that is not
    itself an existing file is a glob pattern (relative to the config's folder; ``**`` recurses)."""
    value = table.get(name, str)
    if value is None:
        return None
    literal = (root / value).resolve()
    if not is_pattern(value) or literal.is_file():
        if not literal.exists():
            raise table.error(name, f"file not found: {literal}")
        return [literal], False
    found = sorted(glob.glob(value, root_dir=root, recursive=True))
    paths = list(dict.fromkeys((root / f).resolve() for f in found))
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise table.error(name, f"pattern {value!r} matches no file under {root}")
    return paths, True


def _library_installed(module: str) -> bool:
    """Whether a library can be found, without importing it (importing transformers costs seconds; the
    import itself, and a library that is installed but broken, are met when the model loads)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module with no spec
        return False


def _require_library(t: _Table, key: str) -> None:
    """A model kind whose library is missing fails at load, before any job runs or the catalog is opened."""
    module, extra = MODEL_LIBRARIES[key]
    if not _library_installed(module):
        raise t.error(key, f"{module} is not installed (pip install 'model-audit[{extra}]')")


def _huggingface_dir(root: Path, t: _Table) -> Path | None:
    """A local save_pretrained directory: config.json and safetensors weights (a pickled
    pytorch_model.bin is never loaded, so a directory with only that is refused here, not at load)."""
    value = t.get("huggingface", str)
    if value is None:
        return None
    path = (root / value).resolve()
    if not path.exists() and is_pattern(value):
        raise t.error("huggingface", "a glob is not supported here; define one [models.NAME] per directory")
    if not path.exists():
        raise t.error("huggingface", f"directory not found: {path}")
    if not path.is_dir():
        raise t.error(
            "huggingface", f"expected a directory saved with save_pretrained(dir), got the file {path}"
        )
    if not (path / HF_CONFIG).is_file():
        raise t.error("huggingface", f"no {HF_CONFIG} in {path}; save the model with save_pretrained(dir)")
    if not any((path / f).is_file() for f in HF_WEIGHTS):
        pickled = (path / "pytorch_model.bin").exists()
        why = " (pytorch_model.bin is a pickle and is never loaded)" if pickled else ""
        raise t.error(
            "huggingface",
            f"no model.safetensors in {path}{why}; save the model with save_pretrained(dir) "
            "(safetensors is its default)",
        )
    return path


def _library_name(t: _Table, key: str) -> str | None:
    value = t.get(key, str)
    if value is not None and not value.strip():
        raise t.error(key, f"expected a model name such as 'resnet18', got {value!r}")
    return value


def _model_class(t: _Table, huggingface: Path | None) -> str | None:
    value = t.get("class", str)
    if value is None:
        return None
    if huggingface is None:
        raise t.error("class", "class applies to huggingface = 'dir' only (a transformers class name)")
    if not value.isidentifier():
        raise t.error("class", f"expected a class name in transformers such as 'AutoModel', got {value!r}")
    return value


def _output(t: _Table) -> str | int | None:
    """The output rule ("auto" is stored as None, so that writing it or not is the same model)."""
    value = t.get("output", (str, int))
    if value is None or value == "auto":
        return None
    if isinstance(value, str) and not _OUTPUT_RULE.fullmatch(value):
        raise t.error(
            "output",
            f"expected 'auto', a key or dotted path ('logits', 'hidden_states.-1') or an index, got {value!r}",
        )
    return value


def _source(file: Path, t: _Table, given: dict[str, Any]) -> str:
    """The one key that says where the model comes from."""
    keys = [k for k, v in given.items() if v is not None]
    if len(keys) != 1:
        got = f"; got {' and '.join(keys)}" if keys else ""
        raise ConfigError(
            file,
            t.key,
            "expected exactly one of: factory, torchvision or timm (each with optional weights), "
            f"huggingface, torchscript, or pickle (with trust = true){got}",
        )
    return keys[0]


def _check_kwargs(t: _Table, kind: str, kwargs: dict[str, Any]) -> None:
    for key in _RESERVED_KWARGS.get(kind, ()):
        if key in kwargs:
            how = (
                "it is set by model-audit, which loads Hugging Face directories offline and from safetensors only"
                if kind == "huggingface"
                else "nothing is downloaded; give a local state dict: weights = 'file.safetensors'"
            )
            raise t.error(f"kwargs.{key}", how)


def _model(file: Path, root: Path, name: str, data: Any) -> list[ModelSpec]:
    """One model, or a family of models when a file key is a glob: one per file, named "NAME/<stem>"."""
    t = _Table(file, f"models.{name}", data)
    t.only(MODEL_KEYS)
    factory = _factory(t)
    kwargs = _Table(file, t.sub("kwargs"), t.get("kwargs", dict, {})).data
    files = {k: _model_files(root, t, k) for k in MODEL_FILE_KEYS}
    huggingface = _huggingface_dir(root, t)
    named = {k: _library_name(t, k) for k in ("torchvision", "timm")}
    trust = t.get("trust", bool, False)
    sources = {"factory": factory, **named, "huggingface": huggingface}
    kind = _source(file, t, sources | {k: files[k] for k in ("torchscript", "pickle")})
    if files["weights"] is not None and kind not in ("factory", "torchvision", "timm"):
        raise t.error(
            "weights",
            "weights do not apply to huggingface: the directory holds them (model.safetensors)"
            if kind == "huggingface"
            else "weights need a factory = 'module:function', torchvision = 'name' or timm = 'name' "
            "that builds the module",
        )
    for weights in files["weights"][0] if files["weights"] else []:
        if weights.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
            raise t.error(
                "weights", f"expected a .safetensors or a .pt/.pth state dict, got {weights.name!r}"
            )
    if files["pickle"] is not None and not trust:
        raise t.error(
            "pickle",
            "loading a pickled module runs code from the file; set trust = true if you trust it, "
            "or save a state dict/safetensors and use factory + weights",
        )
    output = _output(t)
    if output is not None and kind == "torchscript":
        raise t.error(
            "output", "cannot be applied to a TorchScript model (no Python hooks); script the selection in"
        )
    _check_kwargs(t, kind, kwargs)
    if kind in MODEL_LIBRARIES:
        _require_library(t, kind)
    common = {
        "factory": factory,
        "kwargs": dict(kwargs),
        "huggingface": huggingface,
        **named,
        "model_class": _model_class(t, huggingface),
        "output": output,
    }
    # the checks above leave at most one file key set
    family = next(((k, v[0]) for k, v in files.items() if v is not None and v[1]), None)
    if family is None:
        one = {k: v[0][0] for k, v in files.items() if v is not None}
        return [ModelSpec(name, **common, **one)]
    key, paths = family
    specs: dict[str, ModelSpec] = {}
    for path in paths:
        member = f"{name}/{path.stem}"
        if "," in path.stem:
            raise t.error(
                key, f"file {path.name!r} would give the model name {member!r}; a model name cannot hold ','"
            )
        if member in specs:
            earlier = getattr(specs[member], key)
            raise t.error(
                key,
                f"files {earlier} and {path} both give the model name {member!r}; "
                "narrow the pattern or rename one",
            )
        specs[member] = ModelSpec(member, **common, family=name, **{key: path})
    return list(specs.values())


def _dataset(file: Path, root: Path, name: str, data: Any) -> DatasetSpec:
    t = _Table(file, f"datasets.{name}", data)
    t.only({"path", "factory", "kwargs", "inputs", "targets", "task", "nonfinite"})
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
    nonfinite = t.get("nonfinite", str, "error")
    if nonfinite not in ("error", "drop"):
        raise t.error("nonfinite", f"expected 'error' or 'drop', got {nonfinite!r}")
    if nonfinite == "drop" and path is not None and path.suffix == ".parquet":
        raise t.error("nonfinite", "'drop' applies to array datasets (.npz, .npy, .pt, a factory), not .parquet")
    return DatasetSpec(
        name, path, factory, dict(kwargs), inputs, t.get("targets", str), task, nonfinite if nonfinite == "drop" else None
    )


def _check_arity(t: _Table, key: str, given: list[str], bounds: tuple[int, int | None], probe: str) -> None:
    lo, hi = bounds
    if len(given) < lo:
        raise t.error(key, f"probe {probe!r} needs at least {lo}, got {len(given)}")
    if hi is not None and hi > 1 and len(given) > hi:
        raise t.error(key, f"probe {probe!r} takes at most {hi} per job, got {len(given)}")


def _defined(names: Any, limit: int = 12) -> str:
    names = list(names)
    if not names:
        return "none"
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _no_match(item: str, kind: str, defined: Any) -> str:
    if is_pattern(item):
        return f"pattern {item!r} matches no {kind} (defined: {_defined(defined)})"
    if any(n.startswith(item + "/") for n in defined):  # the table name of a glob-expanded family
        return f"unknown {kind} {item!r}; {item!r} is a family of models, name them all with '{item}/*'"
    return f"unknown {kind} {item!r} (defined: {_defined(defined)})"


def _expand(t: _Table, key: str, given: list[str], defined: dict[str, Any]) -> list[str]:
    """Names and fnmatch patterns → names. A pattern adds its matches in order of definition, skipping
    names already listed; an exact name is kept as given; a pattern that matches nothing is an error."""
    kind = key[:-1]
    out: list[str] = []
    for item in given:
        hits = match_names(item, defined)
        if not hits:
            raise t.error(key, _no_match(item, kind, defined))
        out += hits if not is_pattern(item) else [h for h in hits if h not in out]
    return out


def _probe_entry(
    file: Path, index: int, data: Any, cfg_models: dict, cfg_data: dict, probes: dict[str, Probe]
):
    t = _Table(file, f"probes[{index}]", data)
    t.only({"probe", "models", "datasets", "params", "label"})
    name = t.get("probe", str, required=True)
    if name not in probes:
        raise t.error("probe", f"unknown probe {name!r} (installed: {', '.join(probes) or 'none'})")
    probe = probes[name]
    models = _expand(
        t, "models", t.names("models", list(cfg_models) if probe.needs.models[0] > 0 else []), cfg_models
    )
    datasets = _expand(
        t, "datasets", t.names("datasets", list(cfg_data) if probe.needs.datasets[0] > 0 else []), cfg_data
    )
    _check_arity(t, "models", models, probe.needs.models, name)
    _check_arity(t, "datasets", datasets, probe.needs.datasets, name)
    raw = _Table(file, t.sub("params"), t.get("params", dict, {})).data
    try:
        params = probe.validate_params(raw)
    except KeyError as e:
        raise t.error("params", e.args[0]) from None
    except ValueError as e:
        raise t.error("params." + str(e).split(":", 1)[0], str(e).split(":", 1)[1].strip()) from None
    label = t.get("label", str, "")
    if "label" in t.data and not label.strip():
        raise t.error("label", "expected a non-empty label")
    return ProbeEntry(index, name, models, datasets, params, label)


def _labelled(file: Path, entries: list[ProbeEntry], probes: dict[str, Probe]) -> list[ProbeEntry]:
    """Every entry with its label: the given one, else the probe's name, or — when one probe has entries
    with different parameters — the name plus the parameters that differ from the defaults (if any). Two entries
    with different parameters may not share a label (gates and the report would confuse them)."""
    fingerprints: dict[str, set[str]] = {}
    for e in entries:
        fingerprints.setdefault(e.probe, set()).add(e.params_fingerprint)
    out = []
    for e in entries:
        label = e.label
        if not label:
            label = e.probe
            if len(fingerprints[e.probe]) > 1:
                defaults = probes[e.probe].validate_params({})
                changed = [f"{k}={_short_value(v)}" for k, v in e.params.items() if defaults.get(k) != v]
                label = f"{e.probe}({', '.join(changed)})" if changed else e.probe
        out.append(dataclasses.replace(e, label=label))
    seen: dict[str, ProbeEntry] = {}
    for e in out:
        other = seen.setdefault(e.label, e)
        if other.params_fingerprint != e.params_fingerprint:
            raise ConfigError(
                file,
                f"probes[{e.index}].label",
                f"label {e.label!r} is also the label of probes[{other.index}], whose parameters differ; "
                "give each entry its own label",
            )
    return out


def _short_value(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _gate(
    file: Path,
    index: int,
    data: Any,
    cfg: dict[str, Any],
    probes: dict[str, Probe],
    entries: list[ProbeEntry],
) -> GateSpec:
    t = _Table(file, f"gates[{index}]", data)
    t.only(
        {"name", "probe", "metric", "min", "max", "model", "dataset", "baseline", "entry", "against",
         "max_increase", "max_decrease"}
    )
    probe = t.get("probe", str, required=True)
    if probe not in probes:
        raise t.error("probe", f"unknown probe {probe!r} (installed: {', '.join(probes) or 'none'})")
    entry, fingerprint = _gate_entry(t, probe, t.get("entry", str), entries, probes)
    lo = t.get("min", (int, float))
    hi = t.get("max", (int, float))
    for key, bound in (("min", lo), ("max", hi)):
        if bound is not None and math.isnan(bound):  # every comparison with NaN is false: it would pass all
            raise t.error(key, "expected a number, got nan")
    against, changes = _history(t)
    if lo is None and hi is None and not changes:
        raise ConfigError(
            file, t.key, "a gate needs min and/or max (or max_increase/max_decrease with against)"
        )
    if lo is not None and hi is not None and lo > hi:
        raise t.error("min", f"min ({lo}) is above max ({hi})")
    model = t.get("model", str)
    baseline = t.get("baseline", str)
    if baseline is not None and against is not None:
        raise t.error(
            "against", "a gate compares with a baseline model or with history (against), not both; use two gates"
        )
    dataset = t.get("dataset", str)
    if baseline is not None and is_pattern(baseline):
        raise t.error("baseline", f"expected the name of one model, not a pattern, got {baseline!r}")
    # a job over several models/datasets is labelled by their comma-joined names ("mlp_a,mlp_b");
    # model and dataset may be fnmatch patterns over these labels, each comma-separated part matching
    # at least one defined name
    for key, value, kind in (
        ("model", model, "models"),
        ("baseline", baseline, "models"),
        ("dataset", dataset, "datasets"),
    ):
        for part in (value or "").split(",") if value else []:
            if not match_names(part, cfg[kind]):
                raise t.error(key, _no_match(part, kind[:-1], cfg[kind]))
    expected = ()
    if model is not None and is_pattern(model) and "," not in model:
        expected = tuple(match_names(model, cfg["models"]))
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
        expected,
        entry,
        fingerprint,
        against,
        changes.get("max_increase"),
        changes.get("max_decrease"),
    )


def _history(t: _Table) -> tuple[str | None, dict[str, Change]]:
    """A gate's comparison with history: `against` (canonical text) and its max_increase/max_decrease.
    Each needs the other: bounds on a change need a baseline, and a baseline is only read by those bounds."""
    text = t.get("against", str)
    against = None
    if text is not None:
        try:
            against = parse_against(text).text
        except ValueError as e:
            raise t.error("against", str(e)) from None
    changes: dict[str, Change] = {}
    for key in ("max_increase", "max_decrease"):
        if key in t.data:
            try:
                changes[key] = parse_change(t.data[key])
            except ValueError as e:
                raise t.error(key, str(e)) from None
    if changes and against is None:
        raise t.error(
            next(iter(changes)),
            "needs against = 'accepted:NAME', 'git:REF' or 'run:ID': the results the change is measured from",
        )
    if against is not None and not changes:
        raise t.error("against", "needs max_increase and/or max_decrease: the bounds on the change from it")
    return against, changes


def _gate_entry(
    t: _Table, probe: str, wanted: str | None, entries: list[ProbeEntry], probes: dict[str, Probe]
) -> tuple[str, str]:
    """The label and parameters' fingerprint of the probe entry a gate reads: the one its `entry` names,
    else the probe's only parameters (its entries' or, without entries, its defaults). A probe with entries
    of different parameters needs `entry`: a gate must not read whichever ran last."""
    mine = [e for e in entries if e.probe == probe]
    labels = list(dict.fromkeys(e.label for e in mine))
    if wanted is not None:
        hit = next((e for e in mine if e.label == wanted), None)
        if hit is None:
            raise t.error("entry", f"no [[probes]] entry of {probe!r} has label {wanted!r} (labels: {_defined(labels)})")
        return hit.label, hit.params_fingerprint
    if not mine:
        return probe, params_fingerprint(probes[probe].validate_params({}))
    if len({e.params_fingerprint for e in mine}) > 1:
        raise ConfigError(
            t.file,
            t.key,
            f"probe {probe!r} has entries with different parameters ({_defined(labels)}); "
            "say which one the gate reads with entry = LABEL",
        )
    return mine[0].label, mine[0].params_fingerprint


_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _device(t: _Table) -> str:
    """The `device` key: its form is checked here; whether that device exists, when a run starts."""
    device = t.get("device", str, "auto")
    if not _DEVICE.fullmatch(device):
        raise t.error("device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    return device


def _executor(file: Path, data: Any, executors: Mapping[str, Any] | None) -> dict[str, Any]:
    """The [executor] table: `name` one of the installed executors, the rest that executor's options,
    validated by it (defaults filled in). Without ``executors`` (a caller that runs nothing) only its form
    is checked."""
    t = _Table(file, "executor", data)
    if not t.data:
        return {}
    name = t.get("name", str)
    options = {k: v for k, v in t.data.items() if k != "name"}
    if executors is None:
        return dict(t.data)
    chosen = name or DEFAULT_EXECUTOR
    if chosen not in executors:
        raise t.error("name", f"unknown executor {chosen!r} (installed: {_defined(executors)})")
    try:
        validated = executors[chosen].validate_options(options)
    except KeyError as e:
        raise t.error(str(e.args[0]).split("'")[1], e.args[0]) from None
    except ValueError as e:
        key, _, message = str(e).partition(":")
        raise t.error(key, message.strip()) from None
    return {"name": chosen, **validated}


def load_config(
    path: Path, probes: dict[str, Probe], executors: Mapping[str, Any] | None = None
) -> Config:
    """Parse and validate audit.toml against the installed probes (and executors, when given: every key
    is checked once, here, with the file and key in the message)."""
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
    top.only({"catalog", "seed", "device", "models", "datasets", "probes", "gates", "executor"})
    models: dict[str, ModelSpec] = {}
    for n, d in _Table(path, "models", top.get("models", dict, {})).data.items():
        for spec in _model(path, root, n, d):
            if spec.name in models:
                raise ConfigError(
                    path,
                    f"models.{n}",
                    f"the model name {spec.name!r} is already defined; rename the table or the file",
                )
            models[spec.name] = spec
    datasets = {
        n: _dataset(path, root, n, d)
        for n, d in _Table(path, "datasets", top.get("datasets", dict, {})).data.items()
    }
    probe_list = top.get("probes", list, [])
    entries = [_probe_entry(path, i, d, models, datasets, probes) for i, d in enumerate(probe_list)]
    entries = _labelled(path, entries, probes)
    known = {"models": models, "datasets": datasets}
    gates = [_gate(path, i, d, known, probes, entries) for i, d in enumerate(top.get("gates", list, []))]
    device = _device(top)
    catalog = _catalog(top, root)
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
        executor=_executor(path, top.get("executor", dict, {}), executors),
    )


def _catalog(top: _Table, root: Path) -> Path:
    value = top.get("catalog", str, DEFAULT_CATALOG)
    if not value.strip():
        raise top.error("catalog", "expected a file path, got an empty string")
    return (root / value).resolve()


def catalog_location(path: Path) -> Path:
    """The catalog a config names — read without validating the rest of the file (for commands that only
    read the catalog) but resolved exactly as :func:`load_config` resolves it; the default catalog when the
    file does not exist."""
    path = Path(path)
    if not path.exists():
        return Path(DEFAULT_CATALOG).resolve()
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    return _catalog(_Table(path, "", raw), path.resolve().parent)
