"""Benchmark of the layer×layer minibatch CKA matrix: model-audit's `MinibatchCKA` against PyPI peers.

Why it measures what it measures:

* The unit of work is what a user asks for: the full L×L CKA matrix of one model's hooked layers over a
  data set, forward passes included, each implementation driven through its own public API (hooks +
  DataLoader). The forward passes are part of every timing; the two-model peer APIs run the model twice
  per batch because that is what their API costs a user comparing a model with itself.
* Minibatch CKA (Nguyen, Raghu & Kornblith 2021) depends on the estimator and the batch partition, so
  every peer is compared with ours run on the same estimator (all current peers use the unbiased HSIC₁)
  and the same batches (same DataLoader, same batch size, no shuffling). Then the two matrices estimate
  the same number and max |CKA_ours − CKA_peer| is a correctness check, not a modelling difference.
  A float64 run of our estimator on the same float32 features is the reference column that tells which
  side of a disagreement is the rounding error.
* Each (implementation, n) runs in a fresh subprocess with BLAS/OpenMP and torch intra-op threads pinned
  to the same value before torch is imported, so no implementation inherits another's allocator state,
  thread pool or page cache, and the peak-memory figure is that process's own: the peak resident set
  (VmHWM, reset with /proc/self/clear_refs after set-up) minus the resident set after model, data and
  imports were set up. Wall time is the best of a few repeats (fewer if one run is slow); the repeat
  count is printed.
* The model is a seeded MLP with He-initialised Linear layers whose ReLU outputs are hooked: non-negative
  activations with a large common offset are what real post-activation hooks see, and they are the case
  where an uncentred float32 HSIC loses precision.
* The machine may be shared: the CPU time other processes used during each measurement is measured from
  /proc/stat and reported, and a contended measurement is run again, so a slow row is not mistaken for a
  slow implementation.

Run: .benchvenv/bin/python benchmarks/bench_cka.py  (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import load_ours, versions


@dataclass(frozen=True)
class Impl:
    key: str
    label: str
    estimator: str  # the HSIC estimator the implementation computes: our run for comparison uses the same
    package: str | None  # PyPI distribution, None for ours
    is_ours: bool = False


IMPLS = {
    "ours-unbiased": Impl("ours-unbiased", "ours (MinibatchCKA, unbiased)", "unbiased", None, True),
    "ours-biased": Impl("ours-biased", "ours (MinibatchCKA, biased)", "biased", None, True),
    # torch-cka 0.21: Python loop over pairs, unbiased HSIC₁ per batch averaged over batches, float32.
    "torch-cka": Impl("torch-cka", "torch-cka (CKA.compare)", "unbiased", "torch-cka"),
    # cka-pytorch 1.1.3: Grams in the hooks, HSIC₁ batched over layer pairs, summed over batches, float32.
    "cka-pytorch": Impl("cka-pytorch", "cka-pytorch (CKACalculator)", "unbiased", "cka-pytorch"),
    # ckatorch 1.0.3: its minibatch CKA function `cka_batch` (HSIC₁ summed over batches, float64) on the
    # stacked per-batch features of each layer pair. Its CKA class cannot do this (see `ckatorch-class`).
    "ckatorch": Impl("ckatorch", "ckatorch (cka_batch)", "unbiased", "ckatorch"),
    # ckatorch's CKA class as documented; kept to show what it does with 2-D layer outputs.
    "ckatorch-class": Impl("ckatorch-class", "ckatorch (CKA class)", "unbiased", "ckatorch"),
}
DEFAULT_PEERS = ["torch-cka", "cka-pytorch", "ckatorch", "ckatorch-class"]


# --------------------------------------------------------------------------------------------- worker side


def proc_status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def build_model(layers: int, width: int, d_in: int, seed: int):
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    modules: list[nn.Module] = []
    fan_in = d_in
    for _ in range(layers):
        lin = nn.Linear(fan_in, width)
        with torch.no_grad():
            lin.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=gen)
            lin.bias.uniform_(-0.1, 0.1, generator=gen)
        modules += [lin, nn.ReLU()]
        fan_in = width
    model = nn.Sequential(*modules).eval()
    hooked = [str(i) for i in range(1, 2 * layers, 2)]  # the ReLU outputs
    return model, hooked


def run_ours(model, hooked, loader, estimator, gram_dtype=None):
    import torch

    hsic = load_ours("cka.hsic")
    modules = dict(model.named_modules())
    feats: list = []
    handles = [modules[name].register_forward_hook(lambda _m, _i, out: feats.append(out)) for name in hooked]
    acc = hsic.MinibatchCKA(len(hooked), estimator=estimator, gram_dtype=gram_dtype or torch.float32)
    try:
        with torch.no_grad():
            for xb, _ in loader:
                feats.clear()
                model(xb)
                acc.update(feats)
    finally:
        for h in handles:
            h.remove()
    return acc.matrix()


def run_torch_cka(model, hooked, loader):
    import torch
    from torch_cka import CKA

    cka = CKA(model, model, "mlp_a", "mlp_b", model1_layers=hooked, model2_layers=hooked, device="cpu")
    with torch.no_grad():  # compare() builds autograd graphs otherwise; every implementation runs without
        cka.compare(loader)
    return cka.export()["CKA"].numpy()


def run_cka_pytorch(model, hooked, loader):
    from cka_pytorch.cka import CKACalculator

    calc = CKACalculator(model, model, model1_layers=hooked, model2_layers=hooked, verbose=False)
    return calc.calculate_cka_matrix(loader, num_epochs=1).numpy()  # default epochs=10 would repeat the data


def run_ckatorch(model, hooked, loader):
    import torch
    from ckatorch import cka_batch

    modules = dict(model.named_modules())
    feats: dict[str, list] = {name: [] for name in hooked}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: feats[name].append(out))
        for name in hooked
    ]
    try:
        with torch.no_grad():
            for xb, _ in loader:
                model(xb)
            stacked = [torch.stack(feats[name]) for name in hooked]  # (batches, m, p): cka_batch's layout
            feats.clear()
            n_layers = len(hooked)
            out = torch.empty(n_layers, n_layers, dtype=torch.float64)
            for i in range(n_layers):  # the pair loop of ckatorch's own CKA.__call__
                for j in range(n_layers):
                    out[i, j] = cka_batch(stacked[i], stacked[j])
    finally:
        for h in handles:
            h.remove()
    return out.numpy()


def run_ckatorch_class(model, hooked, loader):
    import torch
    from ckatorch import CKA
    from torch.utils.data import DataLoader, TensorDataset

    # A one-tensor dataset: the class maps batch items onto forward()'s argument names.
    single = DataLoader(TensorDataset(loader.dataset.tensors[0]), batch_size=loader.batch_size)
    cka = CKA(model, model, layers=hooked, first_name="mlp", device="cpu")
    return cka(single, epochs=1).to(torch.float64).numpy()


RUNNERS = {
    "torch-cka": run_torch_cka,
    "cka-pytorch": run_cka_pytorch,
    "ckatorch": run_ckatorch,
    "ckatorch-class": run_ckatorch_class,
}


def worker(cfg: dict) -> int:
    # Threads were pinned through the environment by the parent before this interpreter started;
    # torch's own setting is made identical here, right after the import.
    import torch

    torch.set_num_threads(cfg["threads"])
    from torch.utils.data import DataLoader, TensorDataset

    impl = IMPLS[cfg["impl"]]
    out = Path(cfg["out"])
    emit = worker_log(out)

    if impl.is_ours:
        load_ours("cka.hsic")
    else:
        importlib.import_module(
            {"torch-cka": "torch_cka", "cka-pytorch": "cka_pytorch.cka"}.get(impl.package, impl.package)
        )

    base, hooked = build_model(cfg["layers"], cfg["width"], cfg["d_in"], cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    x = torch.randn(cfg["n"], cfg["d_in"], generator=gen)
    labels = torch.zeros(cfg["n"], dtype=torch.long)  # cka-pytorch unpacks (x, label) batches
    loader = DataLoader(TensorDataset(x, labels), batch_size=cfg["batch_size"], shuffle=False)
    # A fresh copy of the model per repeat: two peers leave their hooks registered on the model.
    models = [copy.deepcopy(base) for _ in range(cfg["repeats"])]

    gc.collect()
    rss0 = proc_status_kib("VmRSS")
    if not reset_peak_rss():
        emit({"warning": "VmHWM could not be reset; the peak includes the set-up"})

    elapsed_total = 0.0
    for rep in range(cfg["repeats"]):
        model = models[rep]
        t0 = time.perf_counter()
        try:
            if impl.is_ours:
                mat = run_ours(model, hooked, loader, impl.estimator)
            else:
                mat = RUNNERS[impl.key](model, hooked, loader)
        except Exception as exc:  # a peer's crash is a result to report, not a benchmark failure
            emit({"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]})
            return 1
        dt = time.perf_counter() - t0
        peak_mib = (proc_status_kib("VmHWM") - rss0) / 1024
        if rep == 0:
            np.save(out.with_suffix(".npy"), np.asarray(mat, dtype=np.float64))
        emit({"seconds": dt, "peak_mib": peak_mib})
        models[rep] = None
        del mat
        gc.collect()
        elapsed_total += dt
        if elapsed_total > cfg["repeat_budget"]:
            break

    if impl.is_ours:  # untimed: the same estimator in float64 on the same float32 features
        ref = run_ours(copy.deepcopy(base), hooked, loader, impl.estimator, torch.float64)
        np.save(out.with_name(out.name + ".ref.npy"), ref)
    return 0


# --------------------------------------------------------------------------------------------- parent side


@dataclass
class Result:
    impl: Impl
    n: int
    seconds: float | None = None  # best of the repeats
    repeats: int = 0
    peak_mib: float | None = None
    timed_out: bool = False
    error: str | None = None
    foreign_cpu_s: float | None = None  # CPU seconds other processes used while this measurement ran
    attempt: int = 1  # which try was kept (a contended try is run again, see --retries)
    attempts: int = 1
    matrix: np.ndarray | None = None
    ref: np.ndarray | None = None


def busy_cpu_seconds() -> float | None:
    """Machine-wide busy CPU time (all processes) from /proc/stat; None where it is not readable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_idle(limit_s: float, busy_cores: float = 0.1) -> None:
    """Wait (at most limit_s) for a one-second window in which the machine is idle but for ~busy_cores."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = busy_cpu_seconds()
        if before is None:
            return
        time.sleep(1.0)
        if busy_cpu_seconds() - before < busy_cores:
            return


def worker_log(out: Path) -> Callable[[dict], None]:
    """The writer of a worker's JSON-lines log (``out``.jsonl): one record a line, each appended and closed at
    once, so that a worker that dies or is killed leaves what it wrote. Read back by :func:`read_worker_log`."""
    log = out.with_suffix(".jsonl")

    def emit(record: dict) -> None:
        with log.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    return emit


def read_worker_log(out: Path, res) -> list[dict]:
    """Fold a worker's JSON-lines log (``out``.jsonl) into `res`: the first error, the best time of its runs,
    the largest peak and the repeat count (non-zero when a run finished and its outputs exist). Returns the
    records, for the fields only one benchmark writes."""
    log = out.with_suffix(".jsonl")
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    runs = [r for r in records if "seconds" in r]
    res.error = next((r["error"] for r in records if "error" in r), res.error)
    if runs:
        res.seconds = min(r["seconds"] for r in runs)
        res.peak_mib = max(r["peak_mib"] for r in runs)
        res.repeats = len(runs)
    return records


def measure(impl: Impl, n: int, args: argparse.Namespace, tmp: Path) -> Result:
    """Run one measurement; rerun it while other processes used the CPU meanwhile, keep the quietest try."""
    tries: list[Result] = []
    for attempt in range(1, args.retries + 2):
        folder = tmp / f"try{attempt}"
        folder.mkdir(exist_ok=True)
        wait_for_idle(args.wait_idle)
        res = run_one(impl, n, args, folder)
        res.attempt = attempt
        tries.append(res)
        if res.error or res.foreign_cpu_s is None or res.foreign_cpu_s <= args.contended_cpu:
            break
    best = min(tries, key=lambda r: r.foreign_cpu_s or 0.0)
    best.attempts = len(tries)
    return best


def run_one(impl: Impl, n: int, args: argparse.Namespace, tmp: Path) -> Result:
    out = tmp / f"{impl.key}_{n}"
    cfg = {
        "impl": impl.key,
        "n": n,
        "out": str(out),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "repeat_budget": args.repeat_budget,
        "layers": args.layers,
        "width": args.width,
        "d_in": args.d_in,
        "seed": args.seed,
    }
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    res = Result(impl, n)
    t0 = time.perf_counter()
    busy0, own0 = busy_cpu_seconds(), children_cpu_seconds()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0 and not out.with_suffix(".jsonl").exists():
            res.error = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:160]
    except subprocess.TimeoutExpired:
        res.timed_out = True
    busy1 = busy_cpu_seconds()
    if busy0 is not None and busy1 is not None:
        res.foreign_cpu_s = max(0.0, busy1 - busy0 - (children_cpu_seconds() - own0))
    read_worker_log(out, res)
    if res.repeats:
        res.matrix = np.load(out.with_suffix(".npy"))
    ref = out.with_name(out.name + ".ref.npy")
    if ref.exists():
        res.ref = np.load(ref)
    status = "timeout" if res.timed_out else ("error" if res.error else f"{res.seconds:.3f} s")
    if res.foreign_cpu_s is not None:
        status += f", other processes used {res.foreign_cpu_s:.1f} CPU s meanwhile"
    print(
        f"  {impl.key:<15} n={n:<6} {status} (subprocess {time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
        flush=True,
    )
    return res


def max_abs_diff(a: np.ndarray | None, b: np.ndarray | None) -> str:
    if a is None or b is None:
        return "—"
    if a.shape != b.shape:
        return f"shape {b.shape}"
    d = np.abs(a - b)
    nans = int(np.isnan(d).sum())
    body = f"{np.nanmax(d):.2e}" if nans < d.size else "nan"
    return f"{body} ({nans} NaN)" if nans else body


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(
        "| n | implementation | estimator | repeats | seconds | speed-up of ours (peer/ours) "
        "| peak MB | max abs diff vs ours | max abs diff vs float64 ref | other processes' CPU s |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.n:
        ours = {r.impl.estimator: r for r in results if r.n == n and r.impl.is_ours}
        for r in (r for r in results if r.n == n):
            mine = ours.get(r.impl.estimator)
            if r.error:
                secs, speed = f"error: {r.error}", "—"
            elif r.timed_out and r.seconds is None:
                secs = f"> {args.timeout:.0f} s"
                speed = f"> {args.timeout / mine.seconds:.1f}×" if mine and mine.seconds else "—"
            else:
                secs = f"{r.seconds:.3f}"
                measured = not r.impl.is_ours and mine is not None and mine.seconds
                speed = f"{r.seconds / mine.seconds:.1f}×" if measured else "—"
            vs_ours = "—" if r.impl.is_ours else max_abs_diff(mine.matrix if mine else None, r.matrix)
            ref = mine.ref if mine else None
            peak = f"{r.peak_mib:.1f}" if r.peak_mib is not None else "—"
            foreign = f"{r.foreign_cpu_s:.1f}" if r.foreign_cpu_s is not None else "—"
            if r.attempts > 1:
                foreign += f" (try {r.attempt} of {r.attempts})"
            print(
                f"| {n} | {r.impl.label} | {r.impl.estimator} | {r.repeats} | {secs} | {speed} | {peak} "
                f"| {vs_ours} | {max_abs_diff(ref, r.matrix)} | {foreign} |"
            )
    print()
    for n in args.n if args.peers else []:
        peers = [r for r in results if r.n == n and not r.impl.is_ours and not r.error]
        timed = [r for r in peers if r.seconds is not None and not r.timed_out]
        if not timed:
            print(f"n={n}: no peer finished within {args.timeout:.0f} s")
            continue
        best = min(timed, key=lambda r: r.seconds)
        mine = next(
            (r for r in results if r.n == n and r.impl.is_ours and r.impl.estimator == best.impl.estimator),
            None,
        )
        ratio = f"{best.seconds / mine.seconds:.1f}×" if mine and mine.seconds else "not measured"
        print(
            f"n={n}: fastest peer is {best.impl.label} at {best.seconds:.3f} s; "
            f"speed-up of ours ({best.impl.estimator}) against it: {ratio}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[2048, 8192], help="number of inputs")
    p.add_argument("--batch-size", type=int, default=256, help="minibatch size, the same for every impl")
    p.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch intra-op threads, every impl")
    p.add_argument("--peers", nargs="*", default=DEFAULT_PEERS, choices=[k for k in IMPLS if "ours" not in k])
    p.add_argument("--repeats", type=int, default=3, help="at most this many timed runs per measurement")
    p.add_argument(
        "--repeat-budget",
        type=float,
        default=20.0,
        help="stop repeating once the runs of one measurement took this many seconds",
    )
    p.add_argument("--timeout", type=float, default=240.0, help="seconds per (implementation, n) subprocess")
    p.add_argument(
        "--contended-cpu",
        type=float,
        default=1.0,
        help="a measurement during which other processes used more CPU seconds than this is run again",
    )
    p.add_argument(
        "--retries", type=int, default=2, help="at most this many reruns of a contended measurement"
    )
    p.add_argument(
        "--wait-idle", type=float, default=60.0, help="before each try wait at most this long for an idle CPU"
    )
    p.add_argument("--layers", type=int, default=14, help="hooked Linear+ReLU blocks")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.layers < 12:
        p.error("the benchmark is defined for at least 12 hooked layers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))

    peers = [IMPLS[k] for k in args.peers]
    estimators = sorted({p.estimator for p in peers} or {"unbiased"}, reverse=True)
    ours = [IMPLS[f"ours-{est}"] for est in estimators]
    vers = versions("torch", "numpy", *sorted({p.package for p in peers}))
    print(
        f"# CKA matrix benchmark: {args.layers} hooked layers (ReLU outputs of a seeded {args.layers}-layer"
        f" MLP, d_in={args.d_in}, width={args.width}), batch size {args.batch_size}, {args.threads} threads"
    )
    print("# versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print(
        f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs; timeout {args.timeout:.0f} s per run;"
        f" best of ≤{args.repeats} repeats (fewer once a measurement's runs pass {args.repeat_budget:.0f} s)"
    )
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_cka_") as tmp:
        for n in args.n:
            for impl in [*ours, *peers]:
                results.append(measure(impl, n, args, Path(tmp)))
    report(results, args)
    # The machine is shared: the load average tells whether another process competed for the cores.
    load_after = os.getloadavg()
    print(
        f"load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
        f"after: {', '.join(f'{v:.2f}' for v in load_after)} (this benchmark alone adds up to {args.threads})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
