"""Benchmark of the executors: many small jobs through `inline` (serial), the `local` pool and a local Ray.

Why it measures what it measures:

* The unit is a whole `audit run` as a user starts it (a subprocess: config parsing, fingerprints, the
  catalog writes of every result, worker start-up), on jobs of a known cost from the `chaos` test probe
  (tests/chaos_plugin.py): each job does `--work` seconds of busy CPU work (``spin``) or of waiting
  (``sleep``: a job blocked on I/O or a GPU), and returns three metrics.
* Each executor runs N1 and N2 jobs (default 20 and 200). The slope (t(N2) − t(N1))/(N2 − N1) is the cost per
  job and the intercept the fixed cost (start-up), so start-up does not pollute the per-job figure. The
  scheduling overhead per job is the slope minus the job's own work divided by the parallelism.
  Speed-up over serial is t_inline(N2)/t(N2).
* Threads are pinned to 1 everywhere; the local pool and Ray get 2 workers / 2 CPUs (this machine has 2 cores).
  The load average is printed before and after: a busy machine inflates every figure.

Run: python benchmarks/bench_executors.py   (about 5 minutes on 2 idle cores; --help for sizes)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from chaos_plugin import chaos_project, install_chaos_plugin  # noqa: E402

EXECUTORS = {
    "inline": ("", 1),
    "local": ('[executor]\nname = "local"\nworkers = 2\nthreads = 1\n', 2),
    "ray": ('[executor]\nname = "ray"\nnum_cpus = 2\n', 2),
}


def timed_run(folder: Path, n: int, executor: str, kind: str, work: float, env: dict[str, str]) -> float:
    table, _ = EXECUTORS[executor]
    config = chaos_project(folder, ["ok"] * n, executor=table, **{kind: work})
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "audit.face.cli", "run", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0 or f"{n} computed" not in done.stderr:
        raise SystemExit(f"{executor} run of {n} jobs failed:\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs=2, default=(20, 200), help="the two job counts")
    ap.add_argument("--work", type=float, default=0.05, help="seconds of work per job")
    ap.add_argument("--kind", choices=("spin", "sleep"), nargs="+", default=["spin", "sleep"])
    ap.add_argument("--executors", nargs="+", default=list(EXECUTORS), choices=list(EXECUTORS))
    args = ap.parse_args()
    executors = [e for e in args.executors if e != "ray" or importlib.util.find_spec("ray")]
    n1, n2 = args.n
    site = install_chaos_plugin(Path(tempfile.mkdtemp(prefix="bench-chaos-")))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "NO_COLOR": "1",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    }
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; work {args.work * 1e3:g} ms/job")
    for kind in args.kind:
        print(f"\njobs that {'compute' if kind == 'spin' else 'wait'} {args.work * 1e3:g} ms each")
        print(
            f"  {'executor':8} {'t(' + str(n1) + ')':>8} {'t(' + str(n2) + ')':>8} {'jobs/s':>7} "
            f"{'per job':>9} {'overhead/job':>13} {'fixed':>7} {'speed-up':>9}"
        )
        serial = None
        for name in executors:
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                t1 = timed_run(Path(tmp) / "a", n1, name, kind, args.work, env)
                t2 = timed_run(Path(tmp) / "b", n2, name, kind, args.work, env)
            slope = (t2 - t1) / (n2 - n1)
            fixed = t1 - slope * n1
            parallel = EXECUTORS[name][1]
            overhead = slope - args.work / parallel
            serial = serial or (t2 if name == "inline" else None)
            speed = f"{serial / t2:8.2f}×" if serial else "      —"
            print(
                f"  {name:8} {t1:7.1f}s {t2:7.1f}s {n2 / t2:7.1f} {slope * 1e3:7.1f}ms {overhead * 1e3:11.1f}ms "
                f"{fixed:6.1f}s {speed}"
            )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
