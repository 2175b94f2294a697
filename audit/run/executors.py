"""Executors: where a run's jobs execute. The contract, and the built-in `inline` and `local` executors.

An executor is registered through the ``register_executors`` hook, exactly like a probe, and chosen with
``audit run --executor NAME`` or an ``[executor]`` table in audit.toml (``name`` plus the executor's own
options, declared as :class:`~audit.api.probe.Param` and validated the same way). The driver (the runner) keeps
everything that touches the catalog; an executor only moves :class:`~audit.run.worker.JobSpec` values to workers
and :class:`~audit.run.worker.JobReport` values back, calling the driver's :class:`JobEvents` as things happen.
Its one promise: every spec it is given gets exactly one ``finished`` report — ok or error — unless the
driver aborts the run (a ``finished`` call raising a :class:`~audit.api.errors.UsageError`), in which case the
executor stops its workers and lets the exception through.

Built in:

* ``inline`` — every job in the driver's own process, one after the other (debugging, a single job, or a
  probe that must share the driver's process).
* ``local`` (the default) — a pool of worker processes on this machine: one per visible GPU, each bound to its
  device, or on the CPU ``workers`` processes (default: the CPU count, at most the number of jobs) that split the
  cores between them. A worker that dies mid-job (killed, segfault, the OOM killer) is replaced and the job
  retried, at most ``max_retries`` times, after which its error is recorded. Workers die with the driver
  (Linux parent-death signal), so a killed ``audit run`` leaves no orphans computing results nobody records.

Declaring and registering an executor imports no torch and no worker: every command that loads audit.toml
validates its ``[executor]`` table against the installed executors, and `audit gate` runs no job. torch and
:mod:`audit.run.worker` are imported where jobs run.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from audit.api.probe import Param, validate
from audit.config import DEFAULT_EXECUTOR as DEFAULT_EXECUTOR  # re-exported: a run that names none

if TYPE_CHECKING:
    import torch

    from audit.api.context import Progress
    from audit.run.worker import JobReport, JobSpec, WorkerState


class JobEvents(Protocol):
    """What the driver hears from an executor (called from the driver's thread only)."""

    def started(self, spec: JobSpec, where: str) -> None: ...

    def bar(self, spec: JobSpec, total: float, description: str) -> Progress: ...

    def retrying(self, spec: JobSpec, reason: str, attempt: int) -> None: ...

    def finished(self, report: JobReport) -> None: ...


@dataclass
class DriverInfo:
    """What an executor may know about the driver: its device and its own worker state (for ``inline``)."""

    device: torch.device
    inline_state: WorkerState


class Executor:
    """Base class of every executor; subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[tuple[Param, ...]] = ()

    def validate_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in, every value checked; raises KeyError/ValueError naming the option."""
        return validate(self.options, given, "option", f"executor {self.name!r}")

    def run(
        self, specs: list[JobSpec], events: JobEvents, options: dict[str, Any], driver: DriverInfo
    ) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "options": [p.describe() for p in self.options],
        }


# --------------------------------------------------------------------------------------------- inline


class InlineExecutor(Executor):
    name = "inline"
    description = "every job in the driver's own process, one after the other"

    def run(self, specs, events, options, driver) -> None:
        from audit.run.worker import execute

        for spec in specs:
            events.started(spec, "driver")
            report = execute(spec, driver.inline_state, lambda total, d, s=spec: events.bar(s, total, d))
            events.finished(report)


# ---------------------------------------------------------------------------------------------- local


class LocalExecutor(Executor):
    name = "local"
    description = "a pool of worker processes on this machine: one per GPU, or a CPU pool"
    options = (
        Param("workers", int, 0, "worker processes (0: one per visible GPU, else the CPU count)", min=0),
        Param(
            "threads", int, 0, "torch threads per CPU worker (0: the driver's torch threads / workers)", min=0
        ),
        Param("max_retries", int, 2, "times a job is retried after its worker died", min=0),
    )

    def run(self, specs, events, options, driver) -> None:
        import torch

        if not specs:
            return
        gpus = torch.cuda.device_count() if driver.device.type == "cuda" else 0
        if gpus and driver.device.index is not None:
            devices = [str(driver.device)]  # --device cuda:N: that one GPU
        elif gpus:
            devices = [f"cuda:{i}" for i in range(gpus)]
        else:
            n = options["workers"] or min(len(specs), os.cpu_count() or 1)
            devices = ["cpu"] * max(1, min(n, len(specs)))
        if options["workers"] and gpus:
            devices = (devices * options["workers"])[: options["workers"]]
        # the driver's torch thread count already honours OMP_NUM_THREADS (a pinned CI, a shared node): the
        # workers split it, never exceed it — oversubscribed OpenMP pools busy-wait (a 30 s job took > 300 s)
        threads = options["threads"] or max(1, torch.get_num_threads() // len(devices))
        _Pool(devices, threads, options["max_retries"], events).run(specs)


class _Worker:
    def __init__(self, ctx, slot: int, device: str, threads: int, generation: int):
        self.slot, self.device = slot, device
        self.name = f"worker {slot}" + (f".{generation}" if generation else "") + f" ({device})"
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, self.name, device, threads),
            name=f"audit-{self.name}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.spec: JobSpec | None = None
        self.bars: dict[int, Progress] = {}


class _Pool:
    """The driver side of the local pool: hand out specs, relay progress, notice deaths, retry, stop."""

    def __init__(self, devices: list[str], threads: int, max_retries: int, events: JobEvents):
        self.ctx = mp.get_context("spawn")  # fork would copy torch/CUDA/DuckDB state; spawn starts clean
        self.devices, self.threads, self.max_retries, self.events = devices, threads, max_retries, events
        self.deaths: dict[int, list[str]] = {}
        self.generation = 0

    def run(self, specs: list[JobSpec]) -> None:
        pending = deque(specs)
        workers = [_Worker(self.ctx, i, d, self.threads, 0) for i, d in enumerate(self.devices)]
        try:
            while pending or any(w.spec is not None for w in workers):
                for w in workers:
                    if w.spec is None and pending:
                        w.spec = pending.popleft()
                        w.bars = {}
                        w.conn.send(w.spec)
                        self.events.started(w.spec, w.name)
                busy = [w for w in workers if w.spec is not None]
                ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=1.0)
                for w in busy:
                    if w.conn in ready or w.process.sentinel in ready:
                        self._drain(w)
                for i, w in enumerate(workers):
                    if w.spec is not None and not w.process.is_alive():
                        self._drain(w)  # a report sent just before the exit still counts
                    if w.spec is not None and not w.process.is_alive():
                        spec = w.spec
                        w.spec = None
                        self._died(spec, w, pending)
                        self.generation += 1
                        workers[i] = _Worker(self.ctx, w.slot, w.device, self.threads, self.generation)
        finally:
            _stop(workers)

    def _drain(self, w: _Worker) -> None:
        while w.spec is not None:
            try:
                if not w.conn.poll():
                    return
                message = w.conn.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "report":
                w.spec = None
                self.events.finished(message[1])
            elif kind == "bar":
                _, bar_id, total, description = message
                w.bars[bar_id] = self.events.bar(w.spec, total, description)
            elif kind == "advance":
                _, bar_id, steps = message
                if bar_id in w.bars:
                    w.bars[bar_id].advance(steps)

    def _died(self, spec: JobSpec, w: _Worker, pending: deque) -> None:
        from audit.run.worker import JobReport

        code = w.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        deaths = self.deaths.setdefault(spec.index, [])
        deaths.append(how)
        if len(deaths) <= self.max_retries:
            self.events.retrying(spec, f"{w.name} died ({how})", len(deaths) + 1)
            pending.appendleft(spec)
            return
        self.events.finished(
            JobReport(
                spec.index,
                "error",
                f"WorkerDied: the worker running this job died on each of {len(deaths)} attempt(s) "
                f"({'; '.join(deaths)}); not retried further (max_retries = {self.max_retries})",
                device=w.device,
                worker=w.name,
            )
        )


def _stop(workers: list[_Worker]) -> None:
    for w in workers:
        with contextlib.suppress(Exception):
            w.conn.send(None)
    deadline = time.monotonic() + 5
    for w in workers:
        w.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=5)
        with contextlib.suppress(Exception):
            w.conn.close()


# ------------------------------------------------------------------------------------- worker process


class _PipeBar:
    """A progress bar in a worker: advances are summed and sent at most every 0.2 s (a pipe, not a tty)."""

    def __init__(self, conn: Connection, bar_id: int):
        self.conn, self.bar_id = conn, bar_id
        self.pending = 0.0
        self.last = time.monotonic()

    def advance(self, steps: float = 1) -> None:
        self.pending += steps
        now = time.monotonic()
        if now - self.last >= 0.2:
            self.conn.send(("advance", self.bar_id, self.pending))
            self.pending, self.last = 0.0, now

    def flush(self) -> None:
        if self.pending:
            self.conn.send(("advance", self.bar_id, self.pending))
            self.pending = 0.0


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the driver dies (kill -9 of `audit run` must not leave orphans)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the driver died before prctl took effect
                os._exit(1)


def _worker_main(conn: Connection, name: str, device: str, threads: int) -> None:
    import torch

    from audit.run.worker import WorkerState, execute

    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    torch.set_num_threads(threads)
    state = WorkerState(name, device)
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
        bars: list[_PipeBar] = []

        def factory(total: float, description: str, bars=bars) -> _PipeBar:
            for b in bars:
                b.flush()
            bar = _PipeBar(conn, len(bars))
            conn.send(("bar", bar.bar_id, total, description))
            bars.append(bar)
            return bar

        report = execute(spec, state, factory)
        try:
            for b in bars:
                b.flush()
            conn.send(("report", report))
        except (BrokenPipeError, OSError):
            return


BUILTIN: tuple[type[Executor], ...] = (InlineExecutor, LocalExecutor)


@lru_cache(maxsize=1)
def installed_executors() -> dict[str, Executor]:
    """Every executor by name: the built-in ``inline`` and ``local``, then those plugins register."""
    from audit.registry import collect

    found: dict[str, Executor] = {cls.name: cls() for cls in BUILTIN}
    seen = {name: "model-audit" for name in found}
    for executor, _ in collect("register_executors", "executor", Executor, "an audit executor", seen):
        found[executor.name] = executor
    return found
