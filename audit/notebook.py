"""The Python API: a probe on in-memory models and arrays, and a catalog read into data frames.

For notebooks and scripts, the way WeightWatcher's ``analyze()`` or a Deepchecks suite work — no
`audit.toml`, no command line::

    import audit

    result = audit.run_probe("cka", {"a": model_a, "b": model_b}, (x_test, y_test))
    result.metric("cka_diagonal_mean")      # one number
    result.arrays["matrix"]                    # the layer-by-layer matrix
    result.to_frame()                       # every metric as a pandas DataFrame

    catalog = audit.open_catalog(".audit/catalog.duckdb")
    catalog.latest_metrics(probe="cka")     # pandas DataFrame (or .arrow(...) with pyarrow)

:func:`run_probe` runs exactly what `audit run` runs for one job — the same probe objects, parameter
validation, model-and-dataset count checks, input checks (dtypes, non-finite rows), :class:`Context`,
thread pinning and cache key — only the models and datasets come from memory instead of `audit.toml`. With
``catalog=`` it records the result like `audit run` does (one run, one result row, its metrics and arrays)
and reuses a stored result with the same cache key (same probe version, parameters, seed, model weights and
data), so a notebook cell that is run again costs nothing.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas
    import torch

    from audit.api.results import ResultView
    from audit.catalog.store import Catalog

IN_MEMORY = "<in memory>"  # the factory a dataset spec of the Python API names (it is never imported)


# ------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Metric:
    """One metric of a probe's result; ``model``/``dataset`` None: the job as a whole."""

    name: str
    value: float
    model: str | None = None
    dataset: str | None = None


@dataclass(frozen=True)
class ProbeRun:
    """What :func:`run_probe` measured: the metrics, arrays and warnings a catalog result holds.

    ``result_id`` is the catalog's id when the result was recorded or reused (``catalog=`` given), else None;
    ``reused`` says the catalog already held it (nothing was computed).
    """

    probe: str
    version: str
    params: Mapping[str, Any]
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    metrics: tuple[Metric, ...]
    arrays: Mapping[str, np.ndarray]
    warnings: tuple[str, ...]
    device: str
    duration_s: float
    cache_key: str
    result_id: str | None = None
    reused: bool = False

    def metric(self, name: str, *, model: str | None = None, dataset: str | None = None) -> float:
        """The value of a metric, narrowed by model and/or dataset when given; KeyError when there is none."""
        for m in self.metrics:
            if m.name == name and model in (None, m.model) and dataset in (None, m.dataset):
                return m.value
        known = sorted({m.name for m in self.metrics})
        raise KeyError(f"no metric {name!r} for model={model}, dataset={dataset} (metrics: {', '.join(known)})")

    def to_records(self) -> list[dict[str, Any]]:
        """The metrics as rows (probe, model, dataset, metric, value), the columns of the catalog's
        ``metrics`` view; needs nothing beyond the standard library."""
        return [
            {"probe": self.probe, "model": m.model, "dataset": m.dataset, "metric": m.name, "value": m.value}
            for m in self.metrics
        ]

    def to_frame(self) -> pandas.DataFrame:
        """The metrics as a pandas DataFrame (columns probe, model, dataset, metric, value)."""
        pd = _pandas()
        return pd.DataFrame.from_records(
            self.to_records(), columns=["probe", "model", "dataset", "metric", "value"]
        )

    def __repr__(self) -> str:
        where = f", result_id={self.result_id!r}" if self.result_id else ""
        return (
            f"ProbeRun({self.probe} {self.version} on models={list(self.models)} datasets={list(self.datasets)}: "
            f"{len(self.metrics)} metrics, {len(self.arrays)} arrays, {len(self.warnings)} warnings{where})"
        )


# ------------------------------------------------------------------------------------------- running


def run_probe(
    probe: str,
    models: Any = None,
    data: Any = None,
    *,
    params: Mapping[str, Any] | None = None,
    device: str = "auto",
    seed: int = 0,
    catalog: str | Path | None = None,
    force: bool = False,
) -> ProbeRun:
    """Run one probe on in-memory models and data and return what it measured.

    ``models``: an ``nn.Module``, a list of modules (named ``model_0``, ``model_1``, …) or a mapping name →
    module; None for a probe that takes no model (e.g. ``embedding`` on precomputed embeddings). ``data``: one
    dataset — an array or tensor of inputs, an ``(inputs, targets)`` pair, or a mapping with ``"inputs"``
    (and ``"targets"``) — or several, as a list (named ``data_0``, …) or a mapping name → dataset. All
    models and datasets form **one job**: give as many as the probe takes per job (``audit probes NAME``).

    ``params`` are the probe's parameters (defaults filled in, each checked); ``device`` is auto, cpu, cuda or
    cuda:N; ``seed`` seeds the job as `audit.toml`'s ``seed`` does. Your modules are never changed: a module
    on another device than the job's is copied there, and one in training mode is put back in training mode.

    ``catalog``: a catalog path to record the result in (created if missing), or None to record nothing.
    With a catalog a stored result of the same cache key is returned instead of recomputed unless ``force``
    (a reuse writes nothing; a computed result is recorded as a run of one job).
    Bad input raises :class:`audit.api.errors.UsageError` (a ``ValueError``-like one-line message).
    """
    import torch

    from audit.api.context import Context, DatasetHandle, ModelHandle
    from audit.api.errors import UsageError
    from audit.registry import installed_probes
    from audit.run.devices import resolve_device, single_threaded_blas
    from audit.run.plan import check_job_counts, job_cache_key, job_seed
    from audit.run.worker import job_probe_run

    probes = installed_probes()
    if probe not in probes:
        raise UsageError(f"unknown probe {probe!r} (installed: {', '.join(probes) or 'none'})")
    the_probe = probes[probe]
    try:
        validated = the_probe.validate_params(dict(params or {}))
    except (KeyError, ValueError) as e:
        raise UsageError(str(e).strip("'\"")) from None
    named_models = _named(models, "model", lambda v: isinstance(v, torch.nn.Module))
    named_data = _named(data, "data", _is_one_dataset)
    check_job_counts(the_probe, f"probe {probe!r}", tuple(named_models), tuple(named_data))
    target = resolve_device(device, "device")

    datasets = {name: _dataset(name, value) for name, value in named_data.items()}
    model_fps = {name: module_fingerprint(module) for name, module in named_models.items()}
    data_fps = {name: d.fingerprint for name, d in datasets.items()}
    key = job_cache_key(the_probe, validated, seed, model_fps, data_fps)

    store = _catalog(catalog) if catalog is not None else None
    if store is not None and not force:
        hit = store.cached_result(key)
        if hit is not None:
            return _from_view(store.result_views([hit])[0], key)

    seen: set[int] = set()
    handles = []
    for name, m in named_models.items():  # one module under two names (a model against itself): two copies,
        handles.append(ModelHandle(name, model_fps[name], _job_module(m, target, copy_it=id(m) in seen)))
        seen.add(id(m))  # since a probe hooks each model of the job on its own
    data_handles = [
        DatasetHandle(d.name, d.fingerprint, d.n, d.task, d.targets is not None, d.batches) for d in datasets.values()
    ]
    modes = {name: m.training for name, m in named_models.items()}
    ctx = Context(handles, data_handles, target, job_seed(seed, key))
    start = time.perf_counter()
    try:
        with single_threaded_blas():
            result = job_probe_run(the_probe, ctx, validated)
    finally:
        for name, m in named_models.items():
            m.train(modes[name])
    duration = time.perf_counter() - start
    run = ProbeRun(
        probe=probe,
        version=the_probe.version,
        params=validated,
        models=tuple(named_models),
        datasets=tuple(named_data),
        metrics=tuple(Metric(m.name, float(m.value), m.model, m.dataset) for m in result.metrics),
        arrays=dict(result.arrays),
        warnings=tuple(result.warnings),
        device=str(target),
        duration_s=duration,
        cache_key=key,
    )
    if store is None:
        return run
    return _record(store, run, named_models, datasets, model_fps, force)


def module_fingerprint(module: torch.nn.Module) -> str:
    """What an in-memory model is: its class, its structure (``repr``) and every parameter and buffer, by
    name, dtype, shape and value — the same weights in the same architecture give the same fingerprint."""
    import numpy as np
    import torch

    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: hash its bits
            t = t.view(torch.int16)
        a = np.ascontiguousarray(t.numpy())
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _named(value: Any, kind: str, is_one: Any) -> dict[str, Any]:
    """None → {}; one item → {kind: item}; a list → {kind_0: …}; a mapping of names → itself."""
    from audit.api.errors import UsageError

    if value is None:
        return {}
    if is_one(value):
        return {kind: value}
    if isinstance(value, Mapping):
        for name in value:
            if not isinstance(name, str) or not name:
                raise UsageError(f"{kind} names must be non-empty strings, got {name!r}")
        items = dict(value)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = {f"{kind}_{i}": v for i, v in enumerate(value)}
    else:
        raise UsageError(f"{kind}: expected one {kind}, a list or a mapping of names, got {type(value).__name__}")
    for name, item in items.items():
        if not is_one(item):
            raise UsageError(f"{kind} {name!r}: unsupported value of type {type(item).__name__}")
    return items


def _is_one_dataset(value: Any) -> bool:
    """An array/tensor, an (inputs, targets) pair of arrays, or a mapping with "inputs"."""
    if _is_array(value):
        return True
    if isinstance(value, tuple) and len(value) == 2 and all(_is_array(v) for v in value):
        return True
    return isinstance(value, Mapping) and "inputs" in value and _is_array(value["inputs"])


def _is_array(value: Any) -> bool:
    import numpy as np
    import torch

    return isinstance(value, (np.ndarray, torch.Tensor))


def _dataset(name: str, value: Any):
    """An in-memory dataset through the same checks as a configured one (dtypes, shapes, non-finite rows)."""
    from audit.run import sources
    from audit.specs import DatasetSpec

    if isinstance(value, Mapping):
        arrays = {"inputs": value["inputs"], **({"targets": value["targets"]} if "targets" in value else {})}
    elif isinstance(value, tuple):
        arrays = {"inputs": value[0], "targets": value[1]}
    else:
        arrays = {"inputs": value}
    spec = DatasetSpec(name, factory=IN_MEMORY, targets="targets" if "targets" in arrays else None)
    return sources.dataset_from_arrays(spec, arrays, f"dataset {name!r}")


def _job_module(module: torch.nn.Module, device: torch.device, copy_it: bool = False):
    """The job's view of a user's module: on the job's device (a copy when it lives elsewhere, or when
    `copy_it`), in eval mode, its output narrowed as a configured model's is."""
    from audit.api.capture import select_output

    def load() -> torch.nn.Module:
        first = next(iter(module.parameters()), None)
        if first is None:
            first = next(iter(module.buffers()), None)
        on_device = first is None or first.device == device or (
            device.type == first.device.type and device.index is None
        )
        model = module if on_device and not copy_it else copy.deepcopy(module).to(device)
        return select_output(model.eval(), None)

    return load


def _catalog(path: str | Path) -> Catalog:
    from audit.catalog.store import Catalog

    return Catalog(Path(path))


def _record(store: Catalog, run: ProbeRun, modules, datasets, model_fps, force: bool) -> ProbeRun:
    """Record `run` as `audit run` records a job: a run row, the models and datasets, one result."""
    import dataclasses
    import sys
    from importlib.metadata import PackageNotFoundError, version

    import duckdb
    import torch

    from audit.catalog.store import StoredResult

    try:  # the installed distribution's version (importing `audit` here would be an import cycle)
        tool_version = version("model-audit")
    except PackageNotFoundError:
        tool_version = "unknown"

    run_id = store.start_run(
        {
            "tool_version": tool_version,
            "device": run.device,
            "argv": f"audit.run_probe({run.probe!r}) in {Path(sys.argv[0]).name or 'python'}",
            "python_version": platform.python_version(),
            "torch_version": torch.__version__,
            "duckdb_version": duckdb.__version__,
        }
    )
    status = "interrupted"
    try:
        store.record_sources(
            "models",
            [(model_fps[n], n, {"in_memory": f"{type(m).__module__}.{type(m).__qualname__}"}, None)
             for n, m in modules.items()],
        )
        store.record_sources("datasets", [(d.fingerprint, n, {"in_memory": True}, d.n) for n, d in datasets.items()])
        result_id, written = store.record_result(
            StoredResult(
                run_id=run_id,
                cache_key=run.cache_key,
                probe=run.probe,
                probe_version=run.version,
                params=dict(run.params),
                models=[(n, model_fps[n]) for n in run.models],
                datasets=[(n, datasets[n].fingerprint) for n in run.datasets],
                status="ok",
                error=None,
                warnings=list(run.warnings),
                duration_s=run.duration_s,
                device=run.device,
                metrics=[(m.name, m.value, m.model, m.dataset) for m in run.metrics],
                arrays=dict(run.arrays),
                entry=run.probe,
            ),
            force=force,
        )
        status = "ok"
    finally:
        computed = int(status == "ok")
        store.finish_run(run_id, status, computed, 0, 0)
    return dataclasses.replace(run, result_id=result_id, reused=not written)


def _from_view(view: ResultView, key: str) -> ProbeRun:
    return ProbeRun(
        probe=view.probe,
        version=view.version,
        params=dict(view.params),
        models=view.models,
        datasets=view.datasets,
        metrics=tuple(Metric(m.name, m.value, m.model, m.dataset) for m in view.metrics),
        arrays=dict(view.arrays),
        warnings=view.warnings,
        device=view.device or "",
        duration_s=view.duration_s or 0.0,
        cache_key=key,
        result_id=view.result_id,
        reused=True,
    )


# ------------------------------------------------------------------------------------------- reading


@dataclass
class CatalogReader:
    """A catalog opened for reading: its views as data frames, its results as objects.

    Every call opens a read-only connection and closes it (DuckDB allows one writing process: an `audit run`
    writing the catalog meanwhile makes a call wait, up to ``wait_s``).
    """

    path: Path
    wait_s: float = 30.0
    _catalog: Catalog = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from audit.api.errors import UsageError
        from audit.catalog.store import Catalog

        self.path = Path(self.path)
        if not self.path.exists():
            raise UsageError(f"no catalog at {self.path}")
        self._catalog = Catalog(self.path, wait_s=self.wait_s)

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pandas.DataFrame:
        """Read-only SQL (the views ``metrics``, ``latest_metrics``, ``run_summary`` and every table) as a
        pandas DataFrame."""
        columns, rows = self._catalog.query(query, list(params or []))
        return _pandas().DataFrame.from_records(rows, columns=columns)

    def arrow(self, query: str, params: Sequence[Any] | None = None):
        """The same as :meth:`sql`, as a ``pyarrow.Table`` (needs pyarrow)."""
        try:
            import pyarrow
        except ImportError:
            raise ImportError("CatalogReader.arrow needs pyarrow: pip install pyarrow") from None
        columns, rows = self._catalog.query(query, list(params or []))
        return pyarrow.Table.from_pylist([dict(zip(columns, r, strict=True)) for r in rows])

    def metrics(self, **where: Any) -> pandas.DataFrame:
        """Every stored metric (the ``metrics`` view), filtered by equal columns: ``metrics(probe="cka")``."""
        return self._view("metrics", where)

    def latest_metrics(self, **where: Any) -> pandas.DataFrame:
        """The latest value per probe entry, model, dataset and metric (``latest_metrics``), filtered."""
        return self._view("latest_metrics", where)

    def result(self, result_id: str) -> ResultView:
        """One stored result (id or unique prefix) with its metrics; its arrays load on first use."""
        full = self._catalog.resolve_id("result", result_id)
        return self._catalog.result_views([full])[0]

    def _view(self, view: str, where: Mapping[str, Any]) -> pandas.DataFrame:
        from audit.api.errors import UsageError

        columns = self._catalog.query(f"select * from {view} limit 0")[0]
        unknown = sorted(set(where) - set(columns))
        if unknown:
            raise UsageError(f"{view} has no column {', '.join(unknown)} (columns: {', '.join(columns)})")
        clause = " and ".join(f'"{c}" = ?' for c in where)
        query = f"select * from {view}" + (f" where {clause}" if clause else "") + " order by created_at"
        return self.sql(query, list(where.values()))


def open_catalog(path: str | Path = ".audit/catalog.duckdb", wait_s: float = 30.0) -> CatalogReader:
    """A catalog opened for reading (see :class:`CatalogReader`)."""
    return CatalogReader(Path(path), wait_s)


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "data frames need pandas: pip install 'model-audit[notebook]' (or pandas); "
            "ProbeRun.to_records() needs nothing"
        ) from None
    return pandas
