"""The `ray` executor: run a run's jobs as Ray tasks, on a local Ray instance or a cluster.

The driver stays where `audit run` was started and remains the catalog's only writer; each job is one Ray task
that runs :func:`audit.run.worker.execute` and returns its :class:`~audit.run.worker.JobReport` through Ray's object
store, so workers need no access to the catalog. What workers do need is the project: the audit.toml, its
factories, weights and data, at the same absolute paths (a shared file system), or shipped with the job
(``working_dir = true``: Ray uploads the config's folder to every node; mind Ray's size limit on it).

* ``num_gpus`` per task is the probe's declared GPU share (``Needs.gpus``, 1 by default) on a CUDA run and 0
  on a CPU run; ``cpus_per_job`` CPUs per task.
* A worker process that dies (killed, a node lost) is retried by Ray itself, ``max_retries`` times
  (``retry_exceptions`` stays off: a probe's exception is a recorded result, not a reason to rerun it); after
  that the job's error is recorded and the run goes on.
* ``address = ""`` starts a private local Ray instance for the run (``num_cpus`` CPUs; 0: all of them) and
  stops it at the end; ``"auto"`` or ``"ray://host:10001"`` joins a running cluster and leaves it running.

Registering the executor imports no torch, Ray or worker (every command that loads audit.toml validates its
``[executor]`` table): they are imported where jobs run.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from audit.api.errors import UsageError
from audit.api.probe import Param
from audit.run.executors import Executor

if TYPE_CHECKING:
    from audit.run.worker import JobReport, JobSpec, WorkerState

_STATE: WorkerState | None = None  # one per Ray worker process, kept across the tasks it runs


def run_job(spec: JobSpec) -> JobReport:
    """The Ray task: run one job in this worker process (its datasets and configs stay cached here)."""
    global _STATE
    from audit.run.worker import WorkerState, execute

    if _STATE is None:
        import torch

        threads = int(os.environ.get("AUDIT_TORCH_THREADS", "0"))
        if threads:
            torch.set_num_threads(threads)
        _STATE = WorkerState(f"ray worker {os.getpid()}")
    return execute(spec, _STATE)


class RayExecutor(Executor):
    name = "ray"
    description = "Ray tasks on a local Ray instance or a cluster (pip install 'model-audit[ray]')"
    options = (
        Param(
            "address", str, "", "'' starts a local Ray instance; 'auto' or 'ray://host:port' joins a cluster"
        ),
        Param("num_cpus", int, 0, "CPUs of a local instance (0: all)", min=0),
        Param("cpus_per_job", float, 1.0, "CPUs each job's task reserves", min=0),
        Param("max_retries", int, 2, "times Ray reruns a task whose worker died", min=0),
        Param("working_dir", bool, False, "ship the config's folder to the workers (no shared file system)"),
    )

    def run(self, specs, events, options, driver) -> None:
        if not specs:
            return
        try:
            import ray
        except ImportError:
            raise UsageError(
                "the ray executor needs Ray: pip install 'model-audit[ray]' (or pip install ray)"
            ) from None
        ours = not ray.is_initialized()
        if ours:
            self._init(ray, specs, options)
        try:
            self._run(ray, specs, events, options)
        finally:
            if ours:
                ray.shutdown()

    @staticmethod
    def _init(ray, specs: list[JobSpec], options: dict[str, Any]) -> None:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if options["address"]:
            kwargs["address"] = options["address"]
        elif options["num_cpus"]:
            kwargs["num_cpus"] = options["num_cpus"]
        runtime_env: dict[str, Any] = {
            "env_vars": {"AUDIT_TORCH_THREADS": str(max(1, int(options["cpus_per_job"])))}
        }
        if options["working_dir"]:
            runtime_env["working_dir"] = specs[0].root
        kwargs["runtime_env"] = runtime_env
        try:
            ray.init(**kwargs)
        except Exception as e:  # a cluster that cannot be reached is the user's to fix: one line, exit 2
            raise UsageError(f"cannot start or join Ray ({options['address'] or 'local'}): {e}") from None

    @staticmethod
    def _run(ray, specs: list[JobSpec], events, options: dict[str, Any]) -> None:
        from audit.run.worker import JobReport

        task = ray.remote(run_job)
        refs = {}
        for spec in specs:
            if options["working_dir"]:  # the project folder is the task's working directory on every node
                spec = spec.relocated(".")
            ref = task.options(
                num_cpus=options["cpus_per_job"],
                num_gpus=spec.gpus,
                max_retries=options["max_retries"],
                retry_exceptions=False,
                name=f"audit: {spec.label}"[:200],
            ).remote(spec)
            refs[ref] = spec
            events.started(spec, "ray")
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                spec = refs.pop(ref)
                try:
                    report = ray.get(ref)
                except Exception as e:  # the task's worker died more often than max_retries allows
                    report = JobReport(
                        spec.index,
                        "error",
                        f"WorkerDied: Ray gave up on this job after {options['max_retries']} retries: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        device=spec.device,
                        worker="ray",
                    )
                events.finished(report)
