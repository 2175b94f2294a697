"""Expands (probe × models × datasets) into jobs, skips what the catalog has, runs the rest, records each.

A job's cache key hashes the probe's name and version, its validated parameters, the seed, and the
name and content fingerprint of every model and dataset in their roles; a stored successful result
with the same key is reused unless ``force``. Each result is committed as soon as its job finishes,
so an interrupted run loses only the job in flight and the next run resumes from there.
"""

from __future__ import annotations

import contextlib
import getpass
import platform
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

import audit
from audit.api.context import Progress, no_progress
from audit.api.errors import UsageError
from audit.catalog.store import Catalog, CatalogOutputCache, StoredResult
from audit.config import Config
from audit.history import head_commit
from audit.run import sources
from audit.run.plan import Job, job_cache_key, job_seed
from audit.run.worker import JobReport, JobSpec, WorkerState
from audit.specs import as_json

if TYPE_CHECKING:
    from audit.run.executors import Executor


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


class RunDisplay(Protocol):
    """What the CLI shows while a run goes: jobs starting, their progress bars, retries, outcomes."""

    def job_started(self, job: Job, where: str) -> None: ...

    def bar(self, job: Job, total: float, description: str) -> Progress: ...

    def job_retrying(self, job: Job, reason: str, attempt: int) -> None: ...

    def job_finished(self, outcome: JobOutcome) -> None: ...


class _Quiet:
    def job_started(self, job: Job, where: str) -> None:
        pass

    def bar(self, job: Job, total: float, description: str) -> Progress:
        return no_progress(total, description)

    def job_retrying(self, job: Job, reason: str, attempt: int) -> None:
        pass

    def job_finished(self, outcome: JobOutcome) -> None:
        pass


class Runner:
    """Runs jobs for one configuration against one catalog; the only writer of that catalog.

    The runner is the driver: it fingerprints inputs, skips jobs the catalog already holds, hands the rest to
    an executor (:mod:`audit.run.executors`: in this process, a local process pool, a Ray cluster) and records
    each report the moment it arrives — one transaction per job — so a run killed at any point keeps every
    finished result and the next run resumes from there.
    """

    def __init__(self, config: Config, catalog: Catalog, device: torch.device, force: bool = False):
        self.config = config
        self.catalog = catalog
        self.device = device
        self.force = force
        # models' outputs per (model, dataset) fingerprints, shared by every job and run (Context.model_outputs);
        # --force recomputes each once in this run and replaces what the catalog held
        self.output_cache = CatalogOutputCache(catalog, refresh=force)
        # the driver's own worker state: the inline executor runs jobs with it, and the driver loads its
        # datasets through it (for fingerprints), so an inline job reuses what fingerprinting loaded
        self.inline_state = WorkerState("driver", None, output_cache=self.output_cache)
        self._model_fps: dict[str, str] = {}
        self._checked: tuple[tuple[int, ...], list[str], dict[str, str]] | None = None

    def dataset(self, name: str) -> sources.Dataset:
        return self.inline_state.dataset(self.config.datasets[name], self.config.root)

    def model_fingerprint(self, name: str) -> str:
        if name not in self._model_fps:
            self._model_fps[name] = sources.model_fingerprint(self.config.models[name])
        return self._model_fps[name]

    def cache_key(self, job: Job) -> str:
        return job_cache_key(
            job.probe,
            job.params,
            self.config.seed,
            {m: self.model_fingerprint(m) for m in job.models},
            {d: self.dataset(d).fingerprint for d in job.datasets},
        )

    def spec(self, index: int, job: Job, key: str, with_outputs: bool = False) -> JobSpec:
        """The job as plain data for a worker (see :class:`audit.run.worker.JobSpec`); `with_outputs` adds the
        model outputs the catalog holds for its models and datasets (none under ``--force``)."""
        seed = job_seed(self.config.seed, key)
        fingerprints = {f"model:{m}": self.model_fingerprint(m) for m in job.models}
        fingerprints |= {f"dataset:{d}": self.dataset(d).fingerprint for d in job.datasets}
        outputs = {}
        if with_outputs and not self.force:
            pairs = [
                (fingerprints[f"model:{m}"], fingerprints[f"dataset:{d}"]) for m in job.models for d in job.datasets
            ]
            outputs = self.catalog.outputs_for(pairs)
        return JobSpec(
            index=index,
            label=job.label,
            probe=job.probe.name,
            models=tuple(self.config.models[m] for m in job.models),
            datasets=tuple(self.config.datasets[d] for d in job.datasets),
            params=dict(job.params),
            cache_key=key,
            seed=seed,
            root=str(self.config.root),
            fingerprints=fingerprints,
            device=str(self.device),
            gpus=job.probe.needs.gpus if self.device.type == "cuda" else 0.0,
            outputs=outputs,
        )

    def check_inputs(self, jobs: list[Job]) -> tuple[list[str], dict[str, str]]:
        """Load every input of `jobs` before the run writes anything: each dataset (read and fingerprinted,
        its values checked) and each model a job still has to compute with that the catalog has never seen
        run (built once on the CPU, its weights fitted, then dropped — workers build their own; a model of a
        fingerprint the catalog knows is built from the same files and factory, so it is not built again).
        An input error raises here, so the run leaves no trace in the catalog. Returns the jobs' cache keys
        and the stored results they hit (cache key → result id). Done once per set of jobs; :meth:`run`
        calls it when the caller has not.
        """
        marker = tuple(id(j) for j in jobs)
        if self._checked is not None and self._checked[0] == marker:
            return self._checked[1], self._checked[2]
        keys = [self.cache_key(job) for job in jobs]  # loads and fingerprints every dataset
        stored = {} if self.force else self.catalog.cached_results(keys)
        needed = sorted({m for job, key in zip(jobs, keys, strict=True) if key not in stored for m in job.models})
        known = self.catalog.known_models([self.model_fingerprint(m) for m in needed])
        for name in (m for m in needed if self.model_fingerprint(m) not in known):
            model = sources.load_model(self.config.models[name], self.config.root, torch.device("cpu"))
            del model
        self._checked = (marker, keys, stored)
        return keys, stored

    def run(
        self,
        jobs: list[Job],
        argv: list[str],
        display: RunDisplay | None = None,
        executor: Executor | None = None,
        executor_options: dict[str, Any] | None = None,
    ) -> RunSummary:
        """Run `jobs` on `executor` (default: in this process) and record every outcome as it arrives."""
        from audit.run.executors import DriverInfo, InlineExecutor

        display = display or _Quiet()
        executor = executor or InlineExecutor()
        # options come validated (audit.toml at load, the command line in the CLI); none: the defaults
        options = executor_options if executor_options is not None else executor.validate_options({})
        self.inline_state.probes.update({job.probe.name: job.probe for job in jobs})
        keys, stored = self.check_inputs(jobs)  # every input loads before anything is written
        run_id = self.catalog.start_run(self._run_meta(argv))
        self._record_sources(jobs)
        outcomes: dict[int, JobOutcome] = {}
        status = "interrupted"
        try:
            specs = []
            for i, (job, key) in enumerate(zip(jobs, keys, strict=True)):
                cached = stored.get(key)
                if cached:
                    outcomes[i] = JobOutcome(job, "reused", cached)
                    display.job_finished(outcomes[i])
                else:
                    specs.append(self.spec(i, job, key, with_outputs=executor.name != "inline"))
            # the results this run uses without computing them: part of "the results of this run"
            self.catalog.record_reuses(run_id, [o.result_id for o in outcomes.values() if o.result_id])
            events = _DriverEvents(self, run_id, jobs, outcomes, display)
            executor.run(specs, events, options, DriverInfo(self.device, self.inline_state))
            missing = [s.label for s in specs if s.index not in outcomes]
            if missing:  # an executor broke its promise: say so rather than report a complete run
                raise RuntimeError(f"executor {executor.name!r} returned no report for: {', '.join(missing)}")
            status = "failed" if any(o.status == "error" for o in outcomes.values()) else "ok"
        finally:
            done = list(outcomes.values())
            count = {s: sum(o.status == s for o in done) for s in ("ok", "reused", "error")}
            with contextlib.suppress(Exception):  # never mask the original error; the run stays 'interrupted'
                self.catalog.finish_run(run_id, status, count["ok"], count["reused"], count["error"])
        return RunSummary(run_id, [outcomes[i] for i in sorted(outcomes)])

    def record(self, run_id: str, job: Job, spec: JobSpec, report: JobReport) -> JobOutcome:
        """Write one report into the catalog (one transaction) and cache the outputs it computed."""
        for model_fp, dataset_fp, kind, array in report.outputs:
            self.output_cache.put(model_fp, dataset_fp, kind, array)
        stored = StoredResult(
            run_id=run_id,
            cache_key=spec.cache_key,
            probe=job.probe.name,
            probe_version=job.probe.version,
            params=job.params,
            models=[(m, spec.fingerprints[f"model:{m}"]) for m in job.models],
            datasets=[(d, spec.fingerprints[f"dataset:{d}"]) for d in job.datasets],
            status="ok" if report.status == "ok" else "error",
            error=report.error,
            warnings=list(report.warnings),
            duration_s=report.duration_s,
            device=report.device,
            metrics=list(report.metrics),
            arrays=dict(report.arrays),
            entry=job.entry,
        )
        result_id, written = self.catalog.record_result(stored, force=self.force)
        if not written:  # another process stored this job meanwhile: this run uses that result
            self.catalog.record_reuses(run_id, [result_id])
        status = stored.status if written else "reused"
        return JobOutcome(job, status, result_id, report.duration_s, report.error, stored.warnings)

    def _record_sources(self, jobs: list[Job]) -> None:
        model_names = sorted({m for j in jobs for m in j.models})
        data_names = sorted({d for j in jobs for d in j.datasets})
        self.catalog.record_sources(
            "models",
            [(self.model_fingerprint(m), m, as_json(self.config.models[m]), None) for m in model_names],
        )
        self.catalog.record_sources(
            "datasets",
            [
                (self.dataset(d).fingerprint, d, as_json(self.config.datasets[d]), self.dataset(d).n)
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
            "git_commit": head_commit(self.config.root),
            "host": f"{user}@{socket.gethostname()}",
            "device": str(self.device),
            "argv": " ".join(argv),
            "config_path": str(self.config.path),
            "config_hash": self.config.text_hash,
            "python_version": platform.python_version(),
            "torch_version": torch.__version__,
            "duckdb_version": duckdb.__version__,
        }


class _DriverEvents:
    """The runner's side of :class:`audit.run.executors.JobEvents`: record each report as it arrives."""

    def __init__(self, runner: Runner, run_id: str, jobs: list[Job], outcomes: dict[int, JobOutcome], display):
        self.runner, self.run_id, self.jobs, self.outcomes, self.display = runner, run_id, jobs, outcomes, display
        self.specs: dict[int, JobSpec] = {}

    def started(self, spec: JobSpec, where: str) -> None:
        self.specs[spec.index] = spec
        self.display.job_started(self.jobs[spec.index], where)

    def bar(self, spec: JobSpec, total: float, description: str) -> Progress:
        return self.display.bar(self.jobs[spec.index], total, description)

    def retrying(self, spec: JobSpec, reason: str, attempt: int) -> None:
        self.display.job_retrying(self.jobs[spec.index], reason, attempt)

    def finished(self, report: JobReport) -> None:
        if report.status == "usage_error":  # an input error (e.g. weights that do not fit): stop, exit 2
            raise UsageError(report.error or "usage error in a worker")
        if report.index in self.outcomes:
            return  # a duplicate report (an executor retried a job that had in fact finished): keep the first
        job = self.jobs[report.index]
        spec = self.specs.get(report.index) or self.runner.spec(report.index, job, self.runner.cache_key(job))
        outcome = self.runner.record(self.run_id, job, spec, report)
        self.outcomes[report.index] = outcome
        self.display.job_finished(outcome)


__all__ = ["JobOutcome", "RunSummary", "Runner"]
