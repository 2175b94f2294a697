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

A gate with ``against`` (audit.history) compares with history: each latest value with the value of the same
probe entry, metric, model and dataset in the baseline results ("accepted:main", "run:ID", "git:REF"), and
fails when the change exceeds ``max_increase``/``max_decrease`` (absolute, or "5%" of |baseline|); its
min/max still apply to the value itself. A baseline that cannot be found (no such acceptance, run or commit,
or no value of that model and dataset in it) makes the verdict "missing", never a pass: a pull request must
not pass because main's catalog was not restored. Verdicts carry both values (``value``,
``baseline_value``), so every output shows them and the delta.

Each verdict can carry context for a reviewer: the latest values of the probe's other key metrics for the
same model (and dataset, when the verdict has one). The caller passes the key metrics per probe
(``evaluate(..., key_metrics={"cka": ("accuracy", ...)})``); the core never imports a probe.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from audit import history
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
    # what a comparison with history compared with: the resolved baseline's description (which acceptance or
    # run, when, at which commit); "" for other gates
    compared_with: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def observed(self) -> float | None:
        """What min/max apply to: the value, or for a baseline-model gate value − the baseline model's."""
        if self.value is None:
            return None
        if self.gate.compares_history or self.baseline_value is None:
            return self.value
        return self.value - self.baseline_value

    @property
    def delta(self) -> float | None:
        """value − baseline value (a baseline model's, or history's), when both are known."""
        if self.value is None or self.baseline_value is None:
            return None
        return self.value - self.baseline_value

    @property
    def context_text(self) -> str:
        return " · ".join(f"{name} {_fmt(value)}" for name, value in self.context)


def _threshold_text(g: GateSpec) -> str:
    return g.bounds


def _check(g: GateSpec, observed: float | None) -> str | None:
    if observed is None or math.isnan(observed):
        return "value is NaN"
    if g.min is not None and observed < g.min:
        return f"{observed:.6g} < min {g.min:g}"
    if g.max is not None and observed > g.max:
        return f"{observed:.6g} > max {g.max:g}"
    return None


def _change_text(base: float, delta: float) -> str:
    """"Δ -0.03 (-3.16%)": the change, and relative to |baseline| where that is defined."""
    text = f"Δ {delta:+.6g}"
    if base != 0 and math.isfinite(base):
        text += f" ({delta / abs(base) * 100:+.3g}%)"
    return text


def _check_change(g: GateSpec, value: float | None, base: float) -> tuple[str, str]:
    """(status, reason) of a comparison with history: min/max on the value, then the change bounds."""
    value = math.nan if value is None else value
    problem = _check(g, value)
    if problem is None and math.isnan(base):
        problem = f"the value in {g.against} is NaN: nothing to compare with"
    values = f"{value:.6g} vs {base:.6g} in {g.against}"
    if problem is not None:
        return "fail", problem if math.isnan(value) else f"{problem} ({values})"
    delta = value - base
    change = _change_text(base, delta)
    for bound, grew, word in ((g.max_increase, delta, "increase"), (g.max_decrease, -delta, "decrease")):
        if bound is not None and grew > bound.allowed(base):
            return "fail", f"{values}: {change}, a {word} beyond max_{word} {bound.text}"
    return "pass", f"{values}: {change}, within {g.bounds.removesuffix(f' vs {g.against}')}"


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
    root: Path | None = None,
) -> list[Verdict]:
    """Verdicts of the gates on the latest stored values.

    ``key_metrics`` (probe name → metric names, as the probes declare them) adds each verdict's context;
    a probe mapped to an empty sequence shows its other metrics alphabetically, at most CONTEXT_LIMIT.
    ``root`` is the folder where ``against = "git:REF"`` is resolved (the config's; default: the working
    directory). Each baseline is resolved once, however many gates compare with it.
    """
    verdicts: list[Verdict] = []
    if not gates:
        return verdicts
    contexts: dict[tuple[str, str | None], _Context] = {}
    baselines: dict[str, history.Baseline] = {}
    with catalog.reader() as con:
        for g in gates:
            if g.compares_history and g.against is None:  # a gate built in code: nothing to compare with
                why = f"{g.label}: max_increase/max_decrease need a baseline (against, or audit gate --against)"
                found = _evaluate_one(con, g, history.Baseline(None, problem=why))
            elif g.compares_history and g.against is not None:
                if g.against not in baselines:
                    baselines[g.against] = history.resolve(con, history.parse_against(g.against), root)
                found = _evaluate_one(con, g, baselines[g.against])
            else:
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


def _history_values(con: Any, g: GateSpec, baseline: history.Baseline) -> dict[tuple[str, str], float]:
    """The baseline's value of the gate's entry and metric per (model, dataset), labelled as `metrics` labels
    them (the newest, should the baseline hold two results of one label)."""
    if not baseline.result_ids:
        return {}
    where, args = _of_entry(g)
    rows = con.execute(
        f"select model, dataset, value from metrics where {where} and metric = ? and list_contains(?, result_id) "
        "qualify row_number() over (partition by model, dataset order by created_at desc) = 1",
        [*args, g.metric, list(baseline.result_ids)],
    ).fetchall()
    return {(m, d): (math.nan if v is None else v) for m, d, v in rows}


def _evaluate_one(con: Any, g: GateSpec, baseline: history.Baseline | None = None) -> list[Verdict]:
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
    if baseline is not None:
        past = _history_values(con, g, baseline)
        for model, dataset, value in rows:
            if baseline.problem is not None:
                out.append(Verdict(g, model, dataset, value, None, "missing", baseline.problem, (), baseline.description))
            elif (model, dataset) not in past:
                reason = (
                    f"no value of {g.source}.{g.metric} for model {model!r}"
                    f"{f' on {dataset}' if dataset else ''} in {baseline.description}"
                )
                out.append(Verdict(g, model, dataset, value, None, "missing", reason, (), baseline.description))
            else:
                base = past[(model, dataset)]
                status, reason = _check_change(g, value, base)
                out.append(Verdict(g, model, dataset, value, base, status, reason, (), baseline.description))
        rows = []
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
        return dataclasses.replace(v, context=context)


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
        out = [comparison_text(v)] if v.gate.compares_history else []
        if v.context:
            out.append(f"context: {v.context_text}")
        if out:
            ET.SubElement(case, "system-out").text = "\n".join(out)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def comparison_text(v: Verdict) -> str:
    """A comparison with history in one line: both values, the delta, and what the baseline was."""
    text = f"value {_fmt(v.value)} · baseline {_fmt(v.baseline_value)} · Δ {delta_text(v)}"
    return text + f" · compared with {v.compared_with or v.gate.against}"


def delta_text(v: Verdict) -> str:
    """value − baseline value, with its size relative to |baseline| where defined: "-0.03 (-3.2%)"."""
    if v.delta is None:
        return "—"
    text = f"{v.delta:+.4g}"
    base = v.baseline_value
    if base is not None and base != 0 and math.isfinite(base) and math.isfinite(v.delta):
        text += f" ({v.delta / abs(base) * 100:+.3g}%)"
    return text


def _describe(v: Verdict) -> str:
    head = f"{v.gate.source}.{v.gate.metric} for model {v.model} on {v.dataset}: "
    if v.gate.compares_history:
        return head + f"{comparison_text(v)}; required {_threshold_text(v.gate)}"
    text = head + f"observed {v.observed:.6g}"
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


def compared_with(verdicts: Sequence[Verdict]) -> list[str]:
    """The baselines the verdicts compared with, each once, described (which acceptance or run, when, commit)."""
    return list(dict.fromkeys(v.compared_with for v in verdicts if v.compared_with))


def markdown(verdicts: list[Verdict]) -> str:
    """The verdicts as a Markdown table (a GitHub step summary renders it). With a comparison with history
    the table gains the baseline value and the delta, and names the baselines below it."""
    passed = sum(v.passed for v in verdicts)
    head = (
        "✅ all gates pass"
        if passed == len(verdicts)
        else f"❌ {len(verdicts) - passed} of {len(verdicts)} gate checks failed"
    )
    history_ = any(v.gate.compares_history for v in verdicts)
    extra = ("baseline", "Δ") if history_ else ()
    columns = ("verdict", "gate", "model", "dataset", "observed", *extra, "threshold", "detail", "context")
    lines = [
        f"## model-audit gates: {head}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for v in verdicts:
        mark = {"pass": "✅ pass", "fail": "❌ fail", "missing": "⚠️ missing"}[v.status]
        compared = f" {_fmt(v.baseline_value)} | {delta_text(v)} |" if history_ else ""
        lines.append(
            f"| {mark} | `{v.gate.source}.{v.gate.metric}` | {v.model or '—'} | {v.dataset or '—'} | "
            f"{_fmt(v.observed)} |{compared} {_threshold_text(v.gate)}{_baseline_text(v)} | {_cell(v.reason)} | "
            f"{_cell(v.context_text) or '—'} |"
        )
    for described in compared_with(verdicts):
        lines += ["", f"Compared with {_cell(described)}."]
    return "\n".join(lines) + "\n"
