"""The DuckDB catalog: schema migrations, one transaction per result, read-only queries.

DuckDB locks the file against every other process (readers included) while a connection is open for
writing, so a writer here holds its connection only for the few milliseconds of each write. Another
`audit run` or `audit query` that meets the lock waits (saying so once) and retries until a deadline,
then fails with one clear line. Each result, with its metrics and arrays, is written in one
transaction: a process killed mid-write leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from audit.api.errors import CatalogBusyError, UsageError
from audit.api.results import ResultView, StoredMetric
from audit.catalog import DEFAULT_WAIT_S
from audit.catalog.migrations import MIGRATIONS
from audit.specs import params_fingerprint, params_json

if TYPE_CHECKING:  # NumPy is imported where arrays are encoded or decoded: `audit query` needs none
    import numpy as np

_ARRAYS_BATCHED_UP_TO = 4096  # elements; larger arrays are inserted one statement each


def now() -> datetime:
    return datetime.now(UTC)


def is_damage(e: BaseException) -> bool:
    """Whether a DuckDB error says the database file itself is broken (not the SQL, not a lock)."""
    text = str(e).lower()
    return isinstance(e, duckdb.IOException | duckdb.SerializationException | duckdb.InternalException) and any(
        w in text for w in ("could not read enough bytes", "corrupt", "checksum", "invalid block", "serializ")
    )


def _is_lock_error(e: Exception) -> bool:
    text = str(e).lower()
    return "lock" in text and ("could not set" in text or "conflicting" in text)


@dataclass
class StoredResult:
    """What the runner hands the catalog for one finished job."""

    run_id: str
    cache_key: str
    probe: str
    probe_version: str
    params: dict[str, Any]
    models: list[tuple[str, str]]  # (name, fingerprint)
    datasets: list[tuple[str, str]]
    status: str  # "ok" | "error"
    error: str | None
    warnings: list[str]
    duration_s: float
    device: str
    metrics: list[tuple[str, float, str | None, str | None]]  # (name, value, model, dataset)
    arrays: dict[str, np.ndarray]
    entry: str = ""  # the label of the [[probes]] entry that computed it ("": the probe's name)


# the columns record_result writes, by name (migrations add columns at the end of `results`)
_RESULT_COLUMNS = (
    "result_id", "run_id", "cache_key", "probe", "probe_version", "params", "models", "model_fingerprints",
    "datasets", "dataset_fingerprints", "status", "error", "warnings", "duration_s", "device", "created_at",
    "params_fingerprint", "entry", "n_metrics", "n_arrays",
)
# a successful result counts as computed only with all its metric rows (an import may have lost them)
_METRIC_ROWS = "(select count(*) from metric_values m where m.result_id = results.result_id)"
_COMPLETE = (
    f"status = 'ok' and case when n_metrics is null then {_METRIC_ROWS} >= 1 else {_METRIC_ROWS} = n_metrics end"
)


class Catalog:
    def __init__(
        self, path: Path, wait_s: float = DEFAULT_WAIT_S, on_wait: Callable[[str], None] | None = None
    ):
        self.path = Path(path)
        self.wait_s = wait_s
        self.on_wait = on_wait or (lambda message: None)
        self._migrated = False

    # ------------------------------------------------------------ connections

    def _connect(self, read_only: bool, file_access: bool = False) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise UsageError(f"no catalog at {self.path} (run `audit run` first, or pass --catalog)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        config = {"enable_external_access": False} if read_only and not file_access else {}
        deadline = time.monotonic() + self.wait_s
        told = False
        delay = 0.05
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=config)
            except duckdb.Error as e:
                if not _is_lock_error(e):
                    raise UsageError(f"cannot open catalog {self.path}: {str(e).splitlines()[0]}") from None
                if time.monotonic() >= deadline:
                    raise CatalogBusyError(
                        f"catalog {self.path} is still locked by another process after {self.wait_s:g} s "
                        "(another `audit run` is writing it); try again when it finishes, or raise --wait"
                    ) from None
                if not told:
                    self.on_wait(
                        f"catalog {self.path} is busy (another audit process is writing it); waiting…"
                    )
                    told = True
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection with file-system access disabled (no COPY TO, no ATTACH)."""
        con = self._read_only(file_access=False)
        try:
            with self._damage_is_a_usage_error():
                yield con
        finally:
            con.close()

    @contextmanager
    def exporter(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection that may write files (COPY … TO): `audit catalog export`, never user SQL."""
        con = self._read_only(file_access=True)
        try:
            with self._damage_is_a_usage_error():
                yield con
        finally:
            con.close()

    def _read_only(self, file_access: bool) -> duckdb.DuckDBPyConnection:
        """A read-only connection to a catalog at this model-audit's schema.

        Every reader (gates, the report, `audit query`) reads columns the latest migration added; a catalog
        written by an older model-audit is upgraded first, once, through a writer (migrations are additive:
        nothing is rewritten or lost). A catalog that cannot be opened for writing to upgrade it (a read-only
        file system, another writer holding it past --wait) is one clear line, not a missing-column error.
        """
        con = self._connect(read_only=True, file_access=file_access)
        with self._damage_is_a_usage_error():
            version = _schema_version(con)
        if version == len(MIGRATIONS):
            return con
        con.close()
        if version == 0:  # never written by model-audit: another DuckDB database, not ours to alter
            raise UsageError(f"{self.path} is not a model-audit catalog (no schema_migrations table)")
        if version > len(MIGRATIONS):
            raise UsageError(
                f"catalog {self.path} has schema version {version}, newer than this model-audit knows "
                f"({len(MIGRATIONS)}); upgrade model-audit to read it"
            )
        try:
            with self.writer():
                pass
        except CatalogBusyError:
            raise
        except (OSError, UsageError, duckdb.Error) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(
                f"catalog {self.path} was written by an older model-audit (schema version {version} of "
                f"{len(MIGRATIONS)}) and could not be upgraded ({first}); open it once where it is writable"
            ) from None
        return self._connect(read_only=True, file_access=file_access)

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._connect(read_only=False)
        try:
            with self._damage_is_a_usage_error():
                if not self._migrated:
                    migrate(con)
                    self._migrated = True
                yield con
        finally:
            con.close()

    @contextmanager
    def _damage_is_a_usage_error(self) -> Iterator[None]:
        """A truncated or corrupt file opens fine and fails on the first read of a lost block (DuckDB reads
        lazily): wherever that happens, it is one line naming the file, not a traceback."""
        try:
            yield
        except duckdb.Error as e:
            if not is_damage(e):
                raise
            raise UsageError(
                f"catalog {self.path} is damaged (truncated or corrupt: {str(e).splitlines()[0]}); restore it "
                "from a copy or an export (`audit catalog import`)"
            ) from None

    # ------------------------------------------------------------ runs

    def start_run(self, meta: dict[str, Any]) -> str:
        run_id = uuid.uuid4().hex[:16]
        cols = ["run_id", "started_at", *meta]
        with self.writer() as con:
            con.execute(
                f"insert into runs ({', '.join(cols)}) values ({', '.join('?' * len(cols))})",
                [run_id, now(), *meta.values()],
            )
        return run_id

    def finish_run(self, run_id: str, status: str, computed: int, reused: int, failed: int) -> None:
        with self.writer() as con:
            con.execute(
                "insert into run_ends values (?, ?, ?, ?, ?, ?)",
                [run_id, now(), status, computed, reused, failed],
            )

    def record_reuses(self, run_id: str, result_ids: Sequence[str]) -> None:
        """Remember that a run used these stored results instead of computing them again: without it, the
        results of a run that recomputed one changed checkpoint would be that one result (`audit accept`)."""
        if not result_ids:
            return
        with self.writer() as con:
            con.execute("insert into run_reuses select ?, unnest(?::varchar[])", [run_id, list(result_ids)])

    def record_acceptance(
        self, name: str, result_ids: Sequence[str], run_id: str | None, git_commit: str | None, note: str | None
    ) -> str:
        """Add one acceptance (`audit accept --as NAME`): a row per result, one id and time for all of them,
        in one transaction. Returns the acceptance id; earlier acceptances of the name are kept."""
        acceptance_id = uuid.uuid4().hex[:16]
        with self.writer() as con:
            con.execute(
                "insert into accepted select ?, ?, unnest(?::varchar[]), ?, ?, ?, ?",
                [name, acceptance_id, list(result_ids), now(), run_id, git_commit, note],
            )
        return acceptance_id

    def record_sources(self, kind: str, rows: list[tuple[str, str, dict[str, Any], int | None]]) -> None:
        """Remember models or datasets (fingerprint, name, spec, n) not seen before under that name."""
        with self.writer() as con:
            for fingerprint, name, spec, n in rows:
                seen = con.execute(
                    f"select 1 from {kind} where fingerprint = ? and name = ?", [fingerprint, name]
                ).fetchone()
                if seen:
                    continue
                if kind == "models":
                    con.execute(
                        "insert into models values (?, ?, ?, ?)", [fingerprint, name, json.dumps(spec), now()]
                    )
                else:
                    con.execute(
                        "insert into datasets values (?, ?, ?, ?, ?)",
                        [fingerprint, name, json.dumps(spec), n, now()],
                    )

    # ------------------------------------------------------------ results

    def cached_result(self, cache_key: str) -> str | None:
        """The id of a successful result with this cache key, if the catalog has one."""
        if not self.path.exists():
            return None
        with self.reader() as con:
            row = con.execute(
                f"select result_id from results where cache_key = ? and {_COMPLETE} "
                "order by created_at desc limit 1",
                [cache_key],
            ).fetchone()
        return row[0] if row else None

    def known_models(self, fingerprints: list[str]) -> set[str]:
        """The model fingerprints the catalog has seen load and run: in a successful result, or with
        cached outputs (a model of the same fingerprint is built from the same files and factory)."""
        if not self.path.exists() or not fingerprints:
            return set()
        with self.reader() as con:
            tables = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
            sql = (
                "select distinct f from (select unnest(model_fingerprints) as f from results where status = 'ok'"
                + (" union all select model_fingerprint from model_outputs" if "model_outputs" in tables else "")
                + ") where f in (select unnest(?))"
            )
            return {r[0] for r in con.execute(sql, [fingerprints]).fetchall()}

    def cached_results(self, cache_keys: list[str]) -> dict[str, str]:
        """:meth:`cached_result` for many keys in one query (one connection: a run of 10⁴ small jobs would
        otherwise open the file 10⁴ times before starting): cache key → the latest successful result id."""
        if not self.path.exists() or not cache_keys:
            return {}
        with self.reader() as con:
            rows = con.execute(
                "select cache_key, arg_max(result_id, created_at) from results "
                f"where {_COMPLETE} and cache_key in (select unnest(?)) group by cache_key",
                [list(dict.fromkeys(cache_keys))],
            ).fetchall()
        return dict(rows)

    def record_result(self, r: StoredResult, force: bool = False) -> tuple[str, bool]:
        """Write one result in one transaction. Returns (result_id, written).

        If another process stored a successful result with the same cache key meanwhile, nothing is
        written and its id is returned, so concurrent runs never duplicate a result. With ``force`` (a
        deliberate recomputation) the new result is added beside the old one and becomes the latest.
        """
        with self.writer() as con:
            con.execute("begin transaction")
            try:
                if r.status == "ok" and not force:
                    row = con.execute(
                        f"select result_id from results where cache_key = ? and {_COMPLETE} limit 1",
                        [r.cache_key],
                    ).fetchone()
                    if row:
                        con.execute("rollback")
                        return row[0], False
                result_id = uuid.uuid4().hex[:16]
                row = {
                    "result_id": result_id,
                    "run_id": r.run_id,
                    "cache_key": r.cache_key,
                    "probe": r.probe,
                    "probe_version": r.probe_version,
                    "params": params_json(r.params),
                    "models": [m for m, _ in r.models],
                    "model_fingerprints": [f for _, f in r.models],
                    "datasets": [d for d, _ in r.datasets],
                    "dataset_fingerprints": [f for _, f in r.datasets],
                    "status": r.status,
                    "error": r.error,
                    "warnings": r.warnings,
                    "duration_s": r.duration_s,
                    "device": r.device,
                    "created_at": now(),
                    "params_fingerprint": params_fingerprint(r.params),
                    "entry": r.entry or r.probe,
                    "n_metrics": len(r.metrics),
                    "n_arrays": len(r.arrays),
                }
                con.execute(
                    f"insert into results ({', '.join(_RESULT_COLUMNS)}) "
                    f"values ({', '.join('?' * len(_RESULT_COLUMNS))})",
                    [row[c] for c in _RESULT_COLUMNS],
                )
                if r.metrics:
                    self._insert_metrics(con, result_id, r.metrics)
                if r.arrays:
                    self._insert_arrays(con, result_id, r.arrays)
                con.execute("commit")
            except BaseException:
                con.execute("rollback")
                raise
        return result_id, True

    @staticmethod
    def _insert_metrics(
        con: duckdb.DuckDBPyConnection,
        result_id: str,
        metrics: list[tuple[str, float, str | None, str | None]],
    ) -> None:
        """All of a result's metrics in one statement: each column is one list parameter, unnested.

        ``executemany`` runs one INSERT per row (about 4 000 rows/s here); four list parameters cost one
        statement whatever their length (about 500 000 rows/s; benchmarks/bench_catalog.py). Unnesting a
        one-row select keeps the list order, so rowid order is still the probe's order of metrics.
        """
        names, values, models, datasets = [], [], [], []
        for name, value, model, dataset in metrics:
            names.append(name)
            values.append(None if value is None else float(value))  # NaN stays NaN, -0.0 stays -0.0
            models.append(model)
            datasets.append(dataset)
        con.execute(
            "insert into metric_values select ?, unnest(?::varchar[]), unnest(?::double[]), "
            "unnest(?::varchar[]), unnest(?::varchar[])",
            [result_id, names, values, models, datasets],
        )

    @staticmethod
    def _insert_arrays(con: duckdb.DuckDBPyConnection, result_id: str, arrays: dict[str, np.ndarray]) -> None:
        """Consecutive small arrays in one statement (saves a statement each), large ones one apiece.

        A list of lists converts slower than one flat list, so past ``_ARRAYS_BATCHED_UP_TO`` elements an
        array goes alone (measured: 6 arrays of 100 elements 3.3 → 1.8 ms; one of 10⁶ elements 209 ms
        alone, 721 ms as a list of lists). The arrays keep their order (rowid), as before.
        """
        one = "insert into arrays values (?, ?, ?, ?, ?, ?)"
        batch: list[tuple[str, list[Any]]] = []

        def flush() -> None:
            if len(batch) == 1:
                con.execute(one, [result_id, batch[0][0], *batch[0][1]])
            elif batch:
                columns = [[name for name, _ in batch], *([e[i] for _, e in batch] for i in range(4))]
                con.execute(
                    "insert into arrays select ?, unnest(?::varchar[]), unnest(?::varchar[]), "
                    "unnest(?::integer[][]), unnest(?::double[][]), unnest(?::varchar[][])",
                    [result_id, *columns],
                )
            batch.clear()

        for name, array in arrays.items():
            encoded = _encode(array)
            if math.prod(encoded[1]) > _ARRAYS_BATCHED_UP_TO:
                flush()
                con.execute(one, [result_id, name, *encoded])
            else:
                batch.append((name, encoded))
        flush()

    def load_arrays(self, result_id: str) -> dict[str, np.ndarray]:
        with self.reader() as con:
            rows = con.execute(
                "select name, dtype, shape, numbers, strings from arrays where result_id = ?", [result_id]
            ).fetchall()
        return {
            name: _decode(dtype, shape, numbers, strings) for name, dtype, shape, numbers, strings in rows
        }

    # ------------------------------------------------------------ reading results back

    def result_views(self, result_ids: Sequence[str]) -> list[ResultView]:
        """Stored results by id, in the order given, each with its metrics; arrays load on first use."""
        ids = list(dict.fromkeys(result_ids))
        if not ids:
            return []
        with self.reader() as con:
            rows = con.execute(
                "select result_id, run_id, probe, probe_version, params, models, datasets, status, error, "
                "warnings, created_at, duration_s, device, params_fingerprint, entry "
                "from results where list_contains(?, result_id)",
                [ids],
            ).fetchall()
            metric_rows = con.execute(
                "select result_id, metric, value, model, dataset from metric_values "
                "where list_contains(?, result_id) order by rowid",
                [ids],
            ).fetchall()
        metrics: dict[str, list[StoredMetric]] = {}
        for rid, name, value, model, dataset in metric_rows:
            metrics.setdefault(rid, []).append(
                StoredMetric(name, float("nan") if value is None else value, model, dataset)
            )
        by_id = {}
        for row in rows:
            rid, run_id, probe, version, params, models, datasets, status, error, warns, at, dur, dev, pfp, entry = row
            by_id[rid] = ResultView(
                result_id=rid,
                run_id=run_id,
                probe=probe,
                version=version,
                params=json.loads(params) if params else {},
                models=tuple(models or ()),
                datasets=tuple(datasets or ()),
                status=status,
                error=error,
                warnings=tuple(warns or ()),
                created_at=at,
                duration_s=dur,
                device=dev,
                metrics=tuple(metrics.get(rid, ())),
                params_fingerprint=pfp or "",
                entry=entry or probe,
                _load_arrays=lambda rid=rid: self.load_arrays(rid),
            )
        return [by_id[i] for i in ids if i in by_id]

    def resolve_id(self, kind: str, given: str) -> str:
        """The full id of the one result (kind "result") or run (kind "run") that is or starts with ``given``.

        Raises UsageError naming the candidates when the prefix is ambiguous, or when nothing matches.
        """
        table, column = {"result": ("results", "result_id"), "run": ("runs", "run_id")}[kind]
        with self.reader() as con:
            found = [
                r[0]
                for r in con.execute(
                    f"select distinct {column} from {table} where starts_with({column}, ?) order by 1 limit 6",
                    [given],
                ).fetchall()
            ]
        if given in found:
            return given
        if not found or not given:
            hint = (
                'audit query "select result_id, probe, model, dataset from metrics"'
                if kind == "result"
                else 'audit query "select run_id, started_at, status from run_summary"'
            )
            raise UsageError(f"no {kind} with id {given!r} in catalog {self.path} (list them with `{hint}`)")
        if len(found) > 1:
            shown = ", ".join(found[:5]) + (", …" if len(found) > 5 else "")
            raise UsageError(
                f"{kind} id prefix {given!r} is ambiguous: it matches {shown}; give more characters"
            )
        return found[0]

    # ------------------------------------------------------------ model outputs

    def cached_outputs(self, model_fp: str, dataset_fp: str, kind: str) -> np.ndarray | None:
        """A model's stored outputs of this kind on a dataset (bit-exact as stored), or None."""
        if not self.path.exists():
            return None
        with self.reader() as con:
            try:
                row = con.execute(
                    "select dtype, shape, numbers, strings from model_outputs "
                    "where model_fingerprint = ? and dataset_fingerprint = ? and kind = ?",
                    [model_fp, dataset_fp, kind],
                ).fetchone()
            except duckdb.CatalogException:  # a catalog not yet migrated to the table: nothing cached
                return None
        return None if row is None else _decode(*row)

    def outputs_for(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str, str], np.ndarray]:
        """Every stored output (all kinds) of these (model fingerprint, dataset fingerprint) pairs: what the
        driver sends a worker with its job, so that a worker never opens the catalog."""
        if not pairs or not self.path.exists():
            return {}
        found: dict[tuple[str, str, str], np.ndarray] = {}
        with self.reader() as con:
            for model_fp, dataset_fp in dict.fromkeys(pairs):
                try:
                    rows = con.execute(
                        "select kind, dtype, shape, numbers, strings from model_outputs "
                        "where model_fingerprint = ? and dataset_fingerprint = ?",
                        [model_fp, dataset_fp],
                    ).fetchall()
                except duckdb.CatalogException:  # a catalog not yet migrated to the table: nothing cached
                    return {}
                for kind, *encoded in rows:
                    found[(model_fp, dataset_fp, kind)] = _decode(*encoded)
        return found

    def store_outputs(
        self, model_fp: str, dataset_fp: str, kind: str, array: np.ndarray, replace: bool = False
    ) -> bool:
        """Cache a model's outputs on a dataset; returns whether a row was written.

        Idempotent: a row already stored under (model_fp, dataset_fp, kind), by this process or a
        concurrent one, is kept and nothing is written; with ``replace`` the new array replaces it.
        """
        key = [model_fp, dataset_fp, kind]
        values = [*key, *_encode(array), now()]  # encoded before taking the lock
        where = "where model_fingerprint = ? and dataset_fingerprint = ? and kind = ?"
        # check-then-insert in one transaction rather than INSERT ... ON CONFLICT / INSERT OR REPLACE:
        # DuckDB 2.0's conflict path turns -0.0 inside a list into 0.0, which would break the bit-exact
        # round trip; across processes the file lock already serialises writers
        with self.writer() as con:
            con.execute("begin transaction")
            try:
                if replace:
                    con.execute(f"delete from model_outputs {where}", key)
                elif con.execute(f"select 1 from model_outputs {where}", key).fetchone():
                    con.execute("rollback")
                    return False
                con.execute("insert into model_outputs values (?, ?, ?, ?, ?, ?, ?, ?)", values)
                con.execute("commit")
            except (duckdb.ConstraintException, duckdb.TransactionException):
                with contextlib.suppress(duckdb.Error):
                    con.execute("rollback")
                if con.execute(f"select 1 from model_outputs {where}", key).fetchone():
                    return False  # another connection of this process stored the key meanwhile
                raise
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("rollback")
                raise
        return True

    # ------------------------------------------------------------ queries

    def query(self, sql: str, params: list[Any] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run SQL on a read-only connection; a write or a file access is refused (UsageError)."""
        with self.reader() as con:
            try:  # fetching raises too (a lost block, a cast that fails on a later row)
                cur = con.execute(sql, params or [])
                if cur.description is None:
                    return [], []
                return [d[0] for d in cur.description], cur.fetchall()
            except duckdb.Error as e:
                if is_damage(e):
                    raise  # the reader names the damaged file
                raise UsageError(f"query failed: {str(e).splitlines()[0]}") from None


class CatalogOutputCache:
    """The catalog as a :class:`audit.api.context.Context`'s cache of model outputs (the runner's).

    With ``refresh`` (``audit run --force``) what the catalog already holds is not read: each
    (model, dataset, kind) is recomputed once in this run and replaces the stored row, and later jobs of
    the same run reuse that fresh row. One instance serves every job of a run.
    """

    def __init__(self, catalog: Catalog, refresh: bool = False):
        self.catalog = catalog
        self.refresh = refresh
        self._fresh: set[tuple[str, str, str]] = set()

    def get(self, model_fp: str, dataset_fp: str, kind: str) -> np.ndarray | None:
        if self.refresh and (model_fp, dataset_fp, kind) not in self._fresh:
            return None
        return self.catalog.cached_outputs(model_fp, dataset_fp, kind)

    def put(self, model_fp: str, dataset_fp: str, kind: str, array: np.ndarray) -> None:
        self.catalog.store_outputs(model_fp, dataset_fp, kind, array, replace=self.refresh)
        self._fresh.add((model_fp, dataset_fp, kind))


def _schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The catalog's applied schema version; 0 for a file no model-audit has written yet."""
    found = con.execute(
        "select count(*) from information_schema.tables where table_name = 'schema_migrations'"
    ).fetchone()[0]
    if not found:
        return 0
    return con.execute("select coalesce(max(version), 0) from schema_migrations").fetchone()[0]


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending migrations; returns the schema version. Each migration is one transaction."""
    con.execute(
        "create table if not exists schema_migrations (version integer, name varchar, applied_at timestamptz)"
    )
    current = con.execute("select coalesce(max(version), 0) from schema_migrations").fetchone()[0]
    if current > len(MIGRATIONS):
        raise UsageError(
            f"the catalog has schema version {current}, newer than this model-audit knows ({len(MIGRATIONS)}); upgrade"
        )
    for version, (name, sql) in enumerate(MIGRATIONS, start=1):
        if version <= current:
            continue
        con.execute("begin transaction")
        try:
            con.execute(sql)
            con.execute("insert into schema_migrations values (?, ?, ?)", [version, name, now()])
            con.execute("commit")
        except BaseException:
            con.execute("rollback")
            raise
    return len(MIGRATIONS)


def _encode(array: np.ndarray) -> list[Any]:
    import numpy as np

    a = np.asarray(array)
    shape = list(a.shape)
    if a.dtype.kind in "US" or a.dtype == object:
        return [a.dtype.str if a.dtype.kind in "US" else "str", shape, None, [str(v) for v in a.ravel()]]
    if a.dtype.kind not in "biuf":
        raise TypeError(f"cannot store an array of dtype {a.dtype}")
    return [a.dtype.str, shape, a.astype(np.float64).ravel().tolist(), None]


def _decode(
    dtype: str, shape: list[int], numbers: list[float] | None, strings: list[str] | None
) -> np.ndarray:
    import numpy as np

    if strings is not None:
        return np.asarray(strings, dtype=object if dtype == "str" else dtype).reshape(shape)
    return np.asarray(numbers, dtype=np.float64).astype(np.dtype(dtype)).reshape(shape)
