"""Planning: the configured probe entries expanded into jobs (probe × models × datasets), filtered by the
command line, and split into disjoint shares for array tasks."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from audit.api.errors import UsageError
from audit.api.probe import Probe
from audit.config import Config, ProbeEntry


@dataclass(frozen=True)
class Job:
    probe: Probe
    entry_index: int
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    params: dict[str, Any]
    entry: str = ""  # the label of the probe entry it comes from (stored with its result)

    @property
    def label(self) -> str:
        # the entry's label, not only the probe's name: two entries of one probe on the same models and
        # datasets are two jobs, and the display and messages must tell them apart
        parts = [self.entry or self.probe.name, ",".join(self.models)]
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
                    name,
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
            jobs.append(Job(probe, entry.index, models, datasets, entry.params, entry.label or entry.probe))
    return jobs


def _check_counts(
    probe: Probe, entry: ProbeEntry, models: tuple[str, ...], datasets: tuple[str, ...]
) -> None:
    where = f"probes[{entry.index}]" if entry.index >= 0 else f"probe {probe.name!r}"
    check_job_counts(probe, where, models, datasets)


def check_job_counts(probe: Probe, where: str, models: tuple[str, ...], datasets: tuple[str, ...]) -> None:
    """One job's models and datasets against what the probe takes per job (its ``needs`` and ``check_job``)."""
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


def partition_jobs(jobs: list[Job], keys: list[str], k: int, n: int) -> list[Job]:
    """The K-th of N disjoint shares of the jobs (1-based), by cache key: stable when the config is reordered
    or edited elsewhere, so N array tasks (one node each, separate catalogs) split the work exactly once."""
    return [job for job, key in zip(jobs, keys, strict=True) if int(key[:12], 16) % n == k - 1]


def job_cache_key(
    probe: Probe, params: dict[str, Any], seed: int, model_fps: dict[str, str], dataset_fps: dict[str, str]
) -> str:
    """What a result is keyed by in the catalog: the probe and its version, the validated parameters, the
    configuration's seed, and the job's models and datasets by name and content fingerprint (in job order).
    `audit run` and the Python API (:func:`audit.run_probe`) key results by this one function."""
    payload = {
        "probe": probe.name,
        "version": probe.version,
        "params": params,
        "seed": seed,
        "models": [[m, fp] for m, fp in model_fps.items()],
        "datasets": [[d, fp] for d, fp in dataset_fps.items()],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def job_seed(seed: int, cache_key: str) -> int:
    """The seed a job's Context gets: drawn from the configuration's seed and the job's cache key, so two jobs
    of one run draw different samples and a job draws the same ones in every run."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{cache_key}".encode()).digest()[:4], "little")
