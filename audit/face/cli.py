"""The `audit` command line: parse, call the core, render with rich. No probe mathematics here.

Exit codes: 0 success; 1 a gate failed (or a job of `audit run` recorded an error); 2 a usage,
configuration or input error, reported as one line with no traceback.

Start-up: this module imports Typer, Rich and the light parts of `audit` only. A command imports what it
needs inside its function (the catalog: DuckDB; the runner: torch), and only the commands that use probes
register them; registering imports each probe's declaration, which imports no NumPy, SciPy or torch (its
methods do, when they run). So `audit --help`, `--version`, `query` and `gate` start without torch
(tests/test_startup.py checks which modules each imports).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import rich.markup
import typer
from rich.console import Console
from rich.table import Table

import audit
from audit.api.commands import one_line, one_line_errors
from audit.api.errors import UsageError
from audit.catalog import DEFAULT_WAIT_S
from audit.face.tables import pivot, short_label

if TYPE_CHECKING:
    from rich.progress import Progress

    from audit.api.probe import Probe
    from audit.catalog.store import Catalog
    from audit.config import Config
    from audit.gates import Verdict

def _flags_as_flags() -> None:
    """Help shows a flag as a flag (``--force``), not as ``--force <bool>``: this Typer prints a type for every
    option, flags included; a flag takes no value, so it gets none (checked in tests/test_cli_conventions.py)."""
    import typer.core

    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_flags_as_flags", False):
        return

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._flags_as_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_as_flags()

app = typer.Typer(
    name="audit",
    help="Audit trained neural networks like scientific instruments: probes, a DuckDB catalog, CI gates.",
    no_args_is_help=True,
    add_completion=True,  # audit --install-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)

# Piped output (a CI log, a file, `| less`) is not wrapped: rich would fold tables at 80 columns (or at a
# COLUMNS inherited from some parent) and split metric names and numbers across lines. A terminal keeps its
# width (and COLUMNS, as rich reads it).
UNWRAPPED_WIDTH = 10_000


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=UNWRAPPED_WIDTH)


err = _console(stderr=True)
out = _console(stderr=False)

F = TypeVar("F", bound=Callable[..., Any])


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="the audit.toml to use")]
CatalogOpt = Annotated[
    Path | None,
    typer.Option("--catalog", help="catalog file (default: from audit.toml, else .audit/catalog.duckdb)"),
]
WaitOpt = Annotated[
    float, typer.Option("--wait", help="seconds to wait for a catalog another process is writing")
]


_warned: set[str] = set()


def _warn_plugin_errors() -> None:
    """Warn once about each plugin that failed to load or to register what it provides."""
    from audit.registry import plugin_errors

    for problem in plugin_errors():
        if problem not in _warned:
            _warned.add(problem)
            err.print(f"[yellow]warning:[/] {one_line(problem)}", highlight=False, soft_wrap=True)


def installed_probes() -> dict[str, Probe]:
    """The installed probes by name: registering them imports each plugin's probe module (the first call)."""
    from audit.registry import installed_probes as registered

    found = registered()
    _warn_plugin_errors()
    return found


def _config(path: Path) -> Config:
    """audit.toml, every key validated once: against the installed probes and executors."""
    from audit.config import load_config
    from audit.run.executors import installed_executors

    return load_config(path, installed_probes(), installed_executors())


def _catalog_path(config: Path, catalog: Path | None) -> Path:
    """--catalog, else the config's `catalog` key (read without validating the rest), else the default."""
    from audit.config import catalog_location

    return catalog if catalog is not None else catalog_location(config)


def _open_catalog(path: Path, wait: float) -> Catalog:
    from audit.catalog.store import Catalog

    return Catalog(path, wait_s=wait, on_wait=lambda m: err.print(f"[yellow]{m}[/]", highlight=False))


# ------------------------------------------------------------------ probes


@app.command()
@one_line_errors
def probes(
    name: Annotated[
        str | None, typer.Argument(help="one probe: its parameters with types, defaults and descriptions")
    ] = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table or json")
    ] = OutputFormat.table,
) -> None:
    """List the installed probes (built-in and third-party) with version, needs and parameters."""
    from audit.registry import probe_origins

    found = installed_probes()
    origins = probe_origins()
    if name is not None:
        if name not in found:
            raise UsageError(f"unknown probe {name!r} (installed: {', '.join(found) or 'none'})")
        _describe_probe(found[name], origins[name], format)
        return
    if format is OutputFormat.json:
        out.print_json(
            json.dumps([{**p.describe(), "plugin": origins[n]} for n, p in found.items()], default=str)
        )
        return
    if format is OutputFormat.csv:
        raise UsageError("--format csv is not available for `audit probes` (use table or json)")
    table = Table(title=f"{len(found)} installed probe(s)", show_lines=True)
    for col in ("probe", "version", "needs", "parameters", "description"):
        table.add_column(col, overflow="fold")
    for name, p in found.items():
        needs = p.needs.describe()
        need_text = "\n".join(f"{k}: {_range(needs[k])}" for k in ("models", "datasets"))
        if needs.get("gpus") != 1.0:
            need_text += f"\ngpus: {needs['gpus']:g}"
        params = "\n".join(f"{q.name} ({q.type.__name__}) = {q.default!r}" for q in p.params) or "—"
        table.add_row(
            f"[bold]{name}[/]\n[dim]{origins[name]}[/]", p.version, need_text, params, p.description
        )
    out.print(table)


def _describe_probe(p: Probe, origin: str, format: OutputFormat) -> None:
    """`audit probes NAME`: what one probe needs and every parameter it takes."""
    if format is OutputFormat.json:
        _print_json({**p.describe(), "plugin": origin, "key_metrics": list(p.key_metrics)})
        return
    if format is OutputFormat.csv:
        raise UsageError("--format csv is not available for `audit probes` (use table or json)")
    needs = p.needs.describe()
    out.print(f"[bold]{p.name}[/] {p.version}  [dim]({rich.markup.escape(origin)})[/]", highlight=False)
    out.print(rich.markup.escape(p.description), highlight=False)
    out.print(
        f"per job: models {_range(needs['models'])}, datasets {_range(needs['datasets'])}"
        + (f", gpus {needs['gpus']:g}" if needs.get("gpus") != 1.0 else ""),
        highlight=False,
    )
    if p.key_metrics:
        out.print(f"key metrics: {', '.join(p.key_metrics)}", highlight=False)
    table = Table(title=f"parameters of {p.name} (audit.toml: params = {{ name = value }})")
    for col in ("parameter", "type", "default", "allowed", "description"):
        table.add_column(col, overflow="fold")
    for q in p.params:
        allowed = []
        if q.choices is not None:
            allowed.append(" | ".join(map(str, q.choices)))
        if q.min is not None:
            allowed.append(f">= {q.min:g}")
        if q.max is not None:
            allowed.append(f"<= {q.max:g}")
        table.add_row(
            q.name,
            q.type.__name__,
            rich.markup.escape(repr(q.default)),
            rich.markup.escape(", ".join(allowed) or "—"),
            rich.markup.escape(q.help or "—"),
        )
    out.print(table)


@app.command()
@one_line_errors
def executors(
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table or json")
    ] = OutputFormat.table,
) -> None:
    """List the installed executors (where `audit run` executes jobs) with their options."""
    from audit.run.executors import installed_executors

    found = installed_executors()
    _warn_plugin_errors()
    if format is OutputFormat.json:
        out.print_json(json.dumps([e.describe() for e in found.values()], default=str))
        return
    if format is OutputFormat.csv:
        raise UsageError("--format csv is not available for `audit executors` (use table or json)")
    table = Table(title=f"{len(found)} executor(s)", show_lines=True)
    for col in ("executor", "options", "description"):
        table.add_column(col, overflow="fold")
    for name, e in found.items():
        options = (
            "\n".join(f"{p.name} ({p.type.__name__}) = {p.default!r}: {p.help}" for p in e.options) or "—"
        )
        table.add_row(f"[bold]{name}[/]", rich.markup.escape(options), rich.markup.escape(e.description))
    out.print(table)


def _range(bounds: list[int | None]) -> str:
    lo, hi = bounds
    if hi is None:
        return f"{lo}+"
    return str(lo) if lo == hi else f"{lo}–{hi}"


# ------------------------------------------------------------------ run


class _RunDisplay:
    """The `audit run` display: one overall bar (done / running / failed) and a bar per running job's work."""

    def __init__(self, progress: Progress, total: int):
        self.progress = progress
        self.overall = progress.add_task("jobs", total=total)
        self.running: dict[str, str] = {}
        self.failed = 0
        self.bars: dict[str, list[Any]] = {}

    def _describe(self) -> None:
        parts = ["jobs"]
        if self.running:
            parts.append(f"{len(self.running)} running")
        if self.failed:
            parts.append(f"[red]{self.failed} failed[/]")
        if len(self.running) == 1:
            parts.append(next(iter(self.running)))
        self.progress.update(self.overall, description=" · ".join(parts))

    def job_started(self, job, where: str) -> None:
        self.running[job.label] = where
        self._describe()

    def bar(self, job, total: float, description: str):
        for task_id in self.bars.pop(job.label, []):  # one bar per job at a time: the newest
            self.progress.remove_task(task_id)
        task_id = self.progress.add_task(f"  {description}", total=total)
        self.bars[job.label] = [task_id]
        progress = self.progress

        class _Bar:
            def advance(self, steps: float = 1) -> None:
                if task_id in progress.task_ids:  # a bar the job replaced since may still report
                    progress.advance(task_id, steps)

        return _Bar()

    def job_retrying(self, job, reason: str, attempt: int) -> None:
        self.progress.console.print(
            f"[yellow]retry[/] {job.label}: {reason}; attempt {attempt}", highlight=False
        )

    def job_finished(self, outcome) -> None:
        label = outcome.job.label
        self.running.pop(label, None)
        for task_id in self.bars.pop(label, []):
            self.progress.remove_task(task_id)
        self.failed += outcome.status == "error"
        self.progress.advance(self.overall)
        self._describe()
        mark = {"ok": "[green]done[/]", "reused": "[cyan]cached[/]", "error": "[red]error[/]"}[outcome.status]
        line = f"{mark} {label} ({outcome.duration_s:.2f} s)"
        if outcome.result_id:  # what `audit show` takes
            line += f" [dim]result {outcome.result_id}[/]"
        if outcome.error:
            line += f": {outcome.error.splitlines()[0]}"
        self.progress.console.print(line, highlight=False)
        for w in outcome.warnings:
            self.progress.console.print(f"  [yellow]warning:[/] {w}", highlight=False)


def _executor(cfg: Config, name: str | None, workers: int | None, address: str | None):
    """The executor and its options: `--executor` over the config's [executor] name over the default. The
    config's options (validated when it was loaded) apply when it names the chosen executor; another gets
    its defaults. --workers/--address override them."""
    from audit.run.executors import DEFAULT_EXECUTOR, installed_executors

    table = dict(cfg.executor)
    configured = table.pop("name", DEFAULT_EXECUTOR)
    chosen = name or configured
    executors = installed_executors()
    _warn_plugin_errors()
    if chosen not in executors:
        raise UsageError(f"--executor: unknown executor {chosen!r} (installed: {', '.join(executors)})")
    executor = executors[chosen]
    options = table if chosen == configured else {}
    known = {p.name for p in executor.options}
    for flag, key, value in (("--workers", "workers", workers), ("--address", "address", address)):
        if value is None:
            continue
        if key not in known:
            raise UsageError(f"{flag}: the {chosen!r} executor has no {key!r} option")
        options[key] = value
    try:
        return executor, executor.validate_options(options)
    except (KeyError, ValueError) as e:
        raise UsageError(e.args[0] if isinstance(e, KeyError) else str(e)) from None


def _partition(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"--partition: expected K/N with 1 <= K <= N (e.g. 2/8), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@app.command()
@one_line_errors
def run(
    probe: Annotated[
        list[str] | None, typer.Argument(help="probes to run (default: every configured entry)")
    ] = None,
    config: ConfigOpt = Path("audit.toml"),
    catalog: CatalogOpt = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="only jobs with this model")
    ] = None,
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="only jobs on this dataset")] = None,
    force: Annotated[bool, typer.Option("--force", help="recompute results already in the catalog")] = False,
    executor: Annotated[
        str | None, typer.Option("--executor", "-x", help="inline | local (default) | ray | a plugin's")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="worker processes of the local executor", min=0)
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray cluster address ('auto': the running one)")
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option("--partition", help="K/N: only the K-th of N disjoint shares of the jobs (array jobs)"),
    ] = None,
    wait: WaitOpt = DEFAULT_WAIT_S,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the jobs and which the catalog already holds; run nothing")
    ] = False,
    format: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="table (progress on stderr) or json (a summary on stdout)"),
    ] = OutputFormat.table,
) -> None:
    """Run what audit.toml configures (or the probes named) and record every result in the catalog."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from audit.run.devices import resolve_device
    from audit.run.plan import partition_jobs, plan
    from audit.run.runner import Runner

    if format is OutputFormat.csv:
        raise UsageError("--format csv is not available for `audit run` (use table or json)")
    cfg = _config(config)
    jobs = plan(cfg, installed_probes(), probe or None, model or None, data or None)
    share = _partition(partition)
    chosen, options = _executor(cfg, executor, workers, address)
    if not jobs:
        err.print("nothing to run: no configured probe entry matches (see `audit probes` and audit.toml)")
        if format is OutputFormat.json:
            _print_json({"run_id": None, "dry_run": dry_run, "jobs": []})
        raise typer.Exit(0)
    dev = resolve_device(device or cfg.device, "--device" if device else f"{cfg.path}: device")
    cat = _open_catalog(catalog or cfg.catalog, wait)
    runner = Runner(cfg, cat, dev, force=force)
    if share is not None:
        jobs = partition_jobs(jobs, [runner.cache_key(j) for j in jobs], *share)
    if dry_run:
        _dry_run(runner, jobs, format, force)
        return
    runner.check_inputs(jobs)  # an input error is the first line, and the catalog gains nothing
    err.print(
        f"[bold]audit run[/]: {len(jobs)} job(s) on {dev} via {chosen.name} → {cat.path}"
        + (f" (partition {share[0]}/{share[1]})" if share else ""),
        highlight=False,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # on a terminal: live bars; piped (a CI log): no bars, one line per finished job (job_finished prints it)
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as progress:
        display = _RunDisplay(progress, len(jobs))
        summary = runner.run(jobs, sys.argv, display, chosen, options)
        progress.update(display.overall, description="jobs")
    done = {s: sum(o.status == s for o in summary.outcomes) for s in ("ok", "reused", "error")}
    err.print(
        f"run {summary.run_id}: {done['ok']} computed, {done['reused']} reused from the catalog, "
        f"{done['error']} failed",
        highlight=False,
    )
    if format is OutputFormat.json:
        _print_json(
            {
                "run_id": summary.run_id,
                "dry_run": False,
                "computed": done["ok"],
                "reused": done["reused"],
                "failed": done["error"],
                "jobs": [
                    {
                        **_job_record(o.job),
                        "status": o.status,
                        "result_id": o.result_id,
                        "duration_s": round(o.duration_s, 6),
                        "error": o.error,
                        "warnings": list(o.warnings),
                    }
                    for o in summary.outcomes
                ],
            }
        )
    if summary.failed:
        raise typer.Exit(1)


def _job_record(job) -> dict[str, Any]:
    return {
        "label": job.label,
        "probe": job.probe.name,
        "entry": job.entry or job.probe.name,
        "models": list(job.models),
        "datasets": list(job.datasets),
    }


def _dry_run(runner, jobs, format: OutputFormat, force: bool) -> None:
    """The jobs a run would do and which the catalog already holds (by cache key); nothing is written and no
    model is built (datasets are read: their content is part of the key)."""
    keys = [runner.cache_key(j) for j in jobs]
    stored = {} if force else runner.catalog.cached_results(keys)
    records = [
        {**_job_record(job), "cache_key": key, "cached_result_id": stored.get(key), "would_run": key not in stored}
        for job, key in zip(jobs, keys, strict=True)
    ]
    todo = sum(r["would_run"] for r in records)
    if format is OutputFormat.json:
        _print_json({"run_id": None, "dry_run": True, "to_run": todo, "cached": len(records) - todo, "jobs": records})
        return
    table = Table(title=f"dry run: {todo} job(s) to run, {len(records) - todo} held by {runner.catalog.path}")
    for col in ("job", "probe entry", "would", "cached result"):
        table.add_column(col, overflow="fold")
    for r in records:
        would = "[yellow]run[/]" if r["would_run"] else "[cyan]reuse[/]"
        table.add_row(rich.markup.escape(r["label"]), r["entry"], would, r["cached_result_id"] or "—")
    out.print(table)
    if force:
        err.print("--force: every job would run again", highlight=False)


def _print_json(value: Any) -> None:
    """Machine-readable output: JSON on stdout (NaN and infinities as null), never wrapped or coloured."""
    sys.stdout.write(json.dumps(_jsonable(value), indent=2) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ query


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def render_rows(columns: list[str], rows: list[tuple[Any, ...]], format: OutputFormat) -> str | Table:
    if format is OutputFormat.json:
        return json.dumps(
            [{c: _jsonable(v) for c, v in zip(columns, r, strict=True)} for r in rows], indent=2
        )
    if format is OutputFormat.csv:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows([[("" if v is None else v) for v in r] for r in rows])
        return buf.getvalue()
    table = Table(show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        # values are data, not markup: a metric named "w[hidden.weight].spikes" must print as it is
        table.add_row(
            *[
                ("" if v is None else f"{v:.6g}" if isinstance(v, float) else rich.markup.escape(str(v)))
                for v in r
            ]
        )
    return table


@app.command()
@one_line_errors
def query(
    sql: Annotated[str, typer.Argument(help='SQL, e.g. "select * from metrics"')],
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, csv or json")
    ] = OutputFormat.table,
    config: ConfigOpt = Path("audit.toml"),
    catalog: CatalogOpt = None,
    wait: WaitOpt = DEFAULT_WAIT_S,
) -> None:
    """Run read-only SQL on the catalog (views: metrics, latest_metrics, run_summary). Writes are refused."""
    cat = _open_catalog(_catalog_path(config, catalog), wait)
    columns, rows = cat.query(sql)
    rendered = render_rows(columns, rows, format)
    if isinstance(rendered, str):
        sys.stdout.write(rendered if rendered.endswith("\n") else rendered + "\n")
    else:
        out.print(rendered)


# ------------------------------------------------------------------ gate


def _pivot(probe: str, rows: list[tuple[Any, ...]], order: tuple[str, ...]) -> Table:
    """(model, dataset, metric, value) rows as a grid (:func:`audit.face.tables.pivot`): one axis per
    (model, dataset), one per metric — metrics as columns when there are fewer metrics than (model, dataset)
    pairs, else as rows."""
    grid = pivot(rows, order)

    def cell(key: tuple[str, str], metric: str) -> str:
        value = grid.value(key, metric)
        return "" if value is None else f"{value:.4g}"

    table = Table(title=f"{probe}: key metrics")
    if grid.metrics_as_columns:
        for col in ("model", "dataset", *grid.metrics):
            table.add_column(col, overflow="fold", justify="left" if col in ("model", "dataset") else "right")
        for key in grid.cells:
            table.add_row(short_label(key[0]), key[1], *(cell(key, m) for m in grid.metrics))
    else:
        table.add_column("metric", overflow="fold")
        for model, dataset in grid.cells:
            table.add_column(f"{short_label(model)}\n{dataset}", overflow="fold", justify="right")
        for m in grid.metrics:
            table.add_row(m, *(cell(key, m) for key in grid.cells))
    return table


def print_verdicts(verdicts: list[Verdict], console: Console) -> None:
    from audit.gates import compared_with, delta_text

    with_context = console.width >= 140 and any(v.context for v in verdicts)  # else it wraps unreadably
    # a comparison with history shows both values and the delta; the table names its baselines below
    history = any(v.gate.compares_history for v in verdicts)
    table = Table(title="gates")
    columns = ("verdict", "gate", "model", "dataset", "observed", *(("baseline", "Δ") if history else ()), "detail")
    for col in columns + ("context",) * with_context:
        table.add_column(col, overflow="fold")
    for v in verdicts:
        mark = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "missing": "[yellow]MISSING[/]"}[v.status]
        table.add_row(
            mark,
            # a named gate also says what it reads: the probe entry (a label when the probe has several
            # parameter sets) and the metric
            rich.markup.escape(v.gate.label) + (f"\n[dim]{v.gate.source}.{v.gate.metric}[/]" if v.gate.name else ""),
            v.model or "—",
            v.dataset or "—",
            "—" if v.observed is None else f"{v.observed:.4g}",
            *(("—" if v.baseline_value is None else f"{v.baseline_value:.4g}", delta_text(v)) if history else ()),
            rich.markup.escape(v.reason),
            *([v.context_text or "—"] if with_context else []),
        )
    console.print(table)
    for described in compared_with(verdicts):
        console.print(f"compared with {rich.markup.escape(described)}", highlight=False, soft_wrap=True)


def _key_metrics() -> dict[str, tuple[str, ...]]:
    """Each installed probe's key metrics: the context shown beside a gate's verdict."""
    return {name: tuple(p.key_metrics) for name, p in installed_probes().items()}


def _against(cfg: Config, against: str | None) -> list:
    """The config's gates, with `--against` replacing the baseline of each gate that compares with history
    (those with max_increase/max_decrease; the others have nothing to compare). A flag no gate can use is an
    error, not a silent no-op: CI would believe it gated against main."""
    import dataclasses

    from audit.history import parse_against

    if against is None:
        return cfg.gates
    try:
        text = parse_against(against).text
    except ValueError as e:
        raise UsageError(f"--against: {e}") from None
    if not any(g.compares_history for g in cfg.gates):
        raise UsageError(
            f"--against: no gate of {cfg.path} has max_increase or max_decrease (the bounds on the change from "
            "a baseline); add them to the [[gates]] to compare with"
        )
    return [dataclasses.replace(g, against=text) if g.compares_history else g for g in cfg.gates]


@app.command()
@one_line_errors
def gate(
    config: ConfigOpt = Path("audit.toml"),
    catalog: CatalogOpt = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="write JUnit XML here")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="write a Markdown summary here")] = None,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="compare the gates with max_increase/max_decrease with this baseline instead of their "
            "`against`: accepted:NAME, git:REF, run:ID",
        ),
    ] = None,
    wait: WaitOpt = DEFAULT_WAIT_S,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, or json (every verdict on stdout)")
    ] = OutputFormat.table,
) -> None:
    """Check the gates of audit.toml against the latest results: exit 0 all pass, 1 a gate failed, 2 error."""
    from audit import gates as gates_mod

    if format is OutputFormat.csv:
        raise UsageError("--format csv is not available for `audit gate` (use table or json)")
    cfg = _config(config)
    if not cfg.gates:
        raise UsageError(f"{cfg.path}: no [[gates]] configured")
    chosen = _against(cfg, against)
    verdicts = gates_mod.evaluate(
        chosen, _open_catalog(catalog or cfg.catalog, wait), _key_metrics(), root=cfg.root
    )
    if format is OutputFormat.json:
        _print_json({"exit_code": gates_mod.exit_code(verdicts), "verdicts": [_verdict_record(v) for v in verdicts]})
    else:
        print_verdicts(verdicts, out)
    for path, text in ((junit, gates_mod.junit_xml), (markdown, gates_mod.markdown)):
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text(verdicts))
            except OSError as e:
                raise UsageError(f"cannot write {path}: {e.strerror}") from None
    code = gates_mod.exit_code(verdicts)
    passed = sum(v.passed for v in verdicts)
    summary_console = err if code or format is OutputFormat.json else out  # stdout stays JSON
    summary_console.print(f"{passed} of {len(verdicts)} gate check(s) passed")
    raise typer.Exit(code)


def _verdict_record(v: Verdict) -> dict[str, Any]:
    """One gate check as JSON: the gate (label, name, what it reads, bounds), where, the values, the verdict."""
    g = v.gate
    return {
        "gate": g.label,
        "name": g.name,
        "probe": g.probe,
        "entry": g.source,
        "metric": g.metric,
        "min": g.min,
        "max": g.max,
        "baseline": g.baseline,
        "against": g.against,
        "max_increase": g.max_increase.text if g.max_increase else None,
        "max_decrease": g.max_decrease.text if g.max_decrease else None,
        "bounds": g.bounds,
        "model": v.model,
        "dataset": v.dataset,
        "value": v.value,
        "baseline_value": v.baseline_value,
        "delta": v.delta,
        "observed": v.observed,
        "compared_with": v.compared_with or None,
        "status": v.status,
        "reason": v.reason,
        "context": {name: value for name, value in v.context},
    }


# ------------------------------------------------------------------ accept


@app.command()
@one_line_errors
def accept(
    name: Annotated[str, typer.Option("--as", help="the baseline's name, e.g. main (gates: against = 'accepted:main')")],
    run_id: Annotated[
        str | None,
        typer.Option("--run", help="the run whose results (computed or reused) to accept; default: the latest finished run"),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="only results with this model (name or glob; repeatable); without --run: the "
            "latest result of each of its jobs"
        ),
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="a note kept with the acceptance")] = None,
    config: ConfigOpt = Path("audit.toml"),
    catalog: CatalogOpt = None,
    wait: WaitOpt = DEFAULT_WAIT_S,
) -> None:
    """Accept stored results as a baseline NAME that gates compare with (against = "accepted:NAME")."""
    from audit.history import accept as record

    cat = _open_catalog(_catalog_path(config, catalog), wait)
    root = config.resolve().parent if config.exists() else Path.cwd()
    done = record(cat, name, run=run_id, models=tuple(model or ()), root=root, note=note)
    for warning in done.warnings:
        err.print(f"[yellow]warning:[/] {rich.markup.escape(warning)}", highlight=False, soft_wrap=True)
    commit = f"at commit {done.git_commit[:12]}" if done.git_commit else "outside a git repository"
    out.print(
        f"accepted {len(done.result_ids)} result(s) as {name!r}: {done.described}; acceptance "
        f"{done.acceptance_id}, recorded {commit}",
        highlight=False,
        soft_wrap=True,
    )


# ------------------------------------------------------------------ report and show


def _gate_verdicts(config: Path, catalog: Catalog) -> tuple[list[Verdict] | None, str]:
    """Verdicts of the config's gates on the catalog, or None and why there are none."""
    from audit import gates as gates_mod

    if not config.exists():
        return None, f"no gates configured: no {config} (pass --config to evaluate its [[gates]])"
    cfg = _config(config)
    if not cfg.gates:
        return None, f"no gates configured in {cfg.path}"
    verdicts = gates_mod.evaluate(cfg.gates, catalog, _key_metrics(), root=cfg.root)
    return verdicts, f"the [[gates]] of {cfg.path} on the latest stored values"


def _writable(path: Path) -> Path:
    """The report's destination, checked before any work: an unwritable path is one line, exit 2."""
    if path.exists() and path.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory (name a file, e.g. {path}/report.html)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"cannot write {path}: {path.parent} is not a directory") from None
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")
    return path


@app.command()
@one_line_errors
def report(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="the HTML file to write")] = Path(
        "report.html"
    ),
    run_id: Annotated[
        list[str] | None,
        typer.Option("--run", help="only the results computed in this run (id or unique prefix; repeatable)"),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="only results with this model (name or glob)")
    ] = None,
    probe: Annotated[
        list[str] | None, typer.Option("--probe", "-p", help="only results of this probe (name or glob)")
    ] = None,
    config: ConfigOpt = Path("audit.toml"),
    catalog: CatalogOpt = None,
    wait: WaitOpt = DEFAULT_WAIT_S,
) -> None:
    """Write one self-contained HTML report (figures embedded) from the catalog; nothing is recomputed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    from audit.face.report import build_report, select_results

    target = _writable(out_path)
    cat = _open_catalog(_catalog_path(config, catalog), wait)
    selection = select_results(cat, run_id or (), model or (), probe or ())
    verdicts, note = _gate_verdicts(config, cat)
    found = installed_probes()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("figures", total=len(selection.results))

        def step(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, description=f"figures · {label}")

        built = build_report(
            cat,
            selection,
            verdicts=verdicts,
            gates_note=note,
            key_metrics={n: tuple(p.key_metrics) for n, p in found.items()},
            descriptions={n: p.description for n, p in found.items()},
            tool_version=audit.__version__,
            on_progress=step,
        )
    for failure in built.failures:
        err.print(f"[yellow]warning:[/] figure failed: {one_line(failure)}", highlight=False, soft_wrap=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(built.html, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {target}: {e.strerror}") from None
    size = len(built.html.encode("utf-8")) / 1024
    err.print(
        f"wrote {target} ({len(selection.results)} result(s), {built.figures} figure(s), {size:,.0f} KiB)",
        highlight=False,
    )


@app.command()
@one_line_errors
def show(
    result: Annotated[
        str | None, typer.Argument(help="a result id, or a unique prefix of one (none: list the latest results)")
    ] = None,
    config: ConfigOpt = Path("audit.toml"),
    catalog: CatalogOpt = None,
    wait: WaitOpt = DEFAULT_WAIT_S,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, or json (the result, its metrics, no arrays)")
    ] = OutputFormat.table,
    limit: Annotated[int, typer.Option("--limit", help="results listed without an id", min=1)] = 20,
) -> None:
    """Show one stored result (metrics, parameters, warnings, the probe's own views), or list the latest."""
    from audit.face.show import show as show_result

    if format is OutputFormat.csv:
        raise UsageError("--format csv is not available for `audit show` (use table or json)")
    cat = _open_catalog(_catalog_path(config, catalog), wait)
    if result is None:
        _list_results(cat, limit, format)
        return
    view = cat.result_views([cat.resolve_id("result", result)])[0]
    if format is OutputFormat.json:
        _print_json(
            {
                "result_id": view.result_id,
                "run_id": view.run_id,
                "probe": view.probe,
                "entry": view.entry,
                "version": view.version,
                "params": dict(view.params),
                "params_fingerprint": view.params_fingerprint,
                "models": list(view.models),
                "datasets": list(view.datasets),
                "status": view.status,
                "error": view.error,
                "warnings": list(view.warnings),
                "created_at": view.created_at,
                "duration_s": view.duration_s,
                "device": view.device,
                "metrics": [
                    {"metric": m.name, "value": m.value, "model": m.model, "dataset": m.dataset} for m in view.metrics
                ],
            }
        )
        return
    probe_obj = installed_probes().get(view.probe)
    failures = show_result(view, out, tuple(probe_obj.key_metrics) if probe_obj else ())
    for failure in failures:
        err.print(f"[yellow]warning:[/] view failed: {one_line(failure)}", highlight=False, soft_wrap=True)


def _list_results(cat: Catalog, limit: int, format: OutputFormat) -> None:
    """The latest stored results, newest first, with the ids `audit show ID` takes."""
    columns, rows = cat.query(
        "select result_id, created_at, entry, probe, array_to_string(models, ',') as models, "
        "array_to_string(datasets, ',') as datasets, status, n_metrics from results "
        "order by created_at desc limit ?",
        [limit],
    )
    if format is OutputFormat.json:
        _print_json([dict(zip(columns, r, strict=True)) for r in rows])
        return
    if not rows:
        raise UsageError(f"no results in catalog {cat.path} (run `audit run` first)")
    table = Table(title=f"latest {len(rows)} result(s) in {cat.path} (audit show ID)")
    for col in ("result", "created", "probe entry", "models", "datasets", "status", "metrics"):
        table.add_column(col, overflow="fold")
    for rid, at, entry, probe, models, datasets, status, n in rows:
        mark = "[green]ok[/]" if status == "ok" else "[red]error[/]"
        table.add_row(
            rid,
            f"{at:%Y-%m-%d %H:%M:%S}",
            rich.markup.escape(entry or probe),
            short_label(models),
            rich.markup.escape(datasets or "—"),
            mark,
            "—" if n is None else str(n),
        )
    out.print(table)


# ------------------------------------------------------------------ catalog export / import

catalog_app = typer.Typer(
    name="catalog",
    help="Move catalog rows as Parquet: export for other tools or as a shard, import shards idempotently.",
    no_args_is_help=True,
)
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("export")
@one_line_errors
def catalog_export(
    directory: Annotated[
        Path, typer.Argument(help="directory to write <table>.parquet and manifest.json into")
    ],
    run_id: Annotated[
        list[str] | None,
        typer.Option("--run", help="only this run's rows (id or unique prefix; repeatable)"),
    ] = None,
    config: ConfigOpt = Path("audit.toml"),
    catalog: CatalogOpt = None,
    wait: WaitOpt = DEFAULT_WAIT_S,
) -> None:
    """Write every catalog table as Parquet plus a manifest (a shard that `audit catalog import` merges)."""
    from audit.catalog.exchange import export_catalog

    cat = _open_catalog(_catalog_path(config, catalog), wait)
    runs = [cat.resolve_id("run", r) for r in run_id] if run_id else None
    counts = export_catalog(cat, directory, run_ids=runs)
    table = Table(title=f"exported {cat.path} to {directory}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in counts.items():
        table.add_row(name, f"{rows:,}")
    out.print(table)


@catalog_app.command("import")
@one_line_errors
def catalog_import(
    directories: Annotated[list[Path], typer.Argument(help="export or shard directories (a glob of shards)")],
    config: ConfigOpt = Path("audit.toml"),
    catalog: CatalogOpt = None,
    wait: WaitOpt = DEFAULT_WAIT_S,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="table, or json (rows added and skipped per table)")
    ] = OutputFormat.table,
) -> None:
    """Merge exports or shards into the catalog in one transaction; importing one twice adds nothing."""
    from audit.catalog.exchange import import_catalogs

    if format is OutputFormat.csv:
        raise UsageError("--format csv is not available for `audit catalog import` (use table or json)")
    cat = _open_catalog(_catalog_path(config, catalog), wait)
    report = import_catalogs(cat, directories)
    if format is OutputFormat.json:
        _print_json(
            {
                "catalog": str(cat.path),
                "sources": [str(p) for p in report.sources],
                "tables": {
                    name: {"added": report.added[name], "skipped": report.skipped[name]} for name in sorted(report.added)
                },
                "duplicate_jobs": report.duplicate_jobs,
            }
        )
        return
    n = len(report.sources)
    table = Table(title=f"imported {n} director{'y' if n == 1 else 'ies'} into {cat.path}")
    for col in ("table", "added", "skipped"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for name in sorted(report.added):
        table.add_row(name, f"{report.added[name]:,}", f"{report.skipped[name]:,}")
    out.print(table)
    if report.duplicate_jobs:
        out.print(
            f"{report.duplicate_jobs} successful result(s) skipped: the catalog already held a result of "
            "the same job (cache key)"
        )


# ------------------------------------------------------------------ demo


@app.command()
@one_line_errors
def demo(
    dir: Annotated[Path, typer.Option("--dir", help="where to write the example project")] = Path(
        "audit-demo"
    ),
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
    force: Annotated[
        bool, typer.Option("--force", help="retrain the models and recompute every result")
    ] = False,
) -> None:
    """Build a small real example project (digits, trained MLPs, an OOD variant) and run every probe on it."""
    from audit import gates as gates_mod
    from audit.face.demo import build_project

    project = build_project(dir, console=err, retrain=force)
    err.print(f"example project: {project}/audit.toml", highlight=False)
    cfg_path = project / "audit.toml"
    code = 0
    try:
        run(
            probe=None,
            config=cfg_path,
            catalog=None,
            device=device,
            model=None,
            data=None,
            force=force,
            wait=DEFAULT_WAIT_S,
        )
    except typer.Exit as e:
        code = e.exit_code
    if code == 2:  # an input error, already reported in one line
        raise typer.Exit(2)
    cfg = _config(cfg_path)
    cat = _open_catalog(cfg.catalog, DEFAULT_WAIT_S)
    for name, p in installed_probes().items():  # each probe names the metrics worth a first look
        sql = "select model, dataset, metric, value from latest_metrics where probe = ?"
        args: list[Any] = [name]
        if p.key_metrics:
            sql += f" and metric in ({', '.join('?' * len(p.key_metrics))})"
            args += list(p.key_metrics)
        _, found = cat.query(sql + " order by model, dataset, metric", args)
        if found:
            out.print(_pivot(name, found, p.key_metrics))
    out.print('[dim]all metrics: audit query "select * from metrics"[/]')
    verdicts = gates_mod.evaluate(cfg.gates, cat, _key_metrics(), root=cfg.root)
    print_verdicts(verdicts, out)
    out.print(
        f'\nNext: cd {project} && audit query "select model, dataset, metric, value from metrics"  ·  audit gate'
    )
    raise typer.Exit(code or gates_mod.exit_code(verdicts))


def _version(value: bool) -> None:
    if value:
        out.print(f"model-audit {audit.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="show the version and exit"),
    ] = False,
) -> None:
    """Audit trained neural networks like scientific instruments."""


def main() -> None:
    from audit.registry import plugin_manager

    try:  # loads every plugin (their entry points) but registers no probe: commands that use probes do
        plugin_manager().hook.register_commands(app=app)
        _warn_plugin_errors()
    except UsageError as e:
        err.print(f"[bold red]error:[/] {one_line(str(e))}", highlight=False)
        sys.exit(2)
    app()


if __name__ == "__main__":
    main()
