"""Benchmark of the DuckDB catalog at 10^6 metric rows: ingest, cross-model queries, export and import.

Why it measures what it measures:

* **Ingest goes through the real write path**, `Catalog.record_result`: one transaction per result, the
  cache-key check, and a connection opened and closed around every write (the runner holds the file lock
  only for the milliseconds of a write, so other processes can read between writes). Two shapes reach
  10^6 metric rows: 10 000 results × 100 metrics (many jobs, the runner's case; the per-write cost of
  opening the file dominates) and 1 result × 10^6 metrics (one huge result; only the row insert counts).
* **The yardstick is the previous implementation**: `executemany` with one INSERT per metric row, kept
  here as a subclass that overrides only `_insert_metrics` (and `_insert_arrays` for the arrays row), so
  everything else is the same code. It is slow (about 4 000 rows/s), so it runs on a subsample (a few
  hundred results, or 2·10^4 metrics) and its rate is reported as measured there — labelled "subsample";
  a total for the full shape is extrapolated from that rate.
* **A write's fixed cost** (open, cache-key check, result row, commit, close) is measured with zero metrics,
  to show how much of the per-result time the metric rows still take.
* **Queries go through the `metrics` and `latest_metrics` views**, the public contract, on the
  10 000 × 100 catalog (5 probes × 50 models × 4 datasets, 10 results each over time): the mean of one
  metric per model across datasets, the latest value per (model, metric) — all of them and for one
  metric — a probe + metric filter, and the README's out-of-distribution drop (a self-join of
  `latest_metrics`). Each is timed two ways: through `Catalog.query` (what `audit query` pays: opening the
  file read-only, included) and on an open read-only connection (the query alone). Best of --repeats.
* **Export and import** of that catalog (`audit catalog export|import`): rows/s over all tables; import
  into a fresh catalog, then the same export again (nothing added: the idempotence check's cost).
* BLAS/OpenMP threads are pinned to 1 (nothing here uses them); DuckDB runs with its default thread count,
  which is printed, as is the load average before and after (the machine may be shared).

Run: python benchmarks/bench_catalog.py   (7–10 minutes on 2 cores, most of it the 10 000 writes; --help)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
from common import best_time  # noqa: E402

from audit.catalog.exchange import export_catalog, import_catalog  # noqa: E402
from audit.catalog.store import Catalog, StoredResult, _encode, migrate  # noqa: E402


class ExecutemanyCatalog(Catalog):
    """The write path before this change: one INSERT per metric row, one statement per array."""

    @staticmethod
    def _insert_metrics(con, result_id, metrics) -> None:
        con.executemany(
            "insert into metric_values values (?, ?, ?, ?, ?)",
            [[result_id, name, value, model, dataset] for name, value, model, dataset in metrics],
        )

    @staticmethod
    def _insert_arrays(con, result_id, arrays) -> None:
        for name, array in arrays.items():
            con.execute("insert into arrays values (?, ?, ?, ?, ?, ?)", [result_id, name, *_encode(array)])


def fresh(directory: Path, name: str) -> Path:
    path = directory / name
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------- data

PROBES, MODELS, DATASETS = 5, 50, 4


def make_result(
    run_id: str, i: int, n_metrics: int, rng: np.random.Generator, arrays: int = 0
) -> StoredResult:
    """Result i of the grid: probe, model and dataset cycle; every 1000 results start a newer 'round'."""
    probe, model, dataset = i % PROBES, (i // PROBES) % MODELS, (i // (PROBES * MODELS)) % DATASETS
    names = ["accuracy"] + [f"metric_{j:03d}" for j in range(1, n_metrics)] if n_metrics <= 1000 else None
    values = rng.random(n_metrics).tolist()
    metrics = (
        [(names[j], values[j], None, None) for j in range(n_metrics)]
        if names
        else [(f"metric_{j:07d}", values[j], None, None) for j in range(n_metrics)]
    )
    return StoredResult(
        run_id=run_id,
        cache_key=f"key-{i}",
        probe=f"probe_{probe}",
        probe_version="1",
        params={"round": i // (PROBES * MODELS * DATASETS)},
        models=[(f"model_{model:02d}", f"fp-model-{model}")],
        datasets=[(f"dataset_{dataset}", f"fp-dataset-{dataset}")],
        status="ok",
        error=None,
        warnings=[],
        duration_s=1.0,
        device="cpu",
        metrics=metrics,
        arrays={f"a{k}": rng.normal(size=(10, 10)) for k in range(arrays)},
    )


def ingest(
    cls: type[Catalog], path: Path, n_results: int, n_metrics: int, arrays: int = 0
) -> tuple[float, Catalog]:
    """Seconds to record n_results results (results built beforehand) into a fresh catalog at path."""
    cat = cls(path)
    run = cat.start_run({"tool_version": "bench"})
    rng = np.random.default_rng(0)
    results = [make_result(run, i, n_metrics, rng, arrays) for i in range(n_results)]
    t0 = time.perf_counter()
    for r in results:
        cat.record_result(r)
    seconds = time.perf_counter() - t0
    cat.finish_run(run, "ok", n_results, 0, 0)
    return seconds, cat


def insert_only(cls: type[Catalog], work: Path, n: int, k: int, a: int, what: str) -> float:
    """Seconds for cls's insert step alone (metrics or arrays) of n results, one transaction each."""
    rng = np.random.default_rng(0)
    results = [make_result("run", i, k, rng, a) for i in range(n)]
    con = duckdb.connect(str(fresh(work, "insert-only.duckdb")))
    try:
        migrate(con)
        t0 = time.perf_counter()
        for i, r in enumerate(results):
            con.execute("begin transaction")
            if what == "metrics":
                cls._insert_metrics(con, f"r{i}", r.metrics)
            else:
                cls._insert_arrays(con, f"r{i}", r.arrays)
            con.execute("commit")
        return time.perf_counter() - t0
    finally:
        con.close()


def fmt_rate(rows: float, seconds: float) -> str:
    return f"{rows / seconds:,.0f}"


# --------------------------------------------------------------------------------------------- parts


def run_ingest(args: argparse.Namespace, work: Path) -> Catalog:
    print("\n## ingest through Catalog.record_result (one transaction and one connection per result)\n")
    print("| shape | path | results × metrics timed | seconds | rows/s | ms per result | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    n, k = args.results, args.metrics
    sub = min(args.yardstick_results, n)
    # the three subsample measurements alternate, best of --wide-repeats rounds, so that a load change
    # on a shared machine does not favour one of them
    t_fix = t_old = t_new_sub = math.inf
    for _ in range(args.wide_repeats):
        t_fix = min(t_fix, ingest(Catalog, fresh(work, "fixed.duckdb"), sub, 0)[0])
        t_old = min(t_old, ingest(ExecutemanyCatalog, fresh(work, "old.duckdb"), sub, k)[0])
        t_new_sub = min(t_new_sub, ingest(Catalog, fresh(work, "new-sub.duckdb"), sub, k)[0])
    print(
        f"| fixed cost of a write | no metrics | {sub} × 0 | {t_fix:.2f} | — | {t_fix / sub * 1e3:.1f} "
        "| open, check, commit, close |"
    )
    print(
        f"| {n:,} × {k} | before: executemany | {sub} × {k} | {t_old:.2f} | {fmt_rate(sub * k, t_old)} "
        f"| {t_old / sub * 1e3:.1f} | subsample; the full shape ≈ {t_old / sub * n:,.0f} s |"
    )
    print(
        f"| {n:,} × {k} | after: unnest | {sub} × {k} | {t_new_sub:.2f} | {fmt_rate(sub * k, t_new_sub)} "
        f"| {t_new_sub / sub * 1e3:.1f} | same subsample, same rounds |"
    )
    t_new, cat = ingest(Catalog, fresh(work, "catalog.duckdb"), n, k)
    print(
        f"| {n:,} × {k} | after: unnest | {n:,} × {k} | {t_new:.1f} | {fmt_rate(n * k, t_new)} "
        f"| {t_new / n * 1e3:.1f} | full shape: {n * k:,} rows |"
    )
    w = args.wide
    ws = min(args.yardstick_wide, w)
    t_old_w, _ = ingest(ExecutemanyCatalog, fresh(work, "wide-old.duckdb"), 1, ws)
    print(
        f"| 1 × {w:,} | before: executemany | 1 × {ws:,} | {t_old_w:.2f} | {fmt_rate(ws, t_old_w)} | — "
        f"| subsample; the full shape ≈ {t_old_w / ws * w:,.0f} s |"
    )
    t_new_w = min(ingest(Catalog, fresh(work, "wide.duckdb"), 1, w)[0] for _ in range(args.wide_repeats))
    print(
        f"| 1 × {w:,} | after: unnest | 1 × {w:,} | {t_new_w:.2f} | {fmt_rate(w, t_new_w)} | — "
        f"| best of {args.wide_repeats} |"
    )
    print(
        "\n## the insert step alone: the same results' rows inserted on one open connection, one transaction"
        f" per result, no open/close (best of {args.wide_repeats})\n"
    )
    print("| rows | path | seconds | rows/s | ms per result |")
    print("|---|---|---:|---:|---:|")
    a = args.arrays
    for label, rows, what in (
        (f"{sub} results × {k} metrics", sub * k, "metrics"),
        (f"{sub} results × {a} arrays of 10×10", sub * a, "arrays"),
    ):
        for cls, path in ((ExecutemanyCatalog, "before: executemany"), (Catalog, "after: unnest")):
            if what == "arrays":
                path = (
                    "before: one INSERT per array"
                    if cls is ExecutemanyCatalog
                    else "after: small arrays batched"
                )
            t = min(insert_only(cls, work, sub, k, a, what) for _ in range(args.wide_repeats))
            print(f"| {label} | {path} | {t:.3f} | {fmt_rate(rows, t)} | {t / sub * 1e3:.2f} |")
    return cat


QUERIES = [
    (
        "mean of one metric per model across datasets (metrics)",
        "select model, avg(value) from metrics where metric = 'metric_007' group by model order by model",
    ),
    (
        "latest value per (model, dataset, metric), all (latest_metrics)",
        "select count(*), avg(value) from latest_metrics",
    ),
    (
        "latest value per (model, dataset) of one metric (latest_metrics)",
        "select model, dataset, value from latest_metrics where probe = 'probe_2' and metric = 'metric_042'",
    ),
    (
        "filter probe + metric, every result over time (metrics)",
        "select model, dataset, value, created_at from metrics where probe = 'probe_3' and metric = 'metric_042'",
    ),
    (
        "README: accuracy drop out of distribution (latest_metrics self-join)",
        "select i.model, i.value - o.value as drop from latest_metrics i join latest_metrics o "
        "using (probe, model, metric) where i.metric = 'accuracy' and i.dataset = 'dataset_0' "
        "and o.dataset = 'dataset_1' order by drop desc",
    ),
]


def run_queries(args: argparse.Namespace, cat: Catalog) -> None:
    _, ((rows,),) = cat.query("select count(*) from metrics")
    print(f"\n## queries on {rows:,} rows of `metrics` (best of ≥ {args.repeats}; ms)\n")
    print("| query | rows out | through Catalog.query (opens the file) | on an open connection |")
    print("|---|---:|---:|---:|")
    # Catalog.query first, with no other connection to the file in this process: DuckDB shares an open
    # database between the connections of a process, so with one open the file would not be opened again
    through_catalog = []
    for _label, sql in QUERIES:
        t_cat, _, (_, out) = best_time(lambda sql=sql: cat.query(sql), args.repeats)
        through_catalog.append((t_cat, len(out)))
    con = duckdb.connect(str(cat.path), read_only=True, config={"enable_external_access": False})
    try:
        for (label, sql), (t_cat, n_out) in zip(QUERIES, through_catalog, strict=True):
            t_con, _, _ = best_time(lambda sql=sql: con.execute(sql).fetchall(), args.repeats)
            print(f"| {label} | {n_out:,} | {t_cat * 1e3:.1f} | {t_con * 1e3:.1f} |")
    finally:
        con.close()


def run_exchange(args: argparse.Namespace, cat: Catalog, work: Path) -> None:
    print("\n## export and import of that catalog (audit catalog export | import)\n")
    print("| step | seconds | rows | rows/s | note |")
    print("|---|---:|---:|---:|---|")
    out = work / "export"

    def export() -> dict[str, int]:
        shutil.rmtree(out, ignore_errors=True)
        return export_catalog(cat, out)

    t_exp, reps, counts = best_time(export, args.exchange_repeats, 0.0)
    total = sum(counts.values())
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(
        f"| export (all tables) | {t_exp:.2f} | {total:,} | {fmt_rate(total, t_exp)} "
        f"| best of {reps}; {size:.1f} MiB of Parquet |"
    )

    def into_fresh() -> tuple[Catalog, int]:
        target = Catalog(fresh(work, "imported.duckdb"))
        return target, import_catalog(target, out).rows_added

    t_imp, reps, (target, added) = best_time(into_fresh, args.exchange_repeats, 0.0)
    print(
        f"| import into a new catalog | {t_imp:.2f} | {added:,} | {fmt_rate(added, t_imp)} | best of {reps} |"
    )
    t_again, reps, report = best_time(lambda: import_catalog(target, out), args.exchange_repeats, 0.0)
    print(
        f"| the same import again (adds {report.rows_added}) | {t_again:.2f} | {report.rows_skipped:,} "
        f"| {fmt_rate(report.rows_skipped, t_again)} | best of {reps}; every row checked and skipped |"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=int, default=10_000, help="results of the many-results shape")
    p.add_argument("--metrics", type=int, default=100, help="metrics per result of that shape")
    p.add_argument("--wide", type=int, default=1_000_000, help="metrics of the one-result shape")
    p.add_argument("--yardstick-results", type=int, default=300, help="results timed on the old path")
    p.add_argument("--yardstick-wide", type=int, default=20_000, help="metrics of one result on the old path")
    p.add_argument("--arrays", type=int, default=8, help="small arrays per result in the arrays row")
    p.add_argument("--repeats", type=int, default=5, help="at least this many timed calls per query")
    p.add_argument("--wide-repeats", type=int, default=2, help="timed ingests of the one-result shape")
    p.add_argument("--exchange-repeats", type=int, default=2, help="timed exports and imports")
    p.add_argument("--dir", type=Path, default=None, help="working directory (default: a temporary one)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-catalog-")) if args.dir is None else args.dir
    work.mkdir(parents=True, exist_ok=True)
    threads = duckdb.connect().execute("select current_setting('threads')").fetchone()[0]
    print(
        f"# catalog benchmark: duckdb {duckdb.__version__}, {threads} DuckDB threads, {os.cpu_count()} CPUs"
    )
    print(f"working directory {work}")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    try:
        cat = run_ingest(args, work)
        run_queries(args, cat)
        run_exchange(args, cat, work)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(
        f"\nload average (1, 5, 15 min) before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
        f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; total {time.perf_counter() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
