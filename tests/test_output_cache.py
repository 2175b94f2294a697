"""The catalog-backed cache of model outputs (Context.model_outputs): bit-exact, keyed by content, reused
across jobs and runs without loading the model, bypassed by --force, safe under concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import duckdb
import numpy as np
import pytest
import torch

import audit.catalog.store
from audit.api.context import OUTPUTS_KIND, Context, DatasetHandle, ModelHandle
from audit.api.probe import Needs, Param, Probe, ProbeResult
from audit.catalog.migrations import MIGRATIONS
from audit.catalog.store import Catalog, CatalogOutputCache
from audit.config import load_config
from audit.registry import installed_probes
from audit.run import sources
from audit.run.executors import Executor
from audit.run.plan import plan
from audit.run.runner import Runner
from audit.run.worker import WorkerState, execute
from conftest import stored_result

CPU = torch.device("cpu")
VERSION = next(i for i, (name, _) in enumerate(MIGRATIONS, start=1) if name == "model outputs cache")


def mlp(seed: int, d_in: int = 8, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, 16), torch.nn.Tanh(), torch.nn.Linear(16, classes)
    ).eval()


def data(seed: int, n: int = 70, d_in: int = 8, targets: bool = True) -> sources.ArrayData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in)).astype(np.float32)
    y = rng.integers(0, 3, size=n) if targets else None
    return sources.ArrayData(f"data{seed}", x, y, f"dfp{seed}", "classification" if targets else None)


def dataset_handle(d: sources.ArrayData) -> DatasetHandle:
    return DatasetHandle(d.name, d.fingerprint, d.n, d.task, d.targets is not None, d.batches)


def model_handle(
    name: str, fp: str, module: torch.nn.Module | None, loads: list[str], device: torch.device | str = CPU
) -> ModelHandle:
    def loader() -> torch.nn.Module:
        loads.append(name)
        if module is None:
            raise AssertionError(f"model {name} must not be loaded")
        return module.to(device)

    return ModelHandle(name, fp, loader)


# ------------------------------------------------------------------ catalog


def test_outputs_round_trip_bit_exact(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    assert cat.cached_outputs("m", "d", OUTPUTS_KIND) is None  # no catalog file yet
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38, -1.1, 0.0], np.float32)
    logits = np.random.default_rng(0).normal(size=(257, 10)).astype(np.float32)
    logits[0, :8] = special
    wide = np.random.default_rng(1).normal(size=(5, 3)) * 1e-300  # float64 and denormal-ish values too
    assert cat.store_outputs("m", "d", OUTPUTS_KIND, logits)
    assert cat.store_outputs("m", "d", "other", wide)
    back = cat.cached_outputs("m", "d", OUTPUTS_KIND)
    assert back.dtype == np.float32 and back.shape == (257, 10)
    assert back.tobytes() == logits.tobytes()  # every bit, sign of zero and NaN included
    assert cat.cached_outputs("m", "d", "other").tobytes() == wide.tobytes()
    assert cat.cached_outputs("m", "d2", OUTPUTS_KIND) is None
    assert cat.cached_outputs("m2", "d", OUTPUTS_KIND) is None


def test_store_is_idempotent_and_replace_replaces(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb")
    first, second = np.ones((4, 2), np.float32), np.full((4, 2), -0.0, np.float32)
    assert cat.store_outputs("m", "d", OUTPUTS_KIND, first) is True
    assert cat.store_outputs("m", "d", OUTPUTS_KIND, second) is False  # kept, not overwritten
    assert cat.query("select count(*) from model_outputs")[1] == [(1,)]
    assert cat.cached_outputs("m", "d", OUTPUTS_KIND).tobytes() == first.tobytes()
    assert cat.store_outputs("m", "d", OUTPUTS_KIND, second, replace=True) is True
    assert cat.query("select count(*) from model_outputs")[1] == [(1,)]
    assert cat.cached_outputs("m", "d", OUTPUTS_KIND).tobytes() == second.tobytes()


STORE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from audit.catalog.store import Catalog
    path, go, i = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    cat = Catalog(path, wait_s=120)
    while not go.exists():
        time.sleep(0.005)
    shared = np.arange(600, dtype=np.float32).reshape(200, 3) + i  # same key, different values
    own = np.full((10, 2), i, dtype=np.float32)
    written = cat.store_outputs("model", "data", "outputs", shared)
    cat.store_outputs(f"model{i}", "data", "outputs", own)
    print(int(written))
    """
)


def test_concurrent_stores_keep_one_row_per_key_and_all_writers_succeed(tmp_path):
    path, go = tmp_path / "c.duckdb", tmp_path / "go"
    Catalog(path).store_outputs("seed", "data", "outputs", np.zeros((1, 1), np.float32))  # file migrated
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STORE, str(path), str(go), str(i)], stdout=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    time.sleep(1.0)  # let every interpreter start and wait for the signal
    go.touch()
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert sorted(int(o.strip()) for o in outs) == [0, 0, 0, 1]  # exactly one writer stored the shared key
    cat = Catalog(path)
    rows = cat.query("select model_fingerprint, count(*) from model_outputs group by all order by 1")[1]
    assert rows == [("model", 1), *((f"model{i}", 1) for i in range(4)), ("seed", 1)]
    shared = cat.cached_outputs("model", "data", "outputs")
    assert shared.shape == (200, 3) and len(set((shared - np.arange(600).reshape(200, 3)).ravel())) == 1


def test_migration_applies_on_a_catalog_of_the_previous_schema(tmp_path, monkeypatch):
    path = tmp_path / "c.duckdb"
    monkeypatch.setattr(audit.catalog.store, "MIGRATIONS", MIGRATIONS[: VERSION - 1])
    # the columns of `results` at that schema version (later migrations add columns at the end)
    monkeypatch.setattr(audit.catalog.store, "_RESULT_COLUMNS", audit.catalog.store._RESULT_COLUMNS[:16])
    monkeypatch.setattr(audit.catalog.store, "_COMPLETE", "status = 'ok'")
    old = Catalog(path)
    run = old.start_run({"tool_version": "old"})
    rid, _ = old.record_result(
        stored_result(run, metrics=[("x", 2.5, None, None)], arrays={"a": np.arange(3.0)})
    )
    assert old.query("select max(version) from schema_migrations")[1] == [(VERSION - 1,)]
    assert old.cached_outputs("m", "d", OUTPUTS_KIND) is None  # the table is not there yet: a miss
    monkeypatch.undo()

    new = Catalog(path)
    assert new.cached_outputs("fpm", "fpd", OUTPUTS_KIND) is None  # read before any write migrated it
    assert new.store_outputs("fpm", "fpd", OUTPUTS_KIND, np.eye(3, dtype=np.float32))
    assert new.query("select version, name from schema_migrations where version = ?", [VERSION])[1] == [
        (VERSION, "model outputs cache")
    ]
    cols = [r[0] for r in new.query("describe model_outputs")[1]]
    assert cols[:3] == ["model_fingerprint", "dataset_fingerprint", "kind"] and "created_at" in cols
    assert new.query("select metric, value from metrics")[1] == [("x", 2.5)]  # old results untouched
    np.testing.assert_array_equal(new.load_arrays(rid)["a"], np.arange(3.0))
    np.testing.assert_array_equal(new.cached_outputs("fpm", "fpd", OUTPUTS_KIND), np.eye(3))
    with duckdb.connect(str(path), read_only=True) as con:  # the key is a real primary key
        pk = con.execute(
            "select constraint_column_names from duckdb_constraints() "
            "where table_name = 'model_outputs' and constraint_type = 'PRIMARY KEY'"
        ).fetchall()
    assert pk == [(["model_fingerprint", "dataset_fingerprint", "kind"],)]


# ------------------------------------------------------------------ context


def test_context_without_a_cache_computes_every_time(device):
    class TupleOut(torch.nn.Module):  # (n, 2, 3) output inside a tuple: flattened to (n, 6)
        def forward(self, x):
            return (x[:, :6].reshape(-1, 2, 3) * 2.0, x)

    d = data(0, n=70)
    loads: list[str] = []
    steps: list[tuple[float, str, float]] = []

    class Bar:
        def __init__(self, total, description):
            self.entry = [total, description, 0.0]
            steps.append(self.entry)

        def advance(self, n=1):
            self.entry[2] += n

    model = mlp(0)
    with torch.no_grad():
        expected = model(torch.from_numpy(np.asarray(d.inputs))).numpy()  # on the CPU
    ctx = Context([], [], torch.device(device), seed=0, progress_factory=Bar)
    handle = model_handle("a", "fpa", model, loads, device)
    out, y = ctx.model_outputs(handle, dataset_handle(d), batch_size=32)
    assert out.dtype == np.float32 and out.shape == (70, 3)
    # float32 against the CPU's float32: sums of 8 and 16 products of O(1) values, rounded differently by
    # cuBLAS: at most ~24 · 2⁻²⁴ ≈ 1.5e-6 apart
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(y, d.targets)
    again, _ = ctx.model_outputs(handle, dataset_handle(d), batch_size=32)
    np.testing.assert_array_equal(again, out)
    assert (ctx.output_cache_hits, ctx.output_cache_misses) == (0, 2) and loads == ["a"]  # loaded once
    assert steps[0][:2] == [70, "outputs a on data0"] and all(s[2] == 70 for s in steps)

    flat, none = ctx.model_outputs(
        model_handle("t", "fpt", TupleOut(), loads, device), dataset_handle(data(1, targets=False))
    )
    assert flat.shape == (70, 6) and none is None
    np.testing.assert_allclose(flat, np.asarray(data(1).inputs)[:, :6] * 2.0)


def test_a_cache_hit_is_bit_exact_and_does_not_load_the_model(tmp_path, device):
    cat = Catalog(tmp_path / "c.duckdb")
    d, other = data(0, n=70), data(1, n=70)
    loads: list[str] = []
    # computed on the device, served to a CPU job: the key holds no device (see Context.model_outputs)
    first = Context([], [], torch.device(device), seed=0, output_cache=CatalogOutputCache(cat))
    out, y = first.model_outputs(
        model_handle("a", "fpa", mlp(0), loads, device), dataset_handle(d), batch_size=16
    )
    assert (first.output_cache_hits, first.output_cache_misses) == (0, 1) and loads == ["a"]

    second = Context([], [], CPU, seed=1, output_cache=CatalogOutputCache(cat))  # another job
    unloadable = model_handle("a", "fpa", None, loads)
    hit, hit_y = second.model_outputs(unloadable, dataset_handle(d), batch_size=64)
    assert hit.tobytes() == out.tobytes() and hit.dtype == np.float32
    np.testing.assert_array_equal(hit_y, y)
    assert unloadable._module is None and loads == ["a"]
    assert (second.output_cache_hits, second.output_cache_misses) == (1, 0)

    # another dataset fingerprint, or another model fingerprint, is a miss (and then a hit)
    second.model_outputs(model_handle("a", "fpa", mlp(0), loads), dataset_handle(other))
    second.model_outputs(model_handle("a2", "fpa2", mlp(0), loads), dataset_handle(d))
    assert (second.output_cache_hits, second.output_cache_misses) == (1, 2) and loads == ["a", "a", "a2"]
    third = Context([], [], CPU, seed=2, output_cache=CatalogOutputCache(cat))
    for fp, ds in (("fpa", other), ("fpa2", d)):
        third.model_outputs(model_handle("x", fp, None, loads), dataset_handle(ds))
    assert (third.output_cache_hits, third.output_cache_misses) == (2, 0)
    assert cat.query("select count(*) from model_outputs")[1] == [(3,)]


def test_refresh_recomputes_once_and_replaces(tmp_path, device):
    cat = Catalog(tmp_path / "c.duckdb")
    d, loads = dataset_handle(data(0)), []
    cat.store_outputs("fpa", d.fingerprint, OUTPUTS_KIND, np.zeros((d.n, 3), np.float32))  # a stale row
    cache = CatalogOutputCache(cat, refresh=True)
    ctx = Context([], [], torch.device(device), seed=0, output_cache=cache)
    out, _ = ctx.model_outputs(model_handle("a", "fpa", mlp(0), loads, device), d)
    assert loads == ["a"] and np.abs(out).sum() > 0
    later = Context([], [], CPU, seed=0, output_cache=cache)  # a later job of the same --force run
    again, _ = later.model_outputs(model_handle("a", "fpa", None, loads), d)
    assert again.tobytes() == out.tobytes() and later.output_cache_hits == 1
    assert cat.cached_outputs("fpa", d.fingerprint, OUTPUTS_KIND).tobytes() == out.tobytes()


# ------------------------------------------------------------------ runner


class EnsembleOutputs(Probe):
    """A test probe over any number of models: per model, its output sum and whether it was loaded."""

    name = "ensemble_outputs"
    version = "1"
    description = "test probe"
    params = (Param("batch_size", int, 16),)
    needs = Needs(models=(1, None), datasets=(1, 1))

    def run(self, ctx, params):
        result = ProbeResult()
        for m in ctx.models:
            out, y = ctx.model_outputs(m, ctx.datasets[0], params["batch_size"])
            result.metric("output_sum", float(out.astype(np.float64).sum()), model=m.name)
            result.metric("loaded", float(m._module is not None), model=m.name)
            result.metric("target_sum", float(y.sum()))
        result.metric("hits", ctx.output_cache_hits)
        result.metric("misses", ctx.output_cache_misses)
        return result


MODELS_PY = """
import torch

def mlp(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
"""


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    (root / "models").mkdir(parents=True)
    (root / "outcache_models.py").write_text(MODELS_PY)
    for i, name in enumerate(("ref_a", "ref_b", "cand")):
        torch.save(mlp(10 + i).state_dict(), root / "models" / f"{name}.pt")
    rng = np.random.default_rng(0)
    np.savez(root / "test.npz", x=rng.normal(size=(90, 8)).astype(np.float32), y=rng.integers(0, 3, 90))
    return root


def write_config(root, entries: list[list[str]]):
    text = 'catalog = "c.duckdb"\nseed = 0\n'
    for name in ("ref_a", "ref_b", "cand"):
        text += f'[models.{name}]\nfactory = "outcache_models:mlp"\nkwargs = {{ seed = 0 }}\n'
        text += f'weights = "models/{name}.pt"\n'
    text += '[datasets.test]\npath = "test.npz"\ninputs = "x"\ntargets = "y"\n'
    for models in entries:
        text += f'[[probes]]\nprobe = "ensemble_outputs"\nmodels = {models!r}\ndatasets = ["test"]\n'
    text = text.replace("'", '"')
    (root / "audit.toml").write_text(text)
    probes = {**installed_probes(), "ensemble_outputs": EnsembleOutputs()}
    config = load_config(root / "audit.toml", probes)
    return config, plan(config, probes)


def run_jobs(root, entries, force=False, executor=None, device=CPU):
    config, jobs = write_config(root, entries)
    runner = Runner(config, Catalog(root / "c.duckdb"), torch.device(device), force=force)
    summary = runner.run(jobs, ["audit", "run"], executor=executor)
    assert [o.status for o in summary.outcomes] == ["ok"] * len(jobs), [o.error for o in summary.outcomes]
    by_result: list[dict] = []
    for o in summary.outcomes:
        _, rows = runner.catalog.query(
            "select metric, model, value from metric_values where result_id = ?", [o.result_id]
        )
        by_result.append({(metric, model): value for metric, model, value in rows})
    return by_result


def test_a_job_with_one_more_model_reuses_the_others_outputs(project, monkeypatch, device):
    loads: list[str] = []
    real_load = sources.load_model

    def counting_load(spec, root, device):
        loads.append(spec.name)
        return real_load(spec, root, device)

    monkeypatch.setattr(sources, "load_model", counting_load)

    (first,) = run_jobs(project, [["ref_a", "ref_b"]], device=device)
    # models the catalog has never seen run are built once by the driver before the run starts (an input
    # error must leave no trace), then once by the job
    assert sorted(loads) == ["ref_a", "ref_a", "ref_b", "ref_b"]
    assert (first["hits", None], first["misses", None]) == (0, 2)

    # the candidate joins the ensemble: a new job (new cache key), but only the candidate runs
    loads.clear()
    (second,) = run_jobs(project, [["ref_a", "ref_b", "cand"]], device=device)
    assert loads == ["cand", "cand"]  # the driver's check of the new model, then the job; ref_a/ref_b: never
    assert (second["hits", None], second["misses", None]) == (2, 1)
    assert second["loaded", "ref_a"] == second["loaded", "ref_b"] == 0.0 and second["loaded", "cand"] == 1.0
    for m in ("ref_a", "ref_b"):
        assert second["output_sum", m] == first["output_sum", m]  # the same bits
    assert second["target_sum", None] == first["target_sum", None]

    # --force: the stored outputs are not read; each model runs once in the run, later jobs reuse it
    loads.clear()
    forced = run_jobs(project, [["ref_a", "ref_b"], ["ref_a", "ref_b", "cand"]], force=True, device=device)
    assert sorted(loads) == ["cand", "ref_a", "ref_b"]
    assert [(r["hits", None], r["misses", None]) for r in forced] == [(0, 2), (2, 1)]
    assert forced[1]["output_sum", "cand"] == second["output_sum", "cand"]
    _, rows = Catalog(project / "c.duckdb").query("select count(*) from model_outputs")
    assert rows == [(3,)]


class SeparateWorker(Executor):
    """Runs each job with a worker state of its own, as a worker process would: cached outputs arrive with the
    job (the driver read them from the catalog) and new ones travel back in the report for the driver to store."""

    name = "separate"
    description = "a worker without the driver's catalog cache (in process, for tests)"

    def __init__(self) -> None:
        self.sent: list[int] = []  # how many cached outputs each job carried

    def run(self, specs, events, options, driver):
        state = WorkerState("separate")
        state.probes = driver.inline_state.probes  # the test's probe is not installed: hand it over
        for spec in specs:
            self.sent.append(len(spec.outputs))
            events.started(spec, state.name)
            events.finished(execute(spec, state))


def test_a_worker_reads_cached_outputs_and_sends_new_ones_to_the_driver(project, monkeypatch, device):
    loads: list[str] = []
    real_load = sources.load_model
    monkeypatch.setattr(
        sources,
        "load_model",
        lambda spec, root, device: loads.append(spec.name) or real_load(spec, root, device),
    )

    executor = SeparateWorker()
    (first,) = run_jobs(project, [["ref_a", "ref_b"]], executor=executor, device=device)
    assert (first["hits", None], first["misses", None]) == (0, 2)
    _, rows = Catalog(project / "c.duckdb").query("select count(*) from model_outputs")
    assert rows == [(2,)]  # stored by the driver from the report
    loads.clear()
    (second,) = run_jobs(project, [["ref_a", "ref_b", "cand"]], executor=executor, device=device)
    assert executor.sent == [0, 2]  # the second job carried the two stored outputs; the worker opened nothing
    assert loads == ["cand", "cand"] and (second["hits", None], second["misses", None]) == (2, 1)
    for m in ("ref_a", "ref_b"):
        assert second["output_sum", m] == first["output_sum", m]
