"""Running one job wherever it lands: the driver's own process, a local worker process, or a Ray worker.

The driver turns each job into a :class:`JobSpec` — plain, picklable data naming the config file, the probe,
the models and datasets with their fingerprints, the parameters, the cache key and the seed — and a worker
turns it into a :class:`JobReport` with :func:`execute`. A worker never writes the catalog (DuckDB allows one
writing process): the report carries the metrics, arrays and any model outputs it computed, and the driver
records them in one transaction per job.

Failures are sorted here, once for every executor:

* a probe that raises → an ``error`` report with its traceback (the run goes on);
* a :class:`~audit.errors.UsageError` (weights that do not fit a model, an unreadable file) → a
  ``usage_error`` report; the driver stops the run with exit code 2, as a local run always did;
* out of memory (``torch.cuda.OutOfMemoryError``, or an allocator's "out of memory") → when the probe declares
  an ``oom_param`` (a parameter that bounds memory without changing the result, e.g. a forward-pass batch
  size), the job is retried in place with that parameter halved, down to 1, and the report says so; otherwise
  an error. A worker process that dies outright (killed, segfault) is the executor's to retry.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit import sources
from audit.context import Context, DatasetHandle, ModelHandle, ProgressFactory, no_progress
from audit.errors import ProbeInputError, UsageError


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job (no live objects: it crosses process and machine lines)."""

    index: int  # the job's position in the run (reports are matched back by it)
    label: str
    probe: str
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    params: dict[str, Any]
    cache_key: str
    seed: int
    config_path: str
    fingerprints: dict[str, str]  # "model:<name>" / "dataset:<name>" → content fingerprint
    device: str
    gpus: float = 0.0  # the GPU share the job asks a scheduler for (0 on a CPU run)
    catalog_path: str | None = None  # read (never written) for cached model outputs; None: no lookups
    refresh_outputs: bool = False  # `--force`: recompute model outputs instead of reading them


@dataclass
class JobReport:
    """What a worker measured for one job, or why it could not."""

    index: int
    status: str  # "ok" | "error" | "usage_error"
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    device: str = "cpu"
    metrics: list[tuple[str, float, str | None, str | None]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # model outputs computed by this job, for the driver to cache: (model fp, dataset fp, kind, array)
    outputs: list[tuple[str, str, str, np.ndarray]] = field(default_factory=list)
    worker: str = ""


class WorkerOutputCache:
    """The output cache a worker uses: its own memory, then the catalog read-only (when it can get in at once:
    the driver may be writing), and every new array is handed to the driver through the report."""

    def __init__(self, catalog_path: str | None, refresh: bool):
        self.memory: dict[tuple[str, str, str], np.ndarray] = {}
        self.catalog_path = catalog_path
        self.refresh = refresh
        self.new: list[tuple[str, str, str, np.ndarray]] = []

    def get(self, model_fp: str, dataset_fp: str, kind: str) -> np.ndarray | None:
        key = (model_fp, dataset_fp, kind)
        if key in self.memory:
            return self.memory[key]
        if self.refresh or self.catalog_path is None or not Path(self.catalog_path).exists():
            return None
        from audit.catalog import Catalog

        try:
            return Catalog(Path(self.catalog_path), wait_s=0).cached_outputs(*key)
        except Exception:  # locked by the driver at this instant, or older than the outputs table: a miss
            return None

    def put(self, model_fp: str, dataset_fp: str, kind: str, array: np.ndarray) -> None:
        self.memory[(model_fp, dataset_fp, kind)] = array
        self.new.append((model_fp, dataset_fp, kind, array))


class WorkerState:
    """What a worker keeps between jobs: parsed configs, loaded datasets, computed model outputs.

    ``output_cache`` overrides the worker cache — the driver's inline executor passes the catalog's own.
    """

    def __init__(self, name: str = "", device: str | None = None, output_cache: Any = None):
        self.name = name
        self.device = device  # a worker bound to one GPU runs every job there
        self._configs: dict[str, Any] = {}
        self._datasets: dict[tuple[str, str], sources.Dataset] = {}
        self._output_cache = output_cache
        self._worker_caches: dict[tuple[str | None, bool], WorkerOutputCache] = {}
        self.probes: dict[str, Any] = {}  # probe objects the driver hands its inline worker (else: installed)

    def adopt_config(self, config) -> None:
        """Use an already parsed config for its path (the driver's own, so it is not parsed twice)."""
        self._configs[str(config.path)] = config

    def config(self, path: str):
        if path not in self._configs:
            from audit.config import load_config
            from audit.plugins import installed_probes

            self._configs[path] = load_config(Path(path), installed_probes())
        return self._configs[path]

    def dataset(self, config, name: str) -> sources.Dataset:
        key = (str(config.path), name)
        if key not in self._datasets:
            self._datasets[key] = sources.load_dataset(config.datasets[name], config.root)
        return self._datasets[key]

    def cache(self, spec: JobSpec):
        if self._output_cache is not None:
            return self._output_cache
        key = (spec.catalog_path, spec.refresh_outputs)
        if key not in self._worker_caches:
            self._worker_caches[key] = WorkerOutputCache(spec.catalog_path, spec.refresh_outputs)
        return self._worker_caches[key]


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's "out of memory" (CPU allocators, cuBLAS workspaces)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, (RuntimeError, MemoryError)) and "out of memory" in str(e).lower()


def execute(spec: JobSpec, state: WorkerState, progress_factory: ProgressFactory = no_progress) -> JobReport:
    """Run one job and report; never raises for a probe's failure (see the module docstring)."""
    from audit.plugins import installed_probes
    from audit.runner import single_threaded_blas

    device_name = state.device or spec.device
    start = time.perf_counter()
    try:
        config = state.config(spec.config_path)
        probe = state.probes.get(spec.probe) or installed_probes().get(spec.probe)
        if probe is None:
            raise UsageError(f"probe {spec.probe!r} is not installed on worker {state.name or 'here'}")
        device = torch.device(device_name)
        models = [
            ModelHandle(m, spec.fingerprints[f"model:{m}"], _loader(config, m, device)) for m in spec.models
        ]
        datasets = [_dataset_handle(state.dataset(config, d)) for d in spec.datasets]
    except UsageError as e:
        return JobReport(spec.index, "usage_error", str(e), device=device_name, worker=state.name)
    cache = state.cache(spec)
    new_before = len(getattr(cache, "new", []))
    params = dict(spec.params)
    warnings: list[str] = []
    while True:
        ctx = Context(models, datasets, device, spec.seed, progress_factory, cache)
        try:
            with single_threaded_blas():
                result = job_probe_run(probe, ctx, params)
            break
        except UsageError as e:
            return JobReport(spec.index, "usage_error", str(e), device=device_name, worker=state.name)
        except ProbeInputError as e:
            return _failed(spec, state, f"{type(e).__name__}: {e}", warnings, start, device_name)
        except Exception as e:
            knob = getattr(probe, "oom_param", None)
            if is_out_of_memory(e) and knob and int(params.get(knob, 1)) > 1:
                smaller = max(1, int(params[knob]) // 2)
                warnings.append(
                    f"out of memory with {knob} = {params[knob]}; retried with {knob} = {smaller} "
                    f"({str(e).splitlines()[0][:120]})"
                )
                params[knob] = smaller
                del ctx
                _free_memory()
                continue
            error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-8)}"
            return _failed(spec, state, error, warnings, start, device_name)
    new_outputs = list(getattr(cache, "new", [])[new_before:])
    return JobReport(
        spec.index,
        "ok",
        None,
        warnings + list(result.warnings),
        time.perf_counter() - start,
        device_name,
        [(m.name, m.value, m.model, m.dataset) for m in result.metrics],
        dict(result.arrays),
        new_outputs,
        state.name,
    )


def job_probe_run(probe, ctx: Context, params: dict[str, Any]):
    """The probe's run (a seam: fault-injection tests and executors wrap nothing else)."""
    return probe.run(ctx, dict(params))


def _failed(spec, state, error, warnings, start, device_name) -> JobReport:
    return JobReport(
        spec.index,
        "error",
        error,
        warnings,
        time.perf_counter() - start,
        device_name,
        worker=state.name,
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _loader(config, name: str, device: torch.device) -> Callable[[], torch.nn.Module]:
    spec = config.models[name]
    return lambda: sources.load_model(spec, config.root, device)


def _dataset_handle(data: sources.Dataset) -> DatasetHandle:
    return DatasetHandle(data.name, data.fingerprint, data.n, data.task, data.targets is not None, data.batches)
