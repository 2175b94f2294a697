"""Catalog rows as Parquet: `audit catalog export` and `audit catalog import`.

Why this exists: DuckDB lets one process write a catalog file, so on a cluster only the driver writes the
catalog. Where workers share no file system with it, each worker records into a catalog of its own and
exports it as a *shard* — a directory with one Parquet file per table and a ``manifest.json`` — and the
driver imports the shards. Other tools (pandas, Polars, Spark, DuckDB itself) read the same files.

Import is idempotent, so shards can be re-sent and imported again without harm: every row is keyed by its
natural key and only new keys are added; a result's metrics and arrays come with their result and only
with it; and a successful result of a job (cache key) the catalog already holds a successful result of —
the same job computed twice, e.g. retried on a second node — is skipped, so each job's result is present
once. A deliberate recomputation (``audit run --force``: a later successful result of the same job inside
its own source catalog) is kept, as it would have been in that catalog. Everything one call imports is one
transaction: a failure part-way leaves the catalog as it was.

Rows that name a result without being part of it — a run's reuse of a stored result (``run_reuses``) and an
accepted baseline (``accepted``) — are keyed by their own natural keys, so they are imported with a result
the catalog already held too; one that names a result skipped as a duplicate job is pointed at the catalog's
result of that job, so an acceptance imported from a worker's catalog still finds its values.

Only DuckDB's own ``COPY … TO`` and ``read_parquet`` are used: no pyarrow or pandas dependency.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from audit.api.errors import UsageError
from audit.catalog.migrations import MIGRATIONS
from audit.catalog.store import Catalog, is_damage, now

FORMAT = "model-audit-catalog"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Natural keys of the tables whose key is not their primary key (tables with a primary key, such as
# model_outputs, are keyed by it; `results` has its own rule; tables with a result_id follow their result).
KEYS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",),
    "run_ends": ("run_id",),
    "models": ("fingerprint", "name"),
    "datasets": ("fingerprint", "name"),
    "run_reuses": ("run_id", "result_id"),
    "accepted": ("acceptance_id", "result_id"),
}
# tables keyed above that name a result (result_id) they do not belong to: imported by their own key, their
# result_id mapped onto the catalog's result of the same job when the export's was a skipped duplicate
REFERENCES_RESULTS = ("run_reuses", "accepted")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*\Z")


@dataclass
class ImportReport:
    """Rows added and skipped (already present, or a duplicate job) per table, over every source."""

    sources: list[Path] = field(default_factory=list)
    added: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    duplicate_jobs: int = 0  # successful results skipped: the catalog already held their job's result

    @property
    def rows_added(self) -> int:
        return sum(self.added.values())

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def _count(self, table: str, added: int, skipped: int) -> None:
        self.added[table] = self.added.get(table, 0) + added
        self.skipped[table] = self.skipped.get(table, 0) + skipped


# ------------------------------------------------------------------ export


def export_catalog(catalog: Catalog, directory: Path, *, run_ids: list[str] | None = None) -> dict[str, int]:
    """Write every table of the catalog as ``<table>.parquet`` plus ``manifest.json`` into ``directory``.

    Tables are discovered from the catalog's schema (``schema_migrations`` excepted), so a table added by
    a later migration is exported without a change here. With ``run_ids`` (full ids) only those runs go
    out: their ``runs``/``run_ends`` rows, their results with the results' metrics and arrays (any table
    with a ``result_id``), the models and datasets those results name, and the cached model outputs of
    the (model, dataset) pairs they used. The catalog is opened read-only and read in one snapshot; the
    manifest is written last, so an interrupted export is never mistaken for a complete one.
    Returns the rows written per table.
    """
    directory = Path(directory)
    created = not directory.exists()
    written: list[Path] = []
    try:
        return _export(catalog, directory, run_ids, written)
    except BaseException:
        # a failed export leaves nothing behind: the files it wrote, and the folder if it made it
        for f in written:
            f.unlink(missing_ok=True)
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _export(catalog: Catalog, directory: Path, run_ids: list[str] | None, written: list[Path]) -> dict[str, int]:
    counts: dict[str, int] = {}
    with catalog.exporter() as con:  # a missing catalog is refused before the directory is touched
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / MANIFEST).unlink(missing_ok=True)
        except OSError as e:
            raise UsageError(f"cannot write an export to {directory}: {e.strerror or e}") from None
        con.execute("begin transaction")
        schema_version = con.execute("select coalesce(max(version), 0) from schema_migrations").fetchone()[0]
        tables = _tables(con)
        if run_ids is not None:
            known = {r[0] for r in con.execute("select run_id from runs").fetchall()}
            missing = [r for r in run_ids if r not in known]
            if missing:
                raise UsageError(f"no run with id {missing[0]!r} in catalog {catalog.path}")
        for table, columns in tables.items():
            where = "" if run_ids is None else _run_filter(table, columns, _sql_list(run_ids))
            target = directory / f"{table}.parquet"
            written.append(target)
            try:
                counts[table] = con.execute(
                    f"copy (select * from {table} t {where} order by t.rowid) "
                    f"to {_sql_string(str(target))} (format parquet)"
                ).fetchone()[0]
            except duckdb.IOException as e:
                if is_damage(e):
                    raise
                raise UsageError(f"cannot write {target}: {_first_line(e)}") from None
        con.execute("commit")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema_version": schema_version,
        "created_at": now().isoformat(),
        "tool_version": _tool_version(),
        "duckdb_version": duckdb.__version__,
        "run_ids": run_ids,
        "tables": counts,
    }
    tmp = directory / f".{MANIFEST}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, directory / MANIFEST)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {directory / MANIFEST}: {e.strerror or e}") from None
    return counts


def _run_filter(table: str, columns: list[str], ids: str) -> str:
    """The WHERE clause that keeps the rows of one table that belong to the runs in the SQL list ``ids``."""
    of_runs = f"select * from results where list_contains({ids}, run_id)"
    if table == "accepted":  # acceptances of the exported results (the run_id it names may be another)
        return f"where t.result_id in (select result_id from ({of_runs}))"
    if "run_id" in columns:  # runs, run_ends, results, run_reuses
        return f"where list_contains({ids}, t.run_id)"
    if "result_id" in columns:  # metric_values, arrays
        return f"where t.result_id in (select result_id from ({of_runs}))"
    if table in ("models", "datasets"):
        kind = table[:-1]
        pairs = f"select unnest({kind}s) as name, unnest({kind}_fingerprints) as fingerprint from ({of_runs})"
        return f"where exists (select 1 from ({pairs}) p where p.name = t.name and p.fingerprint = t.fingerprint)"
    if table == "model_outputs":
        return (
            f"where exists (select 1 from ({of_runs}) r where list_contains(r.model_fingerprints, "
            "t.model_fingerprint) and list_contains(r.dataset_fingerprints, t.dataset_fingerprint))"
        )
    return ""  # a table with no tie to runs: exported whole


# ------------------------------------------------------------------ import


@dataclass
class _Export:
    directory: Path
    schema_version: int
    tables: dict[str, int]  # table -> rows, as the manifest says


def import_catalog(catalog: Catalog, directory: Path) -> ImportReport:
    """Merge one export (or shard) into the catalog in one transaction; see :func:`import_catalogs`."""
    return import_catalogs(catalog, [directory])


def import_catalogs(catalog: Catalog, directories: Sequence[Path]) -> ImportReport:
    """Merge exports (or shards) into the catalog, all of them in one transaction, idempotently.

    Every directory is checked before the catalog is opened (manifest, schema version, each Parquet
    file readable and as long as the manifest says), so a bad shard is one clear UsageError and the
    catalog — created and migrated here if it does not exist yet — is not touched. The shards are then
    merged in the order given: rows keyed by their natural keys, a shard seeing what earlier ones added.
    """
    exports = [_read_manifest(Path(d)) for d in directories]
    report = ImportReport(sources=[e.directory for e in exports])
    with catalog.writer() as con:
        tables = _tables(con)
        primary_keys = _primary_keys(con)
        for export in exports:
            for table in export.tables:
                if table not in tables:
                    raise UsageError(
                        f"{export.directory}: table {table!r} is not in catalog {catalog.path} "
                        "(exported by a newer model-audit? upgrade)"
                    )
        con.execute("begin transaction")
        current = None
        try:
            for export in exports:
                current = export
                _merge(con, export, tables, primary_keys, report)
            con.execute("commit")
        except duckdb.Error as e:
            _rollback(con)
            where = current.directory if current is not None else catalog.path
            raise UsageError(f"cannot import {where}: {_first_line(e)} (nothing was imported)") from None
        except BaseException:
            _rollback(con)
            raise
    return report


def _read_manifest(directory: Path) -> _Export:
    """The export's manifest, checked, and every Parquet file it names opened and counted."""
    if not directory.is_dir():
        raise UsageError(
            f"{directory}: no such directory (give a directory written by `audit catalog export`)"
        )
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{directory}: no {MANIFEST} (not a directory written by `audit catalog export`)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: not a readable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f'{path}: not a model-audit catalog export (expected "format": "{FORMAT}")')
    fmt, version, tables = (
        manifest.get("format_version"),
        manifest.get("schema_version"),
        manifest.get("tables"),
    )
    if not isinstance(fmt, int) or not isinstance(version, int) or not isinstance(tables, dict):
        raise UsageError(f"{path}: format_version, schema_version and tables are missing or malformed")
    if fmt > FORMAT_VERSION:
        raise UsageError(
            f"{path}: export format version {fmt} is newer than this model-audit reads ({FORMAT_VERSION}); upgrade"
        )
    if version > len(MIGRATIONS):
        raise UsageError(
            f"{path}: exported from a catalog with schema version {version}, newer than this model-audit "
            f"knows ({len(MIGRATIONS)}); upgrade model-audit to import it"
        )
    checked: dict[str, int] = {}
    probe = duckdb.connect()
    try:
        for table, rows in tables.items():
            if not isinstance(table, str) or not _IDENTIFIER.match(table) or not isinstance(rows, int):
                raise UsageError(f"{path}: tables: {table!r}: expected a table name and a row count")
            file = directory / f"{table}.parquet"
            if not file.is_file():
                raise UsageError(f"{file}: missing (the manifest lists table {table} with {rows} rows)")
            try:
                found = probe.execute(
                    f"select count(*) from read_parquet({_sql_string(str(file))})"
                ).fetchone()[0]
            except duckdb.Error as e:
                raise UsageError(f"{file}: not a readable Parquet file: {_first_line(e)}") from None
            if found != rows:
                raise UsageError(
                    f"{file}: holds {found} rows where the manifest says {rows} (an incomplete copy?)"
                )
            checked[table] = rows
    finally:
        probe.close()
    return _Export(directory, version, checked)


def _merge(
    con: duckdb.DuckDBPyConnection,
    export: _Export,
    tables: dict[str, list[str]],
    primary_keys: dict[str, tuple[str, ...]],
    report: ImportReport,
) -> None:
    """Stage each of the export's files in a temporary table, then add the rows whose keys are new."""
    staged: dict[str, str] = {}
    for table in export.tables:
        stage = f"_import_{table}"
        file = export.directory / f"{table}.parquet"
        try:
            con.execute(
                f"create or replace temp table {stage} as select * from read_parquet({_sql_string(str(file))})"
            )
        except duckdb.Error as e:
            raise UsageError(f"{file}: not a readable Parquet file: {_first_line(e)}") from None
        columns = [r[0] for r in con.execute(f"describe {stage}").fetchall()]
        unknown = [c for c in columns if c not in tables[table]]
        if unknown:
            raise UsageError(f"{file}: column {unknown[0]!r} is not in table {table} of this catalog")
        staged[table] = stage
    _check_counts(con, export, staged)
    # results first: the tables that follow their result need to know which results were added
    con.execute("create or replace temp table _import_added (result_id varchar)")
    con.execute("create or replace temp table _import_same (result_id varchar, kept_id varchar)")
    order = sorted(staged, key=lambda t: (t != "results", "result_id" in tables[t], t))
    for table in order:
        stage, columns = staged[table], tables[table]
        total = con.execute(f"select count(*) from {stage}").fetchone()[0]
        if table == "results":
            added = _merge_results(con, stage, report)
        elif "result_id" in columns and table not in REFERENCES_RESULTS:
            added = con.execute(
                f"insert into {table} by name select s.* from {stage} s "
                "where s.result_id in (select result_id from _import_added) order by s.rowid"
            ).fetchone()[0]
        else:
            if table in REFERENCES_RESULTS:
                con.execute(
                    f"update {stage} set result_id = m.kept_id from _import_same m "
                    f"where {stage}.result_id = m.result_id"
                )
            key = KEYS.get(table) or primary_keys.get(table) or tuple(columns)
            added = _insert_new(con, table, stage, key)
        report._count(table, added, total - added)
        con.execute(f"drop table {stage}")
    con.execute("drop table _import_added")
    con.execute("drop table _import_same")


def _check_counts(con: duckdb.DuckDBPyConnection, export: _Export, staged: dict[str, str]) -> None:
    """Every successful result of the export must come with all its metric and array rows: each result
    row counts them (``n_metrics``, ``n_arrays``, schema 3 on), so a shard that lost a file or rows is
    refused before anything is written (else its results would be taken for computed ones forever)."""
    if "results" not in staged:
        return
    stage = staged["results"]
    columns = {r[0] for r in con.execute(f"describe {stage}").fetchall()}
    for count, table in (("n_metrics", "metric_values"), ("n_arrays", "arrays")):
        if count not in columns:  # an export from before schema 3: nothing to check against
            continue
        rows = f"(select count(*) from {staged[table]} x where x.result_id = s.result_id)" if table in staged else "0"
        bad = con.execute(
            f"select s.result_id, s.{count}, {rows} from {stage} s "
            f"where s.status = 'ok' and s.{count} is not null and s.{count} <> {rows} limit 1"
        ).fetchone()
        if bad:
            rid, expected, found = bad
            raise UsageError(
                f"{export.directory / (table + '.parquet')}: result {rid} has {found} of its {expected} "
                f"{table} rows (an incomplete export or shard); nothing imported"
            )


def _insert_new(con: duckdb.DuckDBPyConnection, table: str, stage: str, key: tuple[str, ...]) -> int:
    """Insert the staged rows whose key is not in the table yet (one row per key); returns how many.

    The first row of each key is picked by rowid in a subquery that carries no other column: a window
    function over the rows themselves would turn -0.0 inside a list into 0.0 (DuckDB 2.0), breaking the
    bit-exact round trip of arrays and model outputs.
    """
    same = " and ".join(f"t.{c} is not distinct from s.{c}" for c in key)
    by = ", ".join(key)
    return con.execute(
        f"insert into {table} by name select s.* from {stage} s "
        f"where s.rowid in (select min(rowid) from {stage} group by {by}) "
        f"and not exists (select 1 from {table} t where {same}) order by s.rowid"
    ).fetchone()[0]


def _merge_results(con: duckdb.DuckDBPyConnection, stage: str, report: ImportReport) -> int:
    """Add the staged results that are new by result_id, except a duplicate of a job already held.

    A successful result is a duplicate when the catalog already holds a successful result of the same
    cache key and it is the first successful result of that key in its own source; a later one there is a
    deliberate recomputation (``--force``) and is added like any new result.
    """
    con.execute(
        f"""
        insert into _import_added
        select s.result_id from {stage} s
        where not exists (select 1 from results t where t.result_id = s.result_id)
        qualify row_number() over (partition by s.result_id order by s.rowid) = 1
        """
    )
    # each duplicate, and the catalog's latest successful result of its job: where rows that name the
    # duplicate (a reuse, an acceptance) point instead
    con.execute(
        f"""
        insert into _import_same
        select f.result_id, (
            select arg_max(t.result_id, t.created_at) from results t where t.cache_key = f.cache_key and t.status = 'ok'
        ) as kept_id
        from (
            select result_id, cache_key from {stage} where status = 'ok'
            qualify row_number() over (partition by cache_key order by created_at, result_id) = 1
        ) f
        where f.result_id in (select result_id from _import_added)
        and exists (select 1 from results t where t.cache_key = f.cache_key and t.status = 'ok')
        """
    )
    report.duplicate_jobs += con.execute(
        "delete from _import_added where result_id in (select result_id from _import_same)"
    ).fetchone()[0]
    added = con.execute(
        f"insert into results by name select s.* from {stage} s "
        "where s.result_id in (select result_id from _import_added) "
        f"and s.rowid in (select min(rowid) from {stage} group by result_id) order by s.rowid"
    ).fetchone()[0]
    # a shard exported before migration 3 has no parameters fingerprint or entry: computed as the
    # migration computes them for a catalog's own older results
    con.execute(
        "update results set params_fingerprint = left(sha256(coalesce(params::varchar, '{}')), 16) "
        "where params_fingerprint is null and result_id in (select result_id from _import_added)"
    )
    con.execute(
        "update results set entry = probe where entry is null and result_id in (select result_id from _import_added)"
    )
    return added


# ------------------------------------------------------------------ helpers


def _tables(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """The catalog's own tables (not the migrations record, not temporary ones) with their columns."""
    rows = con.execute(
        "select table_name, column_name from duckdb_columns() "
        "where database_name = current_database() and schema_name = 'main' and not internal "
        "and table_name in (select table_name from duckdb_tables() where database_name = current_database() "
        "and schema_name = 'main' and not temporary) and table_name <> 'schema_migrations' "
        "order by table_name, column_index"
    ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def _primary_keys(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, ...]]:
    rows = con.execute(
        "select table_name, constraint_column_names from duckdb_constraints() "
        "where database_name = current_database() and constraint_type = 'PRIMARY KEY'"
    ).fetchall()
    return {table: tuple(columns) for table, columns in rows}


def _sql_string(text: str) -> str:
    """A SQL string literal (COPY and read_parquet take no prepared parameters for the file name)."""
    return "'" + text.replace("'", "''") + "'"


def _sql_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_sql_string(v) for v in values) + "]::varchar[]"


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # the error that brought us here may have ended it already
        con.execute("rollback")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _tool_version() -> str:
    import audit

    return str(getattr(audit, "__version__", "unknown"))


def describe(report: ImportReport) -> list[tuple[str, int, int]]:
    """(table, added, skipped) rows in a stable order, for a summary table."""
    return [(t, report.added.get(t, 0), report.skipped.get(t, 0)) for t in sorted(report.added)]


__all__ = ["ImportReport", "describe", "export_catalog", "import_catalog", "import_catalogs"]
