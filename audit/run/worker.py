"""Running one job wherever it lands: the driver's own process, a local worker process, or a Ray worker.

The driver turns each job into a :class:`JobSpec` — plain, picklable data: the probe's name, the resolved
model and dataset specs with their fingerprints, the validated parameters, the cache key, the seed, the
device and the cached model outputs it may reuse — and a worker turns it into a :class:`JobReport` with
:func:`execute`, importing only the probe contract, the plugin manager and the sources. A worker never
writes the catalog (DuckDB allows one
writing process): the report carries the metrics, arrays and any model outputs it computed, and the driver
records them in one transaction per job.

Failures are sorted here, once for every executor:

* a probe that raises → an ``error`` report with its traceback (the run goes on);
* a :class:`~audit.api.errors.UsageError` (weights that do not fit a model, an unreadable file) → a
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.api.context import Context, DatasetHandle, ModelHandle, ProgressFactory, no_progress
from audit.api.errors import ProbeInputError, UsageError
from audit.run import sources
from audit.run.devices import single_threaded_blas
from audit.specs import DatasetSpec, ModelSpec, relocated


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job, as plain data (it crosses process and machine lines).

    The driver resolves it all: the models' and datasets' specs with their fingerprints, the validated
    parameters, the seed, the device, the project folder (factory modules are imported from there) and the
    model outputs the catalog already holds for these models and datasets. A worker reads no `audit.toml`
    and opens no catalog.
    """

    index: int  # the job's position in the run (reports are matched back by it)
    label: str
    probe: str
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    params: dict[str, Any]
    cache_key: str
    seed: int
    root: str  # the project folder: relative imports of factory modules start here
    fingerprints: dict[str, str]  # "model:<name>" / "dataset:<name>" → content fingerprint
    device: str
    gpus: float = 0.0  # the GPU share the job asks a scheduler for (0 on a CPU run)
    # cached model outputs the driver read from the catalog: (model fp, dataset fp, kind) → array
    outputs: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def dataset_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.datasets)

    def relocated(self, root: str | Path) -> JobSpec:
        """This job for a worker whose copy of the project lies at `root` (e.g. a Ray node's working dir)."""
        old, new = Path(self.root), Path(root)
        return replace(
            self,
            root=str(new),
            models=tuple(relocated(m, old, new) for m in self.models),
            datasets=tuple(relocated(d, old, new) for d in self.datasets),
        )


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
    """The output cache a worker uses: its own memory, then what the driver sent with the job; every new
    array goes back to the driver through the report (the driver alone writes the catalog)."""

    def __init__(self) -> None:
        self.memory: dict[tuple[str, str, str], np.ndarray] = {}
        self.new: list[tuple[str, str, str, np.ndarray]] = []

    def offer(self, outputs: dict[tuple[str, str, str], np.ndarray]) -> None:
        for key, array in outputs.items():
            self.memory.setdefault(key, array)

    def get(self, model_fp: str, dataset_fp: str, kind: str) -> np.ndarray | None:
        return self.memory.get((model_fp, dataset_fp, kind))

    def put(self, model_fp: str, dataset_fp: str, kind: str, array: np.ndarray) -> None:
        self.memory[(model_fp, dataset_fp, kind)] = array
        self.new.append((model_fp, dataset_fp, kind, array))


class WorkerState:
    """What a worker keeps between jobs: loaded datasets and computed model outputs.

    ``output_cache`` overrides the worker cache — the driver's inline executor passes the catalog's own.
    """

    def __init__(self, name: str = "", device: str | None = None, output_cache: Any = None):
        self.name = name
        self.device = device  # a worker bound to one GPU runs every job there
        self._datasets: dict[tuple[str, str], sources.Dataset] = {}
        self._output_cache = output_cache
        self._worker_cache = WorkerOutputCache()
        self.probes: dict[str, Any] = {}  # probe objects the driver hands its inline worker (else: installed)

    def dataset(self, spec: DatasetSpec, root: str | Path) -> sources.Dataset:
        key = (str(root), repr(spec))  # a spec holds dicts (kwargs): its repr is the key
        if key not in self._datasets:
            self._datasets[key] = sources.load_dataset(spec, Path(root))
        return self._datasets[key]

    def cache(self, spec: JobSpec):
        if self._output_cache is not None:
            return self._output_cache
        self._worker_cache.offer(spec.outputs)
        return self._worker_cache


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's "out of memory" (CPU allocators, cuBLAS workspaces)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, (RuntimeError, MemoryError)) and "out of memory" in str(e).lower()


def execute(spec: JobSpec, state: WorkerState, progress_factory: ProgressFactory = no_progress) -> JobReport:
    """Run one job and report; never raises for a probe's failure (see the module docstring)."""
    from audit.registry import installed_probes

    device_name = state.device or spec.device
    start = time.perf_counter()
    try:
        probe = state.probes.get(spec.probe) or installed_probes().get(spec.probe)
        if probe is None:
            raise UsageError(f"probe {spec.probe!r} is not installed on worker {state.name or 'here'}")
        device = torch.device(device_name)
        models = [
            ModelHandle(m.name, spec.fingerprints[f"model:{m.name}"], _loader(m, spec.root, device))
            for m in spec.models
        ]
        datasets = [_dataset_handle(state.dataset(d, spec.root)) for d in spec.datasets]
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


def _loader(spec: ModelSpec, root: str, device: torch.device) -> Callable[[], torch.nn.Module]:
    return lambda: sources.load_model(spec, Path(root), device)


def _dataset_handle(data: sources.Dataset) -> DatasetHandle:
    return DatasetHandle(data.name, data.fingerprint, data.n, data.task, data.targets is not None, data.batches)
