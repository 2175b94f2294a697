"""`audit show RESULT`: one stored result in the terminal — metrics, parameters, warnings, and the
probe's own terminal views (e.g. the `cka` matrix as a coloured grid).

Why a separate hook from the report's: a terminal cannot show images, so a probe that wants to be
seen here renders rich objects (``render_terminal``); :func:`matrix_grid` is the shared helper for the
most common one, a labelled matrix coloured by value. The core still knows no probe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from audit.api.results import ResultView
from audit.face.rendering import call_each
from audit.face.tables import number, short_label


def result_header(v: ResultView) -> Table:
    """Who, what, when of a stored result, as a two-column table."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    status = "[green]ok[/]" if v.status == "ok" else f"[red]{v.status}[/]"
    rows: list[tuple[str, str]] = [
        ("result", f"{v.result_id} ({status})"),
        ("probe", f"{v.probe} {v.version}"),
        ("entry", f"{v.entry or v.probe} (parameters {v.params_fingerprint or '—'})"),
        ("models", ", ".join(v.models) or "—"),
        ("datasets", ", ".join(v.datasets) or "—"),
        ("run", v.run_id),
        ("created", v.created_at.isoformat(sep=" ", timespec="seconds") if v.created_at else "—"),
        (
            "computed on",
            f"{v.device or '—'}" + ("" if v.duration_s is None else f" in {v.duration_s:.2f} s"),
        ),
    ]
    for k, val in rows:
        head.add_row(k, Text(val) if k != "result" else val)
    return head


def params_table(params: dict[str, Any]) -> Table:
    table = Table(title="parameters", title_justify="left")
    table.add_column("parameter")
    table.add_column("value", overflow="fold")
    for k, val in sorted(params.items()):
        table.add_row(k, json.dumps(val))
    return table


def metrics_table(v: ResultView, key_metrics: Sequence[str] = ()) -> Table:
    """The result's metrics (model, dataset, metric, value), the probe's key metrics first and bold; a
    metric of the job as a whole is labelled as the ``metrics`` view labels it (the job's models, datasets)."""
    order = {k: i for i, k in enumerate(key_metrics)}
    job_model, job_data = short_label(v.label), ",".join(v.datasets) or "—"
    rows = sorted(
        ((m.model or job_model, m.dataset or job_data, m.name, m.value) for m in v.metrics),
        key=lambda r: (order.get(r[2], len(order)), r[2] if r[2] not in order else "", r[0], r[1]),
    )
    table = Table(title=f"metrics ({len(rows)})", title_justify="left")
    for col, justify in (("model", "left"), ("dataset", "left"), ("metric", "left"), ("value", "right")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for model, dataset, name, value in rows:
        style = "bold" if name in order else None
        table.add_row(model, dataset, name, number(value), style=style)
    return table


def show(v: ResultView, console: Console, key_metrics: Sequence[str] = ()) -> list[str]:
    """Print one stored result; returns one line per plugin view that failed (the caller warns)."""
    console.print(result_header(v))
    if v.params:
        console.print(params_table(dict(v.params)))
    if v.status != "ok":
        console.print(f"[red]error:[/] {v.error or 'no message'}", highlight=False)
    if v.metrics:
        console.print(metrics_table(v, key_metrics))
    for w in v.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    failures = []
    if v.status == "ok":
        for plugin, returned, error in call_each("render_terminal", result=v):
            if error is not None:
                failures.append(f"plugin {plugin!r}: {type(error).__name__}: {error}")
                continue
            for item in returned or ():
                console.print(item)
    return failures
