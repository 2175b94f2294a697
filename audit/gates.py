"""Gates: thresholds on the latest stored metrics → verdicts, exit codes, JUnit XML and Markdown.

A gate matches every latest value of (probe, metric), narrowed by its optional model and dataset. With
a ``baseline`` model the bounds apply to the difference value − baseline value on the same dataset.
A gate that matches no stored value fails as "missing": a CI gate must not pass because a probe never ran.

A gate reads the results of one probe entry — one set of parameters (``GateSpec.params_fingerprint``, matched
against ``latest_metrics.params_fingerprint``): two [[probes]] entries of one probe that differ in parameters
are different measurements, and the config requires a gate on such a probe to name its ``entry``. Verdicts
name the entry by its label.

``model`` and ``dataset`` may be fnmatch patterns ("cand_*", "seed/*"), matched against the stored
labels (a model's name, or the comma-joined names of a multi-model job): the gate then applies to every
matching row, and each defined model the pattern named when the config was loaded
(``GateSpec.expected_models``) that has no stored value gets a "missing" verdict of its own.

Each verdict can carry context for a reviewer: the latest values of the probe's other key metrics for the
same model (and dataset, when the verdict has one). The caller passes the key metrics per probe
(``evaluate(..., key_metrics={"cka": ("accuracy", ...)})``); the core never imports a probe.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

from audit.catalog.store import Catalog
from audit.config import GateSpec, is_pattern

# how many metrics the context shows for a probe that declares no key metrics (then: all, alphabetically)
CONTEXT_LIMIT = 8


@dataclass(frozen=True)
class Verdict:
    gate: GateSpec
    model: str | None
    dataset: str | None
    value: float | None
    baseline_value: float | None
    status: str  # "pass" | "fail" | "missing"
    reason: str
    # (label, value) of the probe's other key metrics for this model (and dataset): what a reviewer
    # needs beside the verdict; the label is "metric", or "metric (dataset)" when datasets differ
    context: tuple[tuple[str, float], ...] = ()

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def observed(self) -> float | None:
        if self.value is None:
            return None
        return self.value - self.baseline_value if self.baseline_value is not None else self.value

    @property
    def context_text(self) -> str:
        return " · ".join(f"{name} {_fmt(value)}" for name, value in self.context)


def _threshold_text(g: GateSpec) -> str:
    parts = []
    if g.min is not None:
        parts.append(f">= {g.min:g}")
    if g.max is not None:
        parts.append(f"<= {g.max:g}")
    return " and ".join(parts)


def _check(g: GateSpec, observed: float) -> str | None:
    if math.isnan(observed):
        return "value is NaN"
    if g.min is not None and observed < g.min:
        return f"{observed:.6g} < min {g.min:g}"
    if g.max is not None and observed > g.max:
        return f"{observed:.6g} > max {g.max:g}"
    return None


def _selects(pattern: str | None, label: str | None) -> bool:
    if pattern is None:
        return True
    if is_pattern(pattern):
        return fnmatch.fnmatchcase(label or "", pattern)
    return label == pattern


def evaluate(
    gates: list[GateSpec],
    catalog: Catalog,
    key_metrics: Mapping[str, Sequence[str]] | None = None,
) -> list[Verdict]:
    """Verdicts of the gates on the latest stored values.

    ``key_metrics`` (probe name → metric names, as the probes declare them) adds each verdict's context;
    a probe mapped to an empty sequence shows its other metrics alphabetically, at most CONTEXT_LIMIT.
    """
    verdicts: list[Verdict] = []
    if not gates:
        return verdicts
    contexts: dict[tuple[str, str | None], _Context] = {}
    with catalog.reader() as con:
        for g in gates:
            found = _evaluate_one(con, g)
            if key_metrics is not None and g.probe in key_metrics:
                entry = (g.probe, g.params_fingerprint)
                if entry not in contexts:
                    contexts[entry] = _Context(con, g, tuple(key_metrics[g.probe]))
                found = [contexts[entry].attach(v) for v in found]
            verdicts += found
    return verdicts


def _of_entry(g: GateSpec) -> tuple[str, list[object]]:
    """The SQL condition (and its arguments) selecting the latest values of the gate's probe entry."""
    if g.params_fingerprint is None:
        return "probe = ?", [g.probe]
    return "probe = ? and params_fingerprint = ?", [g.probe, g.params_fingerprint]


def _evaluate_one(con: Any, g: GateSpec) -> list[Verdict]:
    where, args = _of_entry(g)
    sql = f"select model, dataset, value from latest_metrics where {where} and metric = ?"
    args = [*args, g.metric]
    for column, wanted in (("model", g.model), ("dataset", g.dataset)):
        if wanted is not None and not is_pattern(wanted):  # patterns are matched below, row by row
            sql += f" and {column} = ?"
            args.append(wanted)
    rows = con.execute(sql + " order by model, dataset", args).fetchall()
    rows = [r for r in rows if _selects(g.model, r[0]) and _selects(g.dataset, r[1])]
    if g.baseline is not None:
        rows = [r for r in rows if r[0] != g.baseline]
    seen = {part for model, _, _ in rows for part in (model or "").split(",")}
    unseen = [m for m in g.expected_models if m not in seen and m != g.baseline]
    out: list[Verdict] = []
    if not rows and not unseen:
        where = ", ".join(f"{k}={v}" for k, v in (("model", g.model), ("dataset", g.dataset)) if v)
        reason = f"no stored value of {g.source}.{g.metric}{' for ' + where if where else ''} (run `audit run` first)"
        return [Verdict(g, g.model, g.dataset, None, None, "missing", reason)]
    for model, dataset, value in rows:
        base = None
        if g.baseline is not None:
            hit = con.execute(
                f"select value from latest_metrics where {_of_entry(g)[0]} and metric = ? and model = ? "
                "and dataset = ?",
                [*_of_entry(g)[1], g.metric, g.baseline, dataset],
            ).fetchone()
            if hit is None:
                reason = f"no stored value of {g.metric} for baseline model {g.baseline!r} on {dataset}"
                out.append(Verdict(g, model, dataset, value, None, "missing", reason))
                continue
            base = hit[0]
        observed = value - base if base is not None else value
        problem = _check(g, observed)
        out.append(
            Verdict(
                g,
                model,
                dataset,
                value,
                base,
                "fail" if problem else "pass",
                problem or f"{observed:.6g} {_threshold_text(g)}",
            )
        )
    for m in unseen:
        on = f" on {g.dataset}" if g.dataset else ""
        reason = (
            f"no stored value of {g.source}.{g.metric} for model {m!r}{on} "
            f"(matched by {g.model!r}; run `audit run` first)"
        )
        out.append(Verdict(g, m, g.dataset, None, None, "missing", reason))
    return out


class _Context:
    """The latest values of one probe entry's key metrics, grouped by model, to explain verdicts."""

    def __init__(self, con: Any, gate: GateSpec, keys: tuple[str, ...]):
        where, args = _of_entry(gate)
        sql = f"select model, dataset, metric, value from latest_metrics where {where}"
        if keys:
            sql += f" and metric in ({', '.join('?' * len(keys))})"
            args += list(keys)
        self.keys = keys
        self.by_model: dict[str | None, list[tuple[str | None, str, float]]] = {}
        for model, dataset, metric, value in con.execute(sql + " order by dataset, metric", args).fetchall():
            self.by_model.setdefault(model, []).append((dataset, metric, value))

    def attach(self, v: Verdict) -> Verdict:
        if not v.model:
            return v
        rows = [
            (dataset, metric, value)
            for dataset, metric, value in self.by_model.get(v.model, [])
            if metric != v.gate.metric and (not v.dataset or dataset == v.dataset)
        ]
        order = {m: i for i, m in enumerate(self.keys)}
        rows.sort(key=lambda r: (order.get(r[1], 0), r[1], r[0] or ""))
        if not self.keys:
            rows = rows[:CONTEXT_LIMIT]
        several = {m for m in {r[1] for r in rows} if sum(r[1] == m for r in rows) > 1}
        context = tuple(
            (f"{metric} ({dataset})" if metric in several else metric, value)
            for dataset, metric, value in rows
        )
        return Verdict(v.gate, v.model, v.dataset, v.value, v.baseline_value, v.status, v.reason, context)


def exit_code(verdicts: list[Verdict]) -> int:
    return 0 if all(v.passed for v in verdicts) else 1


def junit_xml(verdicts: list[Verdict]) -> str:
    suite = ET.Element(
        "testsuite",
        name="audit gates",
        tests=str(len(verdicts)),
        failures=str(sum(v.status == "fail" for v in verdicts)),
        errors=str(sum(v.status == "missing" for v in verdicts)),
    )
    for v in verdicts:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"audit.{v.gate.source}",
            name=f"{v.gate.label} [model={v.model or '*'}, dataset={v.dataset or '*'}]",
        )
        if v.status == "fail":
            ET.SubElement(case, "failure", message=v.reason).text = _describe(v)
        elif v.status == "missing":
            ET.SubElement(case, "error", message=v.reason).text = v.reason
        if v.context:
            ET.SubElement(case, "system-out").text = f"context: {v.context_text}"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _describe(v: Verdict) -> str:
    text = f"{v.gate.source}.{v.gate.metric} for model {v.model} on {v.dataset}: observed {v.observed:.6g}"
    if v.baseline_value is not None:
        text += f" (= {v.value:.6g} − baseline {v.gate.baseline} {v.baseline_value:.6g})"
    return text + f"; required {_threshold_text(v.gate)}"


def _baseline_text(v: Verdict) -> str:
    """For a baseline gate, what the observed value is: the model's value minus the baseline model's."""
    if v.gate.baseline is None:
        return ""
    text = f" on value − {v.gate.baseline}'s"
    if v.value is not None and v.baseline_value is not None:
        text += f" ({_fmt(v.value)} − {_fmt(v.baseline_value)})"
    return text


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(verdicts: list[Verdict]) -> str:
    passed = sum(v.passed for v in verdicts)
    head = (
        "✅ all gates pass"
        if passed == len(verdicts)
        else f"❌ {len(verdicts) - passed} of {len(verdicts)} gate checks failed"
    )
    lines = [
        f"## model-audit gates: {head}",
        "",
        "| verdict | gate | model | dataset | observed | threshold | detail | context |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        mark = {"pass": "✅ pass", "fail": "❌ fail", "missing": "⚠️ missing"}[v.status]
        lines.append(
            f"| {mark} | `{v.gate.source}.{v.gate.metric}` | {v.model or '—'} | {v.dataset or '—'} | "
            f"{_fmt(v.observed)} | {_threshold_text(v.gate)}{_baseline_text(v)} | {_cell(v.reason)} | "
            f"{_cell(v.context_text) or '—'} |"
        )
    return "\n".join(lines) + "\n"
