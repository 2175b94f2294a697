"""Versioned, additive schema migrations of the catalog.

Each migration is applied once, in order, inside a transaction, and recorded in ``schema_migrations``.
Only add migrations at the end and only additively (new tables, ADD COLUMN, CREATE OR REPLACE VIEW):
DuckDB refuses DROP/RENAME COLUMN and ALTER TYPE on tables with indexes, and readers of older catalogs
must keep working. Tables are append-only (a run's end is a row of ``run_ends``, not an UPDATE).
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial schema",
        """
        create table runs (
            run_id varchar not null, started_at timestamptz not null, tool_version varchar, git_commit varchar,
            host varchar, device varchar, argv varchar, config_path varchar, config_hash varchar,
            python_version varchar, torch_version varchar, duckdb_version varchar
        );
        create table run_ends (
            run_id varchar not null, finished_at timestamptz not null, status varchar,
            computed integer, reused integer, failed integer
        );
        create table models (
            fingerprint varchar not null, name varchar not null, spec json, first_seen timestamptz
        );
        create table datasets (
            fingerprint varchar not null, name varchar not null, spec json, n_examples bigint, first_seen timestamptz
        );
        create table results (
            result_id varchar not null, run_id varchar not null, cache_key varchar not null,
            probe varchar not null, probe_version varchar not null, params json,
            models varchar[], model_fingerprints varchar[], datasets varchar[], dataset_fingerprints varchar[],
            status varchar not null, error varchar, warnings varchar[], duration_s double, device varchar,
            created_at timestamptz not null
        );
        create table metric_values (
            result_id varchar not null, metric varchar not null, value double, model varchar, dataset varchar
        );
        create table arrays (
            result_id varchar not null, name varchar not null, dtype varchar not null, shape integer[],
            numbers double[], strings varchar[]
        );
        create view metrics as
            select r.run_id, r.result_id, r.probe,
                   coalesce(m.model, array_to_string(r.models, ',')) as model,
                   coalesce(m.dataset, array_to_string(r.datasets, ',')) as dataset,
                   m.metric, m.value, r.created_at, r.probe_version
            from metric_values m join results r using (result_id)
            where r.status = 'ok';
        create view latest_metrics as
            select * from metrics
            qualify row_number() over (partition by probe, model, dataset, metric order by created_at desc) = 1;
        create view run_summary as
            select r.run_id, r.started_at, e.finished_at, coalesce(e.status, 'interrupted') as status,
                   e.computed, e.reused, e.failed, r.tool_version, r.git_commit, r.host, r.device, r.argv
            from runs r left join run_ends e using (run_id);
        """,
    ),
    (
        "model outputs cache",
        # A model's outputs on a dataset, keyed by content fingerprints, so that a job whose model list
        # changed (one more candidate beside a reference ensemble) reuses the others' outputs. Stored the
        # way `arrays` stores a result's arrays (bit-exact round trip). A cache, not a record: the first row
        # stored under a key is kept, except under `audit run --force`, which replaces it.
        """
        create table model_outputs (
            model_fingerprint varchar not null, dataset_fingerprint varchar not null, kind varchar not null,
            dtype varchar not null, shape integer[], numbers double[], strings varchar[],
            created_at timestamptz not null,
            primary key (model_fingerprint, dataset_fingerprint, kind)
        );
        """,
    ),
    (
        "parameters in SQL",
        # Two [[probes]] entries of one probe that differ only in parameters are different measurements:
        # each result keeps its parameters' fingerprint (audit.specs.params_fingerprint: the first 16 hex
        # digits of the SHA-256 of the stored params JSON, computed here in SQL for older results) and the
        # label of the entry that computed it. `metrics` gains both as its last columns (existing columns
        # unchanged), and `latest_metrics` keeps one row per (probe, parameters, model, dataset, metric).
        # Each result also counts its metric and array rows (n_metrics, n_arrays): a result whose rows are
        # not all there (an incomplete import) is never taken for a cached success, and an export carries
        # the counts that `catalog import` checks.
        """
        alter table results add column params_fingerprint varchar;
        alter table results add column entry varchar;
        alter table results add column n_metrics integer;
        alter table results add column n_arrays integer;
        update results set params_fingerprint = left(sha256(coalesce(params::varchar, '{}')), 16), entry = probe,
            n_metrics = (select count(*) from metric_values m where m.result_id = results.result_id),
            n_arrays = (select count(*) from arrays a where a.result_id = results.result_id);
        create or replace view metrics as
            select r.run_id, r.result_id, r.probe,
                   coalesce(m.model, array_to_string(r.models, ',')) as model,
                   coalesce(m.dataset, array_to_string(r.datasets, ',')) as dataset,
                   m.metric, m.value, r.created_at, r.probe_version,
                   r.params_fingerprint, r.entry, r.params
            from metric_values m join results r using (result_id)
            where r.status = 'ok';
        create or replace view latest_metrics as
            select * from metrics
            qualify row_number() over (
                partition by probe, params_fingerprint, model, dataset, metric order by created_at desc
            ) = 1;
        """,
    ),
    (
        "reuse and accepted baselines",
        # Regression gates compare a pull request's results with what main accepted (audit.history).
        # `run_reuses`: the stored results a run reused instead of computing them (one row per reused job),
        # so that "the results of run X" can mean what the run used, computed (results.run_id) or reused; a
        # run on main that recomputes only the changed checkpoint must still be acceptable as a whole.
        # `accepted`: `audit accept --as NAME` adds one row per result under a new acceptance_id; a later
        # acceptance of the same name wins (view `latest_accepted`) and the earlier ones stay, as every
        # row of the catalog does. git_commit is HEAD of the config's folder when it was accepted.
        # `run_results`: what each run used, computed or reused, for queries and reports.
        """
        create table run_reuses (run_id varchar not null, result_id varchar not null);
        create table accepted (
            name varchar not null, acceptance_id varchar not null, result_id varchar not null,
            accepted_at timestamptz not null, run_id varchar, git_commit varchar, note varchar
        );
        create view latest_accepted as
            select a.name, a.acceptance_id, a.accepted_at, a.run_id, a.git_commit, a.note, a.result_id,
                   r.probe, r.entry, r.params_fingerprint, r.models, r.datasets
            from (
                select * from accepted
                qualify dense_rank() over (partition by name order by accepted_at desc, acceptance_id desc) = 1
            ) a left join results r using (result_id);
        create view run_results as
            select run_id, result_id, 'computed' as how from results where status = 'ok'
            union all
            select u.run_id, u.result_id, 'reused' as how from run_reuses u;
        """,
    ),
]
