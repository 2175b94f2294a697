"""Expands (probe × models × datasets) into jobs, skips what the catalog has, runs the rest, records each.

A job's cache key hashes the probe's name and version, its validated parameters, the seed, and the
name and content fingerprint of every model and dataset in their roles; a stored successful result
with the same key is reused unless ``force``. Each result is committed as soon as its job finishes,
so an interrupted run loses only the job in flight and the next run resumes from there.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import itertools
import json
import platform
import socket
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import audit
from audit import sources
from audit.catalog import Catalog, CatalogOutputCache, StoredResult
from audit.config import Config, ProbeEntry
from audit.context import Context, DatasetHandle, ModelHandle, ProgressFactory, no_progress
from audit.errors import ProbeInputError, UsageError
from audit.probe import Probe


@dataclass(frozen=True)
class Job:
    probe: Probe
    entry_index: int
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    params: dict[str, Any]

    @property
    def label(self) -> str:
        parts = [self.probe.name, ",".join(self.models)]
        if self.datasets:
            parts.append("on " + ",".join(self.datasets))
        return " ".join(p for p in parts if p)


def _split(names: list[str], bounds: tuple[int, int | None]) -> list[tuple[str, ...]]:
    """One group per name when the probe takes one at a time, else all names as one group."""
    if bounds[1] == 1:
        return [(n,) for n in names]
    return [tuple(names)]


def plan(
    config: Config,
    probes: dict[str, Probe],
    only_probes: list[str] | None = None,
    only_models: list[str] | None = None,
    only_datasets: list[str] | None = None,
) -> list[Job]:
    """The jobs of the configured probe entries (or of probes named on the command line), filtered."""
    for name in only_probes or []:
        if name not in probes:
            raise UsageError(f"unknown probe {name!r} (installed: {', '.join(probes) or 'none'})")
    for name in only_models or []:
        if name not in config.models:
            raise UsageError(
                f"unknown model {name!r} (in {config.path.name}: {', '.join(config.models) or 'none'})"
            )
    for name in only_datasets or []:
        if name not in config.datasets:
            raise UsageError(
                f"unknown dataset {name!r} (in {config.path.name}: {', '.join(config.datasets) or 'none'})"
            )
    entries = list(config.probes)
    for name in only_probes or []:
        if not any(e.probe == name for e in entries):  # named on the command line but not configured
            probe = probes[name]
            entries.append(
                ProbeEntry(
                    -1,
                    name,
                    only_models or list(config.models) if probe.needs.models[0] else [],
                    only_datasets or list(config.datasets) if probe.needs.datasets[0] else [],
                    probe.validate_params({}),
                )
            )
    jobs: list[Job] = []
    for entry in entries:
        if only_probes and entry.probe not in only_probes:
            continue
        probe = probes[entry.probe]
        for models, datasets in itertools.product(
            _split(entry.models, probe.needs.models) or [()],
            _split(entry.datasets, probe.needs.datasets) or [()],
        ):
            if only_models and not set(models) & set(only_models):
                continue
            if only_datasets and not set(datasets) & set(only_datasets):
                continue
            _check_counts(probe, entry, models, datasets)
            jobs.append(Job(probe, entry.index, models, datasets, entry.params))
    return jobs


def _check_counts(
    probe: Probe, entry: ProbeEntry, models: tuple[str, ...], datasets: tuple[str, ...]
) -> None:
    where = f"probes[{entry.index}]" if entry.index >= 0 else f"probe {probe.name!r}"
    for what, got, (lo, hi) in (
        ("models", models, probe.needs.models),
        ("datasets", datasets, probe.needs.datasets),
    ):
        if len(got) < lo or (hi is not None and len(got) > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any number'}"
            raise UsageError(f"{where}: probe {probe.name!r} takes {want} {what} per job, got {len(got)}")
    message = probe.check_job(len(models), len(datasets))
    if message:
        raise UsageError(f"{where}: {message}")


def single_threaded_blas():
    """NumPy/SciPy's BLAS on one thread while a probe runs; torch keeps its intra-op threads.

    Both pools busy-wait: with torch's OpenMP threads and OpenBLAS's threads on the same cores, a probe that
    alternates small torch and NumPy products slowed 20-40× on 2 cores (measured: the embedding probe on the
    demo, 3.7 s pinned, 155 s unpinned with one other busy process). A probe's heavy products go through
    torch, on the job's device, so NumPy loses little by running on one thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency; stay usable without it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def resolve_device(requested: str) -> torch.device:
    """auto → the first CUDA device when there is one, else the CPU; cuda[:N] must exist."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {requested}: CUDA is not available on this machine (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise UsageError(f"--device: expected auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass
class JobOutcome:
    job: Job
    status: str  # "ok" | "error" | "reused"
    result_id: str | None
    duration_s: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    run_id: str
    outcomes: list[JobOutcome]

    @property
    def failed(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == "error"]


class Runner:
    """Runs jobs for one configuration against one catalog; the only writer of that catalog."""

    def __init__(self, config: Config, catalog: Catalog, device: torch.device, force: bool = False):
        self.config = config
        self.catalog = catalog
        self.device = device
        self.force = force
        # models' outputs per (model, dataset) fingerprints, shared by every job and run (Context.model_outputs);
        # --force recomputes each once in this run and replaces what the catalog held
        self.output_cache = CatalogOutputCache(catalog, refresh=force)
        self._datasets: dict[str, sources.Dataset] = {}
        self._model_fps: dict[str, str] = {}

    def dataset(self, name: str) -> sources.Dataset:
        if name not in self._datasets:
            self._datasets[name] = sources.load_dataset(self.config.datasets[name], self.config.root)
        return self._datasets[name]

    def model_fingerprint(self, name: str) -> str:
        if name not in self._model_fps:
            self._model_fps[name] = sources.model_fingerprint(self.config.models[name])
        return self._model_fps[name]

    def cache_key(self, job: Job) -> str:
        payload = {
            "probe": job.probe.name,
            "version": job.probe.version,
            "params": job.params,
            "seed": self.config.seed,
            "models": [[m, self.model_fingerprint(m)] for m in job.models],
            "datasets": [[d, self.dataset(d).fingerprint] for d in job.datasets],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def run(
        self,
        jobs: list[Job],
        argv: list[str],
        progress_factory: ProgressFactory = no_progress,
        on_job_start: Callable[[Job, int], None] | None = None,
        on_job_end: Callable[[JobOutcome], None] | None = None,
    ) -> RunSummary:
        keys = [self.cache_key(job) for job in jobs]  # fingerprints every input before anything runs
        run_id = self.catalog.start_run(self._run_meta(argv))
        self._record_sources(jobs)
        outcomes: list[JobOutcome] = []
        status = "interrupted"
        try:
            for i, (job, key) in enumerate(zip(jobs, keys, strict=True)):
                if on_job_start:
                    on_job_start(job, i)
                outcome = self._run_job(run_id, job, key, progress_factory)
                outcomes.append(outcome)
                if on_job_end:
                    on_job_end(outcome)
            status = "failed" if any(o.status == "error" for o in outcomes) else "ok"
        finally:
            count = {s: sum(o.status == s for o in outcomes) for s in ("ok", "reused", "error")}
            with contextlib.suppress(Exception):  # never mask the original error; the run stays 'interrupted'
                self.catalog.finish_run(run_id, status, count["ok"], count["reused"], count["error"])
        return RunSummary(run_id, outcomes)

    def _run_job(self, run_id: str, job: Job, key: str, progress_factory: ProgressFactory) -> JobOutcome:
        if not self.force:
            cached = self.catalog.cached_result(key)
            if cached:
                return JobOutcome(job, "reused", cached)
        seed = int.from_bytes(hashlib.sha256(f"{self.config.seed}:{key}".encode()).digest()[:4], "little")
        models = [ModelHandle(m, self.model_fingerprint(m), self._model_loader(m)) for m in job.models]
        datasets = [self._dataset_handle(d) for d in job.datasets]
        ctx = Context(models, datasets, self.device, seed, progress_factory, self.output_cache)
        start = time.perf_counter()
        error = None
        result = None
        try:
            with single_threaded_blas():
                result = job.probe.run(ctx, dict(job.params))
        except UsageError:
            raise  # an input error (e.g. weights that do not fit): stop the run, exit 2
        except ProbeInputError as e:
            error = f"{type(e).__name__}: {e}"
        except Exception as e:  # a probe that raises records its error; the run goes on
            error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-8)}"
        duration = time.perf_counter() - start
        stored = StoredResult(
            run_id=run_id,
            cache_key=key,
            probe=job.probe.name,
            probe_version=job.probe.version,
            params=job.params,
            models=[(m.name, m.fingerprint) for m in models],
            datasets=[(d.name, d.fingerprint) for d in datasets],
            status="ok" if error is None else "error",
            error=error,
            warnings=list(result.warnings) if result else [],
            duration_s=duration,
            device=str(self.device),
            metrics=[(m.name, m.value, m.model, m.dataset) for m in result.metrics] if result else [],
            arrays=dict(result.arrays) if result else {},
        )
        result_id, written = self.catalog.record_result(stored, force=self.force)
        status = stored.status if written else "reused"
        return JobOutcome(job, status, result_id, duration, error, stored.warnings)

    def _model_loader(self, name: str) -> Callable[[], torch.nn.Module]:
        spec = self.config.models[name]
        return lambda: sources.load_model(spec, self.config.root, self.device)

    def _dataset_handle(self, name: str) -> DatasetHandle:
        data = self.dataset(name)
        return DatasetHandle(
            name, data.fingerprint, data.n, data.task, data.targets is not None, data.batches
        )

    def _record_sources(self, jobs: list[Job]) -> None:
        model_names = sorted({m for j in jobs for m in j.models})
        data_names = sorted({d for j in jobs for d in j.datasets})
        self.catalog.record_sources(
            "models",
            [(self.model_fingerprint(m), m, _spec_json(self.config.models[m]), None) for m in model_names],
        )
        self.catalog.record_sources(
            "datasets",
            [
                (self.dataset(d).fingerprint, d, _spec_json(self.config.datasets[d]), self.dataset(d).n)
                for d in data_names
            ],
        )

    def _run_meta(self, argv: list[str]) -> dict[str, Any]:
        import duckdb

        try:
            user = getpass.getuser()
        except Exception:
            user = "?"
        return {
            "tool_version": audit.__version__,
            "git_commit": _git_commit(self.config.root),
            "host": f"{user}@{socket.gethostname()}",
            "device": str(self.device),
            "argv": " ".join(argv),
            "config_path": str(self.config.path),
            "config_hash": self.config.text_hash,
            "python_version": platform.python_version(),
            "torch_version": torch.__version__,
            "duckdb_version": duckdb.__version__,
        }


def _spec_json(spec: Any) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(spec).items() if v not in (None, {}, [])
    }


__all__ = ["Job", "JobOutcome", "RunSummary", "Runner", "plan", "resolve_device"]
