"""The optimizer-forensics experiment without checkpoints or a catalog: `python forensics.py [--dim 1000 ...]`.

Wang et al. (2023) in one command: train one two-layer student four ways (GD, small- and large-step SGD,
Adam), then name each optimizer from the weight spectra the `entk` probe measures
(:mod:`model_audit_probes.entk.forensics` holds the recipe and the rule). It measures outside `audit run`
and records nothing; `make_data.py` + `audit run` is the catalogued version of the same experiment.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from audit.api.commands import one_line_errors
from audit.api.errors import UsageError

# The defaults of forensics.run_experiment (repeated here so that --help needs no torch import).
DEFAULT_DIM = 400
DEFAULT_WIDTH = 400
DEFAULT_SAMPLES = 400
DEFAULT_STEPS = 600
MAX_SEED = 2**32 - 1

F = TypeVar("F", bound=Callable[..., Any])


class ForensicsFormat(StrEnum):
    table = "table"
    json = "json"
    markdown = "markdown"


def _check(dim: int, width: int, samples: int, steps: int, seed: int) -> None:
    for flag, value in (("--dim", dim), ("--width", width), ("--samples", samples), ("--steps", steps)):
        if value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")


def _number(v: Any) -> float | None:
    """A plain float for JSON; NaN and ±inf become null."""
    v = float(v)
    return v if math.isfinite(v) else None


def _fmt(v: float, spec: str) -> str:
    return "—" if v is None or not math.isfinite(v) else format(v, spec)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch (and, where threadpoolctl is installed, numpy's BLAS) on one thread meanwhile, restored after.

    The students' steps and the 400×400 SVDs are too small to gain from more threads, and on a machine whose
    cores are busy, threads that wait for each other made the default run 30–50× slower (3 minutes instead
    of 4 s with 2 threads on 2 shared cores).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield
        else:
            with threadpool_limits(1):
                yield
    finally:
        torch.set_num_threads(threads)


def forensics_report(dim: int, width: int, samples: int, steps: int, seed: int, progress=None) -> dict:
    """Run the experiment and return the JSON-ready report: settings plus one dict per optimizer."""
    from model_audit_probes.entk.forensics import EXPECTED, OPTIMIZERS, classify, run_experiment

    with _one_thread():
        stats = run_experiment(d=dim, h=width, n=samples, steps=steps, seed=seed, progress=progress)
    rows = {}
    for name, s in stats.items():
        spec = OPTIMIZERS[name]
        verdict = classify(s)
        rows[name] = {
            "optimizer": "adam" if spec.adam else "sgd",
            "lr": spec.lr,
            "batch": spec.batch,
            "spikes": int(s["spikes"]) if math.isfinite(s["spikes"]) else None,
            "top_edge_ratio": _number(s["top_edge_ratio"]),
            "alpha": _number(s["alpha"]),
            "alpha_ks": _number(s["ks"]),
            "dw_stable_rank": _number(s["dw_stable_rank"]),
            "align_w": _number(s["align_w"]),
            "align_dw": _number(s["align_dw"]),
            "verdict": verdict,
            "expected": EXPECTED[name],
            "matches": verdict == EXPECTED[name],
        }
    return {
        "settings": {
            "seed": seed,
            "dim": dim,
            "width": width,
            "samples": samples,
            "steps": steps,
            "chance_alignment": 1 / math.sqrt(dim),
            "classify": _classify_thresholds(),
        },
        "optimizers": rows,
        "all_match": all(r["matches"] for r in rows.values()),
    }


def _classify_thresholds() -> dict[str, float]:
    import inspect

    from model_audit_probes.entk.forensics import classify

    return {
        k: p.default
        for k, p in inspect.signature(classify).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _explanation(report: dict) -> list[str]:
    t = report["settings"]["classify"]
    chance = report["settings"]["chance_alignment"]
    return [
        "GD / small-step SGD: 0 eigenvalues past the Marchenko–Pastur edge, so the spectrum is unchanged — the "
        "count past the edge decides this, not the tail exponent α alone (an MP bulk fits a power law too). "
        f"Large-step SGD: ≥ {t['min_spikes']:g} spikes, the top ≥ {t['min_top_edge']:g}× the edge, low α. "
        f"Adam: few weak spikes at most, but ΔW = W − W0 of stable rank ≥ {t['high_rank']:g}.",
        "cos W·β, cos ΔW·β: |cos| between β and the top right singular vector of W, of ΔW "
        f"(chance ≈ 1/√d = {chance:.3f}). In brackets under α: the KS distance of its power-law fit.",
    ]


_COLUMNS = (  # key, header in the terminal table, header in the markdown table
    ("optimizer", "optimizer", "optimizer"),
    ("spikes", "past edge", "spikes past the MP edge"),
    ("top_edge", "top / edge", "top eigenvalue / edge"),
    ("alpha", "tail α", "tail α (KS distance)"),
    ("rank", "srank ΔW", "stable rank of ΔW"),
    ("cos_w", "cos W·β", "cos(top sv of W, β)"),
    ("cos_dw", "cos ΔW·β", "cos(top sv of ΔW, β)"),
    ("verdict", "verdict", "verdict"),
    ("match", "ok", "as expected"),
)


def _short(verdict: str) -> str:
    """The verdict without its parenthesis: "large-step SGD (spikes, heavy tail)" → "large-step SGD"."""
    return verdict.split(" (")[0]


def _settings(r: dict) -> tuple[str, str]:
    batch = "full batch" if r["batch"] is None else f"batch {r['batch']}"
    return f"{'Adam' if r['optimizer'] == 'adam' else 'SGD'} lr {r['lr']:g}", batch


def _cells(r: dict) -> dict[str, str]:
    return {
        "spikes": "—" if r["spikes"] is None else str(r["spikes"]),
        "top_edge": _fmt(r["top_edge_ratio"], ".2f"),
        "alpha": _fmt(r["alpha"], ".2f"),
        "ks": _fmt(r["alpha_ks"], ".3f"),
        "rank": _fmt(r["dw_stable_rank"], ".2f"),
        "cos_w": _fmt(r["align_w"], ".3f"),
        "cos_dw": _fmt(r["align_dw"], ".3f"),
        "verdict": _short(r["verdict"]),
    }


def _title(report: dict) -> str:
    s = report["settings"]
    return (
        f"optimizer forensics: d = {s['dim']}, width = {s['width']}, samples = {s['samples']}, "
        f"{s['steps']} steps, seed {s['seed']}"
    )


def _markdown(report: dict) -> str:
    lines = [f"**{_title(report)}**", ""]
    lines.append("| " + " | ".join(h for _, _, h in _COLUMNS) + " |")
    lines.append("|" + "---|" * len(_COLUMNS))
    for name, r in report["optimizers"].items():
        cells = _cells(r)
        lr, batch = _settings(r)
        cells["optimizer"] = f"{name} ({lr}, {batch})"
        cells["alpha"] = f"{cells['alpha']} ({cells['ks']})"
        cells["match"] = "yes" if r["matches"] else f"no (expected {_short(r['expected'])})"
        lines.append("| " + " | ".join(cells[k] for k, _, _ in _COLUMNS) + " |")
    lines.append("")
    lines += [f"- {line}" for line in _explanation(report)]
    return "\n".join(lines) + "\n"


def _table(report: dict) -> Table:
    """Fits 80 columns: no vertical rules, the optimizer's settings and the fit's KS distance on extra lines."""
    table = Table(title=_title(report), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # fixed widths, wrapped headers: 78 columns in all
    widths = {"optimizer": 10, "spikes": 4, "top_edge": 5, "alpha": 7, "rank": 5, "cos_w": 5, "cos_dw": 5}
    for key, header, _ in _COLUMNS:
        if key in ("optimizer", "verdict"):
            table.add_column(header, width=widths.get(key, 19), overflow="fold")
        else:
            table.add_column(header, width=widths.get(key, 2), justify="right", overflow="fold")
    for name, r in report["optimizers"].items():
        cells = {k: escape(v) for k, v in _cells(r).items()}
        _, batch = _settings(r)
        cells["optimizer"] = f"[bold]{escape(name)}[/]\n[dim]lr {r['lr']:g}\n{batch}[/]"
        cells["alpha"] = f"{cells['alpha']}\n[dim]({cells['ks']})[/]"
        if r["matches"]:
            cells["match"] = "[green]✓[/]"
        else:
            cells["match"] = "[red]✗[/]"
            cells["verdict"] += f"\n[red]expected {escape(_short(r['expected']))}[/]"
        table.add_row(*[cells[k] for k, _, _ in _COLUMNS])
    return table


@one_line_errors
def entk_forensics(
    seed: Annotated[
        int, typer.Option("--seed", help="seeds the data, the initialisation and the batches")
    ] = 0,
    dim: Annotated[int, typer.Option("--dim", "--d", help="input dimension d (= length of β)")] = DEFAULT_DIM,
    width: Annotated[int, typer.Option("--width", help="hidden width h (W is h × d)")] = DEFAULT_WIDTH,
    samples: Annotated[int, typer.Option("--samples", help="training examples n")] = DEFAULT_SAMPLES,
    steps: Annotated[int, typer.Option("--steps", help="updates per optimizer")] = DEFAULT_STEPS,
    format: Annotated[
        ForensicsFormat, typer.Option("--format", "-f", help="table, json or markdown")
    ] = ForensicsFormat.table,
) -> None:
    """Optimizer forensics (Wang et al. 2023): train one two-layer student four ways, tell them apart by spectra.

    GD, small-step SGD, large-step SGD and Adam train the first layer W of the same network from the same
    initialisation W0 on data of a GLM teacher (direction β); the weight-spectrum statistics of the entk
    probe then name the optimizer. Seeded: the same options give the same numbers.
    """
    _check(dim, width, samples, steps, seed)
    err = Console(stderr=True)
    started = time.perf_counter()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("preparing data and W0", total=None)

        def progress(message: str) -> None:
            bar.update(task, description=f"training the students · {message}")

        try:
            report = forensics_report(dim, width, samples, steps, seed, progress=progress)
        except (MemoryError, RuntimeError) as e:  # torch reports an allocation failure as a RuntimeError
            if isinstance(e, RuntimeError) and "memory" not in str(e).lower():
                raise
            raise UsageError(
                f"out of memory for --dim {dim} --width {width} --samples {samples}; try smaller sizes"
            ) from None
    elapsed = time.perf_counter() - started
    matched = sum(r["matches"] for r in report["optimizers"].values())
    err.print(
        f"trained and measured {len(report['optimizers'])} students in {elapsed:.1f} s; "
        f"{matched} of {len(report['optimizers'])} classified as expected",
        highlight=False,
    )
    if format is ForensicsFormat.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif format is ForensicsFormat.markdown:
        sys.stdout.write(_markdown(report))
    else:
        out = Console()
        out.print(_table(report))
        for line in _explanation(report):
            out.print(escape(line), highlight=False)


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(entk_forensics)

if __name__ == "__main__":
    app()
