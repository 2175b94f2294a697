"""Executors under load and under faults: every job's result present exactly once, whatever was killed.

Real `audit run` processes, real worker processes (the local pool) and a real local Ray instance, with the
`chaos` probe of tests/chaos_plugin.py injecting the faults: a worker SIGKILLed mid-job (once, or every
time), the driver SIGKILLed mid-run, a probe that raises, a simulated CUDA out-of-memory error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from audit.catalog.store import Catalog
from chaos_plugin import chaos_project, install_chaos_plugin
from conftest import SUBPROCESS_ENV, audit_cli, run_audit

N_LOAD = 200


@pytest.fixture(scope="module")
def chaos_env(tmp_path_factory) -> dict[str, str]:
    site = install_chaos_plugin(tmp_path_factory.mktemp("chaos-site"))
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def rows(config: Path, sql: str, env) -> list[dict]:
    """A query on the run's catalog (in this process: reading needs no plugin)."""
    r = audit_cli("query", sql, "--format", "json", "--config", str(config))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def results_by_key(config: Path, env) -> dict[int, list[dict]]:
    """Every result row of the chaos probe grouped by its job id k (from the stored metric)."""
    found = rows(
        config,
        "select r.result_id, r.status, r.error, r.warnings, r.cache_key, "
        "(select value from metric_values m where m.result_id = r.result_id and m.metric = 'k') as k, "
        "(select value from metric_values m where m.result_id = r.result_id and m.metric = 'pid') as pid, "
        "(select value from metric_values m where m.result_id = r.result_id and m.metric = 'batch_size') as bs "
        "from results r",
        env,
    )
    by: dict[int, list[dict]] = {}
    for r in found:
        by.setdefault(-1 if r["k"] is None else int(r["k"]), []).append(r)
    return by


def assert_each_exactly_once(config: Path, env, n: int) -> dict[int, list[dict]]:
    by = results_by_key(config, env)
    ok = {k: v for k, v in by.items() if k >= 0}
    assert sorted(ok) == list(range(n)) if not by.get(-1) else True
    keys = rows(config, "select cache_key, count(*) as c from results group by cache_key having c > 1", env)
    assert keys == []  # no job recorded twice
    return by


# ------------------------------------------------------------------------------------------------ load


@pytest.mark.slow  # real `audit run` processes and worker pools
def test_local_pool_runs_200_jobs_each_exactly_once_and_a_rerun_reuses_them(tmp_path, chaos_env, device):
    config = chaos_project(tmp_path / "p", ["ok"] * N_LOAD)
    # on CUDA the pool's two workers both take the one GPU (--workers cycles the visible GPUs)
    ran = run_audit("run", "--config", str(config), "--workers", "2", "--device", str(device), env=chaos_env)
    assert ran.returncode == 0, ran.stderr
    assert f"{N_LOAD} computed, 0 reused" in ran.stderr and "via local" in ran.stderr
    by = assert_each_exactly_once(config, chaos_env, N_LOAD)
    assert len({int(v[0]["pid"]) for v in by.values()}) == 2  # two worker processes shared the jobs
    again = run_audit("run", "--config", str(config), env=chaos_env)
    assert again.returncode == 0 and f"0 computed, {N_LOAD} reused" in again.stderr


@pytest.mark.slow  # real `audit run` processes and worker pools
def test_ray_runs_200_jobs_each_exactly_once(tmp_path, chaos_env):
    pytest.importorskip("ray")
    executor = '[executor]\nname = "ray"\nnum_cpus = 2\n'
    config = chaos_project(tmp_path / "p", ["ok"] * N_LOAD, executor=executor)
    ran = run_audit("run", "--config", str(config), env=chaos_env, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert f"{N_LOAD} computed, 0 reused" in ran.stderr and "via ray" in ran.stderr
    by = assert_each_exactly_once(config, chaos_env, N_LOAD)
    assert all(v[0]["status"] == "ok" for v in by.values())


# ---------------------------------------------------------------------------------------------- faults


@pytest.mark.slow  # real `audit run` processes and worker pools
def test_a_worker_killed_mid_job_is_retried_and_one_that_keeps_dying_is_recorded(tmp_path, chaos_env, device):
    modes = ["ok", "kill_once", "ok", "kill_always", "raise", "ok"]
    config = chaos_project(tmp_path / "p", modes)
    ran = run_audit("run", "--config", str(config), "--workers", "2", "--device", str(device), env=chaos_env)
    assert ran.returncode == 1  # a job recorded an error; every other job still ran
    assert "retry" in ran.stderr and "SIGKILL" in ran.stderr
    by = results_by_key(config, chaos_env)
    assert sorted(k for k in by if k >= 0) == [0, 1, 2, 5]  # kill_once succeeded on its retry
    assert all(len(v) == 1 and v[0]["status"] == "ok" for k, v in by.items() if k >= 0)
    errors = rows(config, "select error from results where status = 'error' order by error", chaos_env)
    assert len(errors) == 2
    assert errors[0]["error"].startswith("RuntimeError: deliberate failure of job 4")
    assert "WorkerDied" in errors[1]["error"] and "3 attempt(s)" in errors[1]["error"]
    starts = sorted(p.name for p in (tmp_path / "p" / "markers").glob("start-3-*"))
    assert len(starts) == 3  # the first try and max_retries = 2 retries, each in a fresh worker
    keys = rows(config, "select cache_key, count(*) as c from results group by cache_key having c > 1", chaos_env)
    assert keys == []


@pytest.mark.slow  # real `audit run` processes and worker pools
def test_ray_retries_a_killed_worker(tmp_path, chaos_env):
    pytest.importorskip("ray")
    executor = '[executor]\nname = "ray"\nnum_cpus = 2\nmax_retries = 1\n'
    config = chaos_project(tmp_path / "p", ["ok", "kill_once", "kill_always"], executor=executor)
    ran = run_audit("run", "--config", str(config), env=chaos_env, timeout=600)
    assert ran.returncode == 1
    by = results_by_key(config, chaos_env)
    assert sorted(k for k in by if k >= 0) == [0, 1]
    errors = rows(config, "select error from results where status = 'error'", chaos_env)
    assert len(errors) == 1 and "WorkerDied" in errors[0]["error"]


@pytest.mark.slow  # real `audit run` processes and worker pools
def test_out_of_memory_retries_with_a_smaller_batch(tmp_path, chaos_env, device):
    config = chaos_project(tmp_path / "p", ["oom", "ok"])
    ran = run_audit("run", "--config", str(config), "--workers", "1", "--device", str(device), env=chaos_env)
    assert ran.returncode == 0, ran.stderr
    by = assert_each_exactly_once(config, chaos_env, 2)
    assert by[0][0]["bs"] == 8.0  # 64 → 32 → 16 → 8
    assert len(by[0][0]["warnings"]) == 3 and "batch_size = 64; retried with batch_size = 32" in by[0][0]["warnings"][0]
    assert by[1][0]["bs"] == 64.0


@pytest.mark.slow  # real `audit run` processes and worker pools
def test_killing_the_driver_leaves_no_orphan_workers_and_the_rerun_completes(tmp_path, chaos_env):
    config = chaos_project(tmp_path / "p", ["ok"] * 12, sleep=0.6)
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit.face.cli", "run", "--config", str(config), "--workers", "2"],
        env={**SUBPROCESS_ENV, **chaos_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    catalog = Catalog(tmp_path / "p" / ".audit" / "catalog.duckdb", wait_s=30)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None and done < 3:
        time.sleep(0.2)
        if catalog.path.exists():
            try:
                done = catalog.query("select count(*) from results")[1][0][0]
            except Exception:
                continue
    assert proc.poll() is None and 3 <= done < 12, "the run should be killed part-way"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    markers = tmp_path / "p" / "markers"
    pids = {int(p.name.rsplit("-", 1)[1]) for p in markers.glob("start-*")}
    time.sleep(1.0)
    alive = [pid for pid in pids if _alive(pid)]
    assert alive == [], f"worker processes outlived the killed driver: {alive}"
    rerun = run_audit("run", "--config", str(config), env=chaos_env)
    assert rerun.returncode == 0, rerun.stderr
    by = assert_each_exactly_once(config, chaos_env, 12)
    assert all(len(v) == 1 for v in by.values())
    runs = rows(config, "select status from run_summary order by started_at", chaos_env)
    assert [r["status"] for r in runs] == ["interrupted", "ok"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not running
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --------------------------------------------------------------------------------- devices of a pool


class _RecordingPool:
    """Stands in for the local executor's process pool: records the devices it was given."""

    seen: ClassVar[list[list[str]]] = []

    def __init__(self, devices, threads, max_retries, events):
        self.devices = devices

    def run(self, specs):
        _RecordingPool.seen.append(list(self.devices))


@pytest.mark.parametrize(
    ("driver", "gpus", "workers", "expected"),
    [
        ("cuda", 3, 0, ["cuda:0", "cuda:1", "cuda:2"]),  # one worker per visible GPU
        ("cuda:1", 3, 0, ["cuda:1"]),  # --device cuda:N: that GPU alone
        ("cuda", 2, 3, ["cuda:0", "cuda:1", "cuda:0"]),  # --workers cycles the GPUs
        ("cpu", 3, 2, ["cpu", "cpu"]),  # a CPU run ignores the GPUs
    ],
)
def test_the_local_pool_puts_one_worker_on_each_visible_gpu(monkeypatch, driver, gpus, workers, expected):
    import torch

    from audit.run import executors

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(executors, "_Pool", _RecordingPool)
    _RecordingPool.seen = []
    local = executors.LocalExecutor()
    options = local.validate_options({"workers": workers})
    info = executors.DriverInfo(torch.device(driver), None)
    local.run([object()] * 4, None, options, info)
    assert _RecordingPool.seen == [expected]


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("args", "table", "message"),
    [
        (["--executor", "warp"], "", "--executor: unknown executor 'warp' (installed: inline, local"),
        ([], '[executor]\nname = "local"\nworkerz = 2\n', "audit.toml: executor.workerz: unknown option 'workerz'"),
        ([], '[executor]\nname = "local"\nworkers = -1\n', "audit.toml: executor.workers: expected a value >= 0"),
        (["--address", "auto"], "", "--address: the 'local' executor has no 'address' option"),
        (["--partition", "3/2"], "", "--partition: expected K/N with 1 <= K <= N"),
    ],
)
def test_executor_errors_are_one_line_exit_2(mini_project, args, table, message):
    config = mini_project / "audit.toml"
    config.write_text(config.read_text() + "\n" + table)  # a table after the [[gates]]: still top level
    ran = audit_cli("run", "--config", str(config), *args)
    assert ran.returncode == 2
    assert len(ran.stderr.strip().splitlines()) == 1 and message in ran.stderr, ran.stderr
    assert not (mini_project / ".audit").exists()  # nothing ran, nothing written


@pytest.mark.slow  # real `audit run` processes and worker pools
def test_partitions_split_the_jobs_exactly_once(tmp_path, chaos_env):
    config = chaos_project(tmp_path / "p", ["ok"] * 30)
    seen: list[int] = []
    for k in (1, 2, 3):
        catalog = tmp_path / f"part{k}.duckdb"
        ran = run_audit(
            "run", "--config", str(config), "--partition", f"{k}/3", "--catalog", str(catalog), "-x", "inline",
            env=chaos_env,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        got = Catalog(catalog).query("select value from metric_values where metric = 'k'")[1]
        seen += [int(r[0]) for r in got]
        exported = audit_cli("catalog", "export", str(tmp_path / f"shard{k}"), "--catalog", str(catalog))
        assert exported.returncode == 0, exported.stderr
    assert sorted(seen) == list(range(30))
    # separate storage: each node exported its catalog; the shards merge into one, idempotently
    merged = tmp_path / "merged.duckdb"
    shards = [str(tmp_path / f"shard{k}") for k in (1, 2, 3)]
    for _ in range(2):  # importing the same shards twice changes nothing
        imported = audit_cli("catalog", "import", *shards, "--catalog", str(merged))
        assert imported.returncode == 0, imported.stderr
        counts = Catalog(merged).query(
            "select count(*), count(distinct cache_key), count(distinct run_id) from results"
        )[1]
        assert counts == [(30, 30, 3)]


def test_audit_executors_lists_the_builtins_and_their_options():
    listed = audit_cli("executors", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    found = {e["name"]: e for e in json.loads(listed.stdout)}
    assert {"inline", "local", "ray"} <= set(found)
    assert {o["name"] for o in found["local"]["options"]} == {"workers", "threads", "max_retries"}
    assert "address" in {o["name"] for o in found["ray"]["options"]}
