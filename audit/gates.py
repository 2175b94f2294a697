"""Gates: thresholds on the latest stored metrics → verdicts, exit codes, JUnit XML and Markdown.

A gate matches every latest value of (probe, metric), narrowed by its optional model and dataset. With
a ``baseline`` model the bounds apply to the difference value − baseline value on the same dataset.
A gate that matches no stored value fails as "missing": a CI gate must not pass because a probe never ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from audit.catalog import Catalog
from audit.config import GateSpec


@dataclass(frozen=True)
class Verdict:
    gate: GateSpec
    model: str | None
    dataset: str | None
    value: float | None
    baseline_value: float | None
    status: str  # "pass" | "fail" | "missing"
    reason: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def observed(self) -> float | None:
        if self.value is None:
            return None
        return self.value - self.baseline_value if self.baseline_value is not None else self.value


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


def evaluate(gates: list[GateSpec], catalog: Catalog) -> list[Verdict]:
    verdicts: list[Verdict] = []
    if not gates:
        return verdicts
    with catalog.reader() as con:
        for g in gates:
            sql = "select model, dataset, value from latest_metrics where probe = ? and metric = ?"
            args: list[object] = [g.probe, g.metric]
            if g.model is not None:
                sql += " and model = ?"
                args.append(g.model)
            if g.dataset is not None:
                sql += " and dataset = ?"
                args.append(g.dataset)
            rows = con.execute(sql + " order by model, dataset", args).fetchall()
            if g.baseline is not None:
                rows = [r for r in rows if r[0] != g.baseline]
            if not rows:
                where = ", ".join(f"{k}={v}" for k, v in (("model", g.model), ("dataset", g.dataset)) if v)
                verdicts.append(
                    Verdict(
                        g,
                        g.model,
                        g.dataset,
                        None,
                        None,
                        "missing",
                        f"no stored value of {g.probe}.{g.metric}{' for ' + where if where else ''} "
                        "(run `audit run` first)",
                    )
                )
                continue
            for model, dataset, value in rows:
                base = None
                if g.baseline is not None:
                    hit = con.execute(
                        "select value from latest_metrics where probe = ? and metric = ? and model = ? and dataset = ?",
                        [g.probe, g.metric, g.baseline, dataset],
                    ).fetchone()
                    if hit is None:
                        verdicts.append(
                            Verdict(
                                g,
                                model,
                                dataset,
                                value,
                                None,
                                "missing",
                                f"no stored value of {g.metric} for baseline model {g.baseline!r} on {dataset}",
                            )
                        )
                        continue
                    base = hit[0]
                observed = value - base if base is not None else value
                problem = _check(g, observed)
                verdicts.append(
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
    return verdicts


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
            classname=f"audit.{v.gate.probe}",
            name=f"{v.gate.label} [model={v.model or '*'}, dataset={v.dataset or '*'}]",
        )
        if v.status == "fail":
            ET.SubElement(case, "failure", message=v.reason).text = _describe(v)
        elif v.status == "missing":
            ET.SubElement(case, "error", message=v.reason).text = v.reason
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _describe(v: Verdict) -> str:
    text = f"{v.gate.probe}.{v.gate.metric} for model {v.model} on {v.dataset}: observed {v.observed:.6g}"
    if v.baseline_value is not None:
        text += f" (= {v.value:.6g} − baseline {v.gate.baseline} {v.baseline_value:.6g})"
    return text + f"; required {_threshold_text(v.gate)}"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4g}"


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
        "| verdict | gate | model | dataset | observed | threshold | detail |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        mark = {"pass": "✅ pass", "fail": "❌ fail", "missing": "⚠️ missing"}[v.status]
        lines.append(
            f"| {mark} | `{v.gate.probe}.{v.gate.metric}` | {v.model or '—'} | {v.dataset or '—'} | "
            f"{_fmt(v.observed)} | {_threshold_text(v.gate)} | {v.reason} |"
        )
    return "\n".join(lines) + "\n"
