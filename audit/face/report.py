"""`audit report`: one self-contained HTML file from the catalog — summary, gate verdicts, a section per result.

Why this shape:

* **Reads only the catalog.** Every number and figure comes from stored metrics and arrays through a
  read-only connection; nothing is recomputed and no model is loaded, so a report of a CI run can be
  built anywhere the catalog file is, in seconds.
* **One file, nothing external.** Images are ``data:`` URIs, the CSS is inline, there is no script, and
  a Content-Security-Policy forbids any other source, so the page looks the same offline, attached to a
  CI run or mailed, and cannot phone home.
* **Figures come from the plugins.** The core renders no probe's figures: it asks every plugin through
  the ``render_figures`` hook (:mod:`audit.api.figures`), so a third-party probe joins with no change here,
  and a renderer that raises costs only its own figures ("figure failed: …").
"""

from __future__ import annotations

import fnmatch
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from audit.api.errors import UsageError
from audit.api.figures import Figure
from audit.api.results import ResultView
from audit.catalog.store import Catalog
from audit.face.rendering import collect_figures
from audit.face.tables import Pivot, number, pivot, short_label
from audit.gates import Verdict, _baseline_text, _threshold_text

# the latest result of each job (probe entry × models × datasets: an entry is a probe with its parameters),
# plus a failure newer than that result
_LATEST_SQL = """
with ranked as (
    select result_id, probe, created_at, status,
           row_number() over (
               partition by probe, params_fingerprint, models, datasets, status = 'ok' order by created_at desc
           ) as k,
           max(case when status = 'ok' then created_at end) over (
               partition by probe, params_fingerprint, models, datasets
           ) as last_ok
    from results
)
select result_id from ranked
where k = 1 and (status = 'ok' or last_ok is null or created_at > last_ok)
order by probe, created_at
"""


@dataclass(frozen=True)
class Selection:
    """What a report covers: the stored results, the runs that computed them, and how they were chosen."""

    results: tuple[ResultView, ...]
    runs: tuple[dict[str, Any], ...]
    description: str


def _matches(patterns: Sequence[str], names: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def select_results(
    catalog: Catalog,
    runs: Sequence[str] = (),
    models: Sequence[str] = (),
    probes: Sequence[str] = (),
) -> Selection:
    """The results a report shows: those computed in the given runs (ids or unique prefixes), else the
    latest result of each job; narrowed to results involving one of ``models`` and of one of ``probes``
    (names or fnmatch patterns). A filter value that matches nothing is an error, as is an empty report.
    """
    with catalog.reader() as con:
        has_results = con.execute(
            "select count(*) from information_schema.tables where table_name = 'results'"
        ).fetchone()[0]
    if not has_results:
        raise UsageError(f"catalog {catalog.path} holds no results yet (run `audit run` first)")
    run_ids = [catalog.resolve_id("run", r) for r in runs]
    if run_ids:
        _, rows = catalog.query(
            "select result_id from results where list_contains(?, run_id) order by probe, created_at",
            [run_ids],
        )
        described = "results computed in run " + ", ".join(run_ids)
    else:
        _, rows = catalog.query(_LATEST_SQL)
        described = "the latest result of each job (probe × models × datasets)"
    views = catalog.result_views([r[0] for r in rows])
    for kind, wanted, names_of in (
        ("probe", probes, lambda v: [v.probe]),
        ("model", models, lambda v: list(v.models)),
    ):
        if not wanted:
            continue
        for pattern in wanted:
            if not any(_matches([pattern], names_of(v)) for v in views):
                where = f" in run {', '.join(run_ids)}" if run_ids else ""
                raise UsageError(f"no stored result{where} has {kind} {pattern!r} (see `audit query`)")
        views = [v for v in views if _matches(wanted, names_of(v))]
        described += f"; {kind} " + ", ".join(wanted)
    if not views:
        where = f" in run {', '.join(run_ids)}" if run_ids else ""
        raise UsageError(
            f"no results{where} in catalog {catalog.path} (run `audit run` first; results reused from "
            "earlier runs belong to the run that computed them)"
        )
    wanted_runs = sorted({v.run_id for v in views})
    cols, run_rows = catalog.query(
        "select * from run_summary where list_contains(?, run_id) order by started_at", [wanted_runs]
    )
    return Selection(tuple(views), tuple(dict(zip(cols, r, strict=True)) for r in run_rows), described)


# ---------------------------------------------------------------------------------------------- rendering


@dataclass
class Report:
    """The finished HTML and what went into it (for the command's closing line and its warnings)."""

    html: str
    figures: int = 0
    failures: list[str] = field(default_factory=list)


ProgressFn = Callable[[int, int, str], None]


def build_report(
    catalog: Catalog,
    selection: Selection,
    *,
    verdicts: Sequence[Verdict] | None,
    gates_note: str,
    key_metrics: Mapping[str, Sequence[str]],
    descriptions: Mapping[str, str],
    tool_version: str,
    on_progress: ProgressFn | None = None,
    now: datetime | None = None,
) -> Report:
    """Render every selected result's figures (through the plugins) and assemble the HTML page.

    ``verdicts`` None means no gates were evaluated; ``gates_note`` then says why. ``key_metrics`` and
    ``descriptions`` come from the installed probes (a result of a probe no longer installed still gets
    its section, with its metrics and without figures).
    """
    report = Report(html="")
    by_probe: dict[str, list[ResultView]] = {}
    for v in selection.results:
        by_probe.setdefault(v.probe, []).append(v)
    sections = []
    total = len(selection.results)
    done = 0
    for probe in sorted(by_probe):
        parts = []
        for v in by_probe[probe]:
            if on_progress is not None:
                on_progress(done, total, f"{probe} · {short_label(v.label)}")
            figures: tuple[Figure, ...] = ()
            failures: tuple[str, ...] = ()
            if v.status == "ok":
                outcome = collect_figures(v)
                figures, failures = outcome.figures, outcome.failures
            report.figures += len(figures)
            report.failures += [f"{probe} result {v.result_id} ({short_label(v.label)}): {f}" for f in failures]
            parts.append(_result_section(v, figures, failures, key_metrics.get(probe, ())))
            done += 1
        sections.append(_probe_section(probe, descriptions.get(probe), by_probe[probe], parts))
    if on_progress is not None:
        on_progress(total, total, "assembling the page")
    generated = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = [
        _header(catalog, selection, generated, tool_version),
        _contents(by_probe, verdicts is not None),
        _gates(verdicts, gates_note),
        _summary(by_probe, key_metrics),
        *sections,
        f"<footer>model-audit {_e(tool_version)} · generated {_e(generated)} from {_e(str(catalog.path))}"
        " · every number and image above was read from the catalog</footer>",
    ]
    report.html = _page("\n".join(body))
    return report


# ---------------------------------------------------------------------------------------------- pieces

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #ffffff; --soft: #f5f7fa;
        --pass: #17803d; --fail: #c0262d; --missing: #b26a00; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0 auto; padding: 1.5rem 2rem 3rem; max-width: 1200px; }
h1 { font-size: 1.7rem; margin: 0 0 .5rem; }
h2 { font-size: 1.35rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.1rem; margin: 1.6rem 0 .4rem; }
small, .muted { color: var(--muted); font-weight: normal; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
       padding: 0 .25em; border-radius: 3px; }
table { border-collapse: collapse; margin: .4rem 0 .8rem; font-size: 13.5px; }
th, td { border: 1px solid var(--line); padding: .2rem .55rem; text-align: left; vertical-align: top; }
th { background: var(--soft); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.key td { font-weight: 600; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .4rem 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; }
.pass { color: var(--pass); font-weight: 600; }
.fail { color: var(--fail); font-weight: 600; }
.missing { color: var(--missing); font-weight: 600; }
article.result { border: 1px solid var(--line); border-radius: 6px; padding: .2rem 1rem .8rem;
                 margin: 1rem 0; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13.5px; max-width: 900px; }
figcaption b { color: var(--fg); }
.warnings li { color: var(--missing); }
p.failed, pre.error { color: var(--fail); white-space: pre-wrap; }
details summary { cursor: pointer; color: var(--muted); }
.scroll { overflow-x: auto; }
nav ul { margin: .2rem 0; padding-left: 1.2rem; }
footer { margin-top: 3rem; color: var(--muted); font-size: 12.5px; }
"""

# nothing but inline styles and data: images may load; no script at all
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _anchor(prefix: str, name: str) -> str:
    return prefix + "-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _page(body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>model-audit report</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _header(catalog: Catalog, selection: Selection, generated: str, tool_version: str) -> str:
    meta = [
        ("catalog", f"<code>{_e(catalog.path.resolve())}</code>"),
        ("generated", _e(generated)),
        ("covers", _e(selection.description)),
        ("results", str(len(selection.results))),
        ("model-audit", _e(tool_version)),
    ]
    rows = []
    for r in selection.runs:
        counts = "/".join("—" if r.get(k) is None else str(r[k]) for k in ("computed", "reused", "failed"))
        rows.append(
            "<tr>"
            f"<td><code>{_e(r['run_id'])}</code></td><td>{_e(_when(r.get('started_at')))}</td>"
            f"<td>{_e(r.get('status') or '—')}</td><td class='num'>{_e(counts)}</td>"
            f"<td>{_e(r.get('device') or '—')}</td><td>{_e(r.get('tool_version') or '—')}</td>"
            f"<td>{_e((r.get('git_commit') or '—')[:12])}</td><td><code>{_e(r.get('argv') or '—')}</code></td>"
            "</tr>"
        )
    runs = (
        "<table><tr><th>run</th><th>started</th><th>status</th><th>computed/reused/failed</th>"
        "<th>device</th><th>model-audit</th><th>git commit</th><th>command</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta)
    return f'<header><h1>model-audit report</h1><dl class="meta">{dl}</dl><h3>Runs</h3>{runs}</header>'


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "—" if value is None else str(value)


def _contents(by_probe: Mapping[str, Sequence[ResultView]], gates: bool) -> str:
    items = ['<li><a href="#gates">Gates</a></li>', '<li><a href="#summary">Summary</a></li>']
    for probe, views in sorted(by_probe.items()):
        inner = "".join(
            f'<li><a href="#{_anchor("result", v.result_id)}">{_e(_title(v))}</a>'
            + (' <span class="fail">failed</span>' if v.status != "ok" else "")
            + "</li>"
            for v in views
        )
        items.append(f'<li><a href="#{_anchor("probe", probe)}">{_e(probe)}</a><ul>{inner}</ul></li>')
    return f"<nav><h2>Contents</h2><ul>{''.join(items)}</ul></nav>"


def _gates(verdicts: Sequence[Verdict] | None, note: str) -> str:
    head = '<section id="gates"><h2>Gates</h2>'
    if verdicts is None:
        return f"{head}<p class='muted'>{_e(note)}</p></section>"
    if not verdicts:
        return f"{head}<p class='muted'>no gates configured ({_e(note)})</p></section>"
    passed = sum(v.passed for v in verdicts)
    cls = "pass" if passed == len(verdicts) else "fail"
    rows = []
    for v in verdicts:
        threshold = _threshold_text(v.gate) + _baseline_text(v)
        rows.append(
            f"<tr><td class='{v.status}'>{_e(v.status)}</td><td>{_e(v.gate.label)}<br>"
            f"<code>{_e(v.gate.source)}.{_e(v.gate.metric)}</code></td><td>{_e(short_label(v.model))}</td>"
            f"<td>{_e(v.dataset or '—')}</td><td class='num'>{number(v.observed)}</td>"
            f"<td>{_e(threshold)}</td><td>{_e(v.reason)}</td><td>{_e(v.context_text or '—')}</td></tr>"
        )
    return (
        f"{head}<p class='{cls}'>{passed} of {len(verdicts)} gate check(s) passed "
        f"<span class='muted'>({_e(note)})</span></p>"
        "<table><tr><th>verdict</th><th>gate</th><th>model</th><th>dataset</th><th>observed</th>"
        "<th>threshold</th><th>detail</th><th>context</th></tr>" + "".join(rows) + "</table></section>"
    )


def _rows(v: ResultView) -> list[tuple[str, str, str, float]]:
    """(model, dataset, metric, value) of a result, labelled as the ``metrics`` view labels them."""
    job_models, job_data = ",".join(v.models), ",".join(v.datasets)
    return [(m.model or job_models, m.dataset or job_data, m.name, m.value) for m in v.metrics]


def _ordered(
    rows: list[tuple[str, str, str, float]], keys: Sequence[str]
) -> list[tuple[str, str, str, float]]:
    order = {k: i for i, k in enumerate(keys)}
    return sorted(
        rows, key=lambda r: (order.get(r[2], len(order)), r[2] if r[2] not in order else "", r[0], r[1])
    )


def _metric_table(rows: list[tuple[str, str, str, float]], keys: Sequence[str]) -> str:
    body = "".join(
        f"<tr{' class=key' if metric in keys else ''}><td>{_e(short_label(model))}</td><td>{_e(dataset or '—')}</td>"
        f"<td>{_e(metric)}</td><td class='num'>{number(value)}</td></tr>"
        for model, dataset, metric, value in rows
    )
    return f"<table><tr><th>model</th><th>dataset</th><th>metric</th><th>value</th></tr>{body}</table>"


def _summary(by_probe: Mapping[str, Sequence[ResultView]], key_metrics: Mapping[str, Sequence[str]]) -> str:
    """Per probe: its key metrics as a grid (model × dataset rows, a column per metric), then all others."""
    out = ['<section id="summary"><h2>Summary</h2>']
    for probe, all_views in sorted(by_probe.items()):
        out.append(f'<h3><a href="#{_anchor("probe", probe)}">{_e(probe)}</a></h3>')
        entries: dict[str, list[ResultView]] = {}
        for v in all_views:  # one probe's entries (parameter sets) are summarised apart
            entries.setdefault(v.entry or probe, []).append(v)
        for entry, views in entries.items():
            if len(entries) > 1:
                out.append(f"<h4>entry {_e(entry)}</h4>")
            out.append(_entry_summary(views, key_metrics.get(probe, ())))
    out.append("</section>")
    return "".join(out)


def _entry_summary(views: Sequence[ResultView], key_metrics: Sequence[str]) -> str:
    """One probe entry's results: its key metrics as a grid, then the other metrics folded away."""
    out = []
    rows = [r for v in views if v.status == "ok" for r in _rows(v)]
    failed = sum(v.status != "ok" for v in views)
    keys = [k for k in key_metrics if any(r[2] == k for r in rows)]
    if failed:
        out.append(f"<p class='fail'>{failed} failed result(s): see the probe's section</p>")
    if not rows:
        out.append("<p class='muted'>no metrics</p>")
        return "".join(out)
    if keys:
        out.append(_pivot(pivot(rows, keys)))
    rest = [r for r in rows if r[2] not in keys]
    if rest:
        label = f"all {len(rest)} other metric value(s)" if keys else f"all {len(rest)} metric value(s)"
        out.append(
            f"<details{'' if keys else ' open'}><summary>{label}</summary>"
            f"{_metric_table(_ordered(rest, ()), ())}</details>"
        )
    return "".join(out)


def _pivot(grid: Pivot) -> str:
    """Key metrics as an HTML grid (:func:`audit.face.tables.pivot`): a row per (model, dataset) and a column
    per metric, or transposed when there are more metrics than rows (so that the table grows down the page,
    not off its side)."""

    def cell(key: tuple[str, str], metric: str) -> str:
        value = grid.value(key, metric)
        return f"<td class='num'>{'' if value is None else number(value)}</td>"

    if grid.metrics_as_columns:
        head = "".join(f"<th>{_e(k)}</th>" for k in grid.metrics)
        body = "".join(
            f"<tr><td>{_e(short_label(m))}</td><td>{_e(d)}</td>"
            + "".join(cell((m, d), k) for k in grid.metrics)
            + "</tr>"
            for m, d in grid.cells
        )
        table = f"<table><tr><th>model</th><th>dataset</th>{head}</tr>{body}</table>"
    else:
        head = "".join(f"<th>{_e(short_label(m))}<br><small>{_e(d)}</small></th>" for m, d in grid.cells)
        body = "".join(
            f"<tr><td>{_e(k)}</td>" + "".join(cell(c, k) for c in grid.cells) + "</tr>" for k in grid.metrics
        )
        table = f"<table><tr><th>metric</th>{head}</tr>{body}</table>"
    return f"<div class='scroll'>{table}</div>"


def _title(v: ResultView) -> str:
    entry = f"{v.entry} · " if v.entry and v.entry != v.probe else ""
    return f"{entry}{short_label(v.label)} on {', '.join(v.datasets) or '—'}"


def _probe_section(probe: str, description: str | None, views: Sequence[ResultView], parts: list[str]) -> str:
    versions = sorted({v.version for v in views})
    desc = f"<p>{_e(description)}</p>" if description else "<p class='muted'>(probe not installed here)</p>"
    return (
        f'<section id="{_anchor("probe", probe)}" class="probe"><h2>{_e(probe)} '
        f"<small>version {_e(', '.join(versions))}</small></h2>{desc}{''.join(parts)}</section>"
    )


def _params(params: Mapping[str, Any]) -> str:
    if not params:
        return "—"
    return " ".join(f"<code>{_e(k)} = {_e(json.dumps(v))}</code>" for k, v in sorted(params.items()))


def _result_section(
    v: ResultView, figures: Sequence[Figure], failures: Sequence[str], keys: Sequence[str]
) -> str:
    meta = [
        ("models", _e(", ".join(v.models)) or "—"),
        ("datasets", _e(", ".join(v.datasets)) or "—"),
        (
            "result",
            f"<code>{_e(v.result_id)}</code> · run <code>{_e(v.run_id)}</code> · {_e(_when(v.created_at))}",
        ),
        (
            "computed",
            f"{_e(v.device or '—')}, "
            + ("—" if v.duration_s is None else f"{v.duration_s:.2f} s")
            + f" · {_e(v.probe)} {_e(v.version)}",
        ),
        ("parameters", _params(v.params)),
        ("entry", f"{_e(v.entry or v.probe)} · parameters <code>{_e(v.params_fingerprint or '—')}</code>"),
    ]
    parts = [
        f'<article class="result" id="{_anchor("result", v.result_id)}"><h3>{_e(_title(v))}</h3>',
        '<dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{val}</dd>" for k, val in meta) + "</dl>",
    ]
    if v.status != "ok":
        parts.append(
            f"<p class='fail'>this job failed</p><pre class='error'>{_e(v.error or 'no message')}</pre>"
        )
    if v.warnings:
        parts.append(
            "<ul class='warnings'>" + "".join(f"<li>warning: {_e(w)}</li>" for w in v.warnings) + "</ul>"
        )
    for f in figures:
        about = ", ".join(x for x in (f.model, f.dataset) if x)
        caption = f"<b>{_e(f.title)}</b>" + (f" <span>({_e(about)})</span>" if about else "")
        if f.caption:
            caption += f" — {_e(f.caption)}"
        parts.append(
            f'<figure><img src="{f.data_uri()}" alt="{_e(f.title)}"><figcaption>{caption}</figcaption></figure>'
        )
    for failure in failures:
        parts.append(f"<p class='failed'>figure failed: {_e(failure)}</p>")
    if v.status == "ok":
        rows = _ordered(_rows(v), keys)
        open_ = " open" if len(rows) <= 40 else ""
        parts.append(
            f"<details{open_}><summary>metrics ({len(rows)})</summary>{_metric_table(rows, keys)}</details>"
        )
    parts.append("</article>")
    return "".join(parts)
