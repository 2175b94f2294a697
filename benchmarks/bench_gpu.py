"""What a GPU buys: the CKA, eNTK and embedding paths of model-audit on one device, each beside its floor or
its peer, in one run, with the errors against float64.

Why it measures what it measures (issue 17):

* **CKA** — the layer×layer minibatch CKA matrix of one model, exactly as the `cka` probe computes it:
  forward hooks of `audit.api.capture.stream_activations` (in-place safe), `features(…, "flatten")` and
  `MinibatchCKA(gram_dtype=float32).update` per batch, then `.matrix()`. Beside it the **floor**: the same
  forward passes plus one float32 Gram GEMM (XXᵀ into a preallocated buffer) per hooked layer and batch —
  what any minibatch-CKA must at least do — and **pytorch-cka** 1.1.3 (`cka.compute_cka(model, model,
  batches, layers=…, device=…)`, skipped with a note where it is not installed). Model: 48 blocks
  Linear(1024, 1024) → ReLU, the 48 ReLUs hooked; n = 16384 seeded inputs, batch 512, float32, on the device
  before the clock starts. Error: max |CKA − CKA₆₄| over the matrix, CKA₆₄ being our estimator with float64
  Grams on the same float32 features.
* **eNTK** — the n×n trace kernel of bench_entk.py's CNN (982 794 parameters, 1×28×28 inputs), n = 1024:
  ours, `empirical_ntk(model, x, output="trace", precision=p)` with its default (device-sized) memory budget,
  against the **all-in-memory per-sample Jacobian contraction** (`vmap(jacrev(functional_call))` for every
  example into one n×C×P buffer, then one GEMM per parameter), each in float32 and float64 (a converted copy
  of the model), TF32 off throughout. The baseline needs n·C·P·(4 or 8) bytes (40 / 80 GB here): a
  precision whose buffer does not fit in 90 % of the free device memory is skipped with a note. Error:
  max |K − K₆₄| / max |K₆₄| against the float64 baseline where it ran, else against our float64 kernel.
* **Embedding** — PCA (k = 50 components, explained-variance ratios; ours `StreamingPCA` fed 4096-row device
  batches), LDA (Ledoit–Wolf shrinkage, fit + predict; ours `lda_fit`/`lda_predict`) and a two-sample MMD
  test (2000 vs 2000 rows, 500 permutations; ours `mmd_test`) on the device, against scikit-learn on the CPU
  (`PCA`, `LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")`, and for MMD `rbf_kernel` at our
  bandwidth with NumPy permutations) on 100k × 768 float32 embeddings with a factor structure, a common
  offset and a few rogue dimensions. Errors: PCA max |ΔEVR| against a two-pass float64 NumPy reference; LDA
  the share of held-out predictions that differ from scikit-learn's; MMD |ΔMMD²| / MMD² against the float64
  scikit-learn statistic.

Seconds are the best of --repeats timed runs after one untimed warm-up (CUDA synchronised before and after
each; no further runs once a measurement's runs took 5 s), so compilation, cuDNN autotuning and the
allocator's first growth are not timed. Max rel. error of a kernel: max |K − K_ref| / max |K_ref|. CPU threads (BLAS,
OpenMP, torch) are pinned to --threads before NumPy is imported. Nothing is downloaded.

    python benchmarks/bench_gpu.py                 # on a CUDA machine: every section at the sizes above
    python benchmarks/bench_gpu.py --smoke         # small sizes, any device (the CPU here): a few seconds
    python benchmarks/bench_gpu.py --sections cka --json out.json
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(argv: list[str]) -> str:
    """--threads, read before NumPy is imported so that BLAS/OpenMP pools start at that size."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1" if "--smoke" in argv else str(os.cpu_count() or 1)


for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = _threads_from_argv(sys.argv[1:])

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

SECTIONS = ("cka", "entk", "embedding")
FULL = {
    "cka": {"layers": 48, "width": 1024, "n": 16384, "batch": 512},
    "entk": {"n": 1024, "scale": 1},
    "embedding": {
        "n": 100_000,
        "d": 768,
        "k": 50,
        "batch": 4096,
        "n_test": 20_000,
        "mmd_n": 2000,
        "perms": 500,
    },
}
SMOKE = {
    "cka": {"layers": 4, "width": 64, "n": 512, "batch": 64},
    "entk": {"n": 12, "scale": 16},
    "embedding": {"n": 3000, "d": 32, "k": 5, "batch": 512, "n_test": 600, "mmd_n": 150, "perms": 50},
}


# ------------------------------------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


REPEAT_BUDGET_S = 5.0  # no further timed runs of a measurement once its runs took this long


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """(best seconds of at most `repeats` runs after one untimed warm-up, the last run's result); fewer runs
    once they took REPEAT_BUDGET_S together, so that a slow baseline does not eat a GPU check's minutes."""
    result = fn()
    best, spent = math.inf, 0.0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent >= REPEAT_BUDGET_S:
            break
    return best, result


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def secs(t: float | None) -> str:
    return "—" if t is None else f"{t:.3f} s"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b <= 0 else f"{a / b:.2f}×"


def err(e: float | None) -> str:
    return "—" if e is None else f"{e:.1e}"


# --------------------------------------------------------------------------------------------------- CKA


def cka_model(layers: int, width: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(layers):
        lin = nn.Linear(width, width)
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")  # He init: activations keep their scale
        nn.init.zeros_(lin.bias)
        blocks += [lin, nn.ReLU()]
    return nn.Sequential(*blocks).to(device).eval()


class _Loader:
    """The same device batches as a DataLoader-like iterable (len and iter), for pytorch-cka."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def bench_cka(cfg: dict, device: torch.device, repeats: int) -> dict:
    from audit.api.capture import features, stream_activations
    from model_audit_probes.cka.hsic import MinibatchCKA

    model = cka_model(cfg["layers"], cfg["width"], device)
    names = [str(2 * i + 1) for i in range(cfg["layers"])]  # the ReLUs
    x = torch.randn(cfg["n"], cfg["width"], generator=torch.Generator().manual_seed(1)).to(device)
    batches = list(torch.split(x, cfg["batch"]))
    modules = dict(model.named_modules())

    def ours(gram_dtype=torch.float32) -> np.ndarray:  # as plugins/cka/probe.py does it
        acc = MinibatchCKA(len(names), estimator="unbiased", gram_dtype=gram_dtype)
        for acts, _out, _y in stream_activations(model, ((b, None) for b in batches), names):
            acc.update([features(t, "flatten") for t in acts])
        return acc.matrix()

    grams = torch.empty(len(names), cfg["batch"], cfg["batch"], device=device)

    def floor() -> None:  # forward + one float32 Gram per hooked layer and batch
        def hook(i):
            def fn(_m, _i, out):
                f = out.reshape(out.shape[0], -1)
                torch.mm(f, f.T, out=grams[i, : f.shape[0], : f.shape[0]])

            return fn

        handles = [modules[n].register_forward_hook(hook(i)) for i, n in enumerate(names)]
        try:
            with torch.no_grad():
                for b in batches:
                    model(b)
        finally:
            for h in handles:
                h.remove()

    out: dict = {"rows": []}
    with torch.no_grad():
        t_floor, _ = timed(floor, device, repeats)
        t_fwd, _ = timed(lambda: [model(b) for b in batches], device, repeats)
    t_ours, m_ours = timed(ours, device, repeats)
    reference = ours(torch.float64)
    out["rows"].append(("forward passes only", t_fwd, None))
    out["rows"].append(("floor: forward + one float32 Gram per layer and batch", t_floor, None))
    out["rows"].append(
        ("ours: MinibatchCKA as the cka probe runs it", t_ours, float(np.nanmax(np.abs(m_ours - reference))))
    )
    try:
        from cka import compute_cka
    except ImportError:
        out["note"] = "pytorch-cka not installed (pip install pytorch-cka==1.1.3): its row is left out"
    else:
        peer_model = copy.deepcopy(model)  # it registers its own hooks and moves the model itself
        loader = _Loader(batches)  # a list would be read as one "dataloader" per batch

        def peer() -> np.ndarray:
            return compute_cka(peer_model, peer_model, loader, layers=names, device=device, progress=False)[0]

        t_peer, m_peer = timed(peer, device, repeats)
        m_peer = m_peer.double().cpu().numpy()
        out["rows"].append(
            ("pytorch-cka 1.1.3 compute_cka", t_peer, float(np.nanmax(np.abs(m_peer - reference))))
        )
    out.update(t_floor=t_floor, t_ours=t_ours)
    rows = [[label, secs(t), ratio(t, t_floor), err(e)] for label, t, e in out["rows"]]
    if len(out["rows"]) > 3:
        out["peer_over_ours"] = out["rows"][3][1] / t_ours
    table(
        f"CKA: {cfg['layers']} hooked ReLU layers of width {cfg['width']}, n = {cfg['n']}, batch {cfg['batch']}, "
        f"float32 features, {device}",
        ["implementation", "seconds", "× floor", "max abs. error vs float64 Grams"],
        rows,
    )
    if "peer_over_ours" in out:
        print(f"\npytorch-cka / ours: {out['peer_over_ours']:.2f}×")
    if "note" in out:
        print(f"\nnote: {out['note']}")
    return {k: v for k, v in out.items() if k != "rows"} | {
        "rows": [{"label": r[0], "seconds": r[1], "max_error": r[2]} for r in out["rows"]]
    }


# -------------------------------------------------------------------------------------------------- eNTK


def entk_cnn(scale: int, device: torch.device) -> nn.Module:
    """bench_entk.py's CNN (scale 1: the same layers, 982 794 parameters); channels divided by `scale`."""
    torch.manual_seed(0)
    c = [max(2, w // scale) for w in (64, 128, 256, 256)]
    model = nn.Sequential(
        nn.Conv2d(1, c[0], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c[0], c[1], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c[1], c[2], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c[2], c[3], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c[3] * 3 * 3, 10),
    )
    return model.to(device).eval()


def jacobian_contraction(model: nn.Module, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """The all-in-memory baseline: every per-sample Jacobian (n, C, P_i) in one buffer, then one GEMM each."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    per_sample = vmap(jacrev(f), in_dims=(None, 0))
    n = x.shape[0]
    buffers = None
    for s in range(0, n, chunk):
        jac = per_sample(params, x[s : s + chunk])
        if buffers is None:
            buffers = {k: v.new_empty((n, *v.shape[1:])) for k, v in jac.items()}
        for k, v in jac.items():
            buffers[k][s : s + chunk] = v
        del jac
    k = None
    for j in buffers.values():
        flat = j.reshape(n, -1)
        k = flat @ flat.T if k is None else k.add_(flat @ flat.T)
    return k


def bench_entk(cfg: dict, device: torch.device, repeats: int) -> dict:
    from model_audit_probes.entk import kernels

    model = entk_cnn(cfg["scale"], device)
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(cfg["n"], 1, 28, 28, generator=torch.Generator().manual_seed(1)).to(device)
    classes = 10
    results: dict[str, dict] = {}
    notes: list[str] = []
    for precision in ("float32", "float64"):
        dtype = kernels.PRECISIONS[precision]
        t, k = timed(
            lambda p=precision: kernels.empirical_ntk(model, x, output="trace", precision=p), device, repeats
        )
        results[f"ours {precision}"] = {"seconds": t, "kernel": k.double()}
        need = cfg["n"] * classes * n_params * (4 if precision == "float32" else 8)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # what ours left cached counts as free for the baseline
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
        if free is not None and need > 0.9 * free:
            notes.append(
                f"Jacobian contraction {precision} skipped: its buffer needs {need / 2**30:.1f} GiB, "
                f"{free / 2**30:.1f} GiB free"
            )
            continue
        base_model = kernels.at_precision(model, precision)
        xb = x.to(dtype)
        with kernels.ieee_float32(device):
            try:
                t, k = timed(lambda m=base_model, xb=xb: jacobian_contraction(m, xb), device, repeats)
            except torch.cuda.OutOfMemoryError as e:
                notes.append(
                    f"Jacobian contraction {precision}: out of memory ({str(e).splitlines()[0][:100]})"
                )
                continue
        results[f"Jacobian contraction {precision}"] = {"seconds": t, "kernel": k.double()}
        del base_model, k
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref_key = "Jacobian contraction float64" if "Jacobian contraction float64" in results else "ours float64"
    ref = results[ref_key]["kernel"]
    scale = float(ref.abs().max())
    rows, out = [], {"reference": ref_key, "parameters": n_params, "notes": notes, "rows": []}
    for label, r in results.items():
        e = float((r["kernel"] - ref).abs().max()) / scale
        precision = label.rsplit(" ", 1)[1]
        base = results.get(f"Jacobian contraction {precision}")
        speedup = None if base is None or label.startswith("Jacobian") else base["seconds"] / r["seconds"]
        rows.append([label, secs(r["seconds"]), "—" if speedup is None else f"{speedup:.1f}×", err(e)])
        out["rows"].append({"label": label, "seconds": r["seconds"], "max_rel_error": e, "speedup": speedup})
    table(
        f"eNTK: trace kernel of bench_entk.py's CNN ({n_params} parameters), n = {cfg['n']}, {device}, TF32 off",
        ["implementation", "seconds", "speed-up vs the contraction", f"max rel. error vs {ref_key}"],
        rows,
    )
    for note in notes:
        print(f"note: {note}")
    return out


# --------------------------------------------------------------------------------------------- embedding


def embeddings(n: int, d: int, rng: np.random.Generator, model: dict | None = None):
    """Seeded sentence-embedding-like rows (float32) and source labels: 3 sources of sizes 3:2:1 differing by
    a small mean shift, a low-rank factor structure (λᵢ ∝ 1/i), a common offset and 4 rogue dimensions."""
    if model is None:
        r = min(64, d)
        q, _ = np.linalg.qr(rng.standard_normal((d, r)))
        lam = 1.5 * d / np.sum(1.0 / np.arange(1, r + 1)) / np.arange(1, r + 1)
        offset = rng.standard_normal(d)
        noise = np.exp(rng.normal(0.0, 0.25, d))
        rogue = rng.choice(d, min(4, d), replace=False)
        offset[rogue] = 20.0 * rng.choice([-1.0, 1.0], rogue.size)
        noise[rogue] *= 4.0
        shifts = rng.standard_normal((3, d))
        shifts *= 2.0 / np.linalg.norm(shifts, axis=1, keepdims=True)
        model = {"loadings": q * np.sqrt(lam), "offset": offset, "noise": noise, "shifts": shifts}
    labels = rng.choice(3, n, p=np.array([3, 2, 1]) / 6)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        z = rng.standard_normal((e - s, model["loadings"].shape[1]))
        rows = z @ model["loadings"].T + rng.standard_normal((e - s, d)) * model["noise"]
        x[s:e] = rows + model["offset"] + model["shifts"][labels[s:e]]
    return x, labels, model


def mmd_sklearn(xr: np.ndarray, xs: np.ndarray, sigma: float, perms: int, seed: int) -> dict:
    """Unbiased MMD² with scikit-learn's rbf_kernel (float64) at bandwidth σ, NumPy permutations."""
    from sklearn.metrics.pairwise import rbf_kernel

    z = np.concatenate([xr, xs]).astype(np.float64)
    n, m = len(xr), len(xs)
    kern = rbf_kernel(z, gamma=1.0 / (2 * sigma * sigma))
    np.fill_diagonal(kern, 0.0)

    def stat(a: np.ndarray) -> float:
        b = 1.0 - a
        ka, kb = kern @ a, kern @ b
        return (a @ ka) / (n * (n - 1)) + (b @ kb) / (m * (m - 1)) - 2 * (a @ kb) / (n * m)

    first = np.r_[np.ones(n), np.zeros(m)]
    observed = stat(first)
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(first)) for _ in range(perms)])
    return {"mmd2": float(observed), "p": (1 + int(np.sum(null >= observed))) / (1 + perms)}


def bench_embedding(cfg: dict, device: torch.device, repeats: int) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from model_audit_probes.embedding import stats

    rng = np.random.default_rng(0)
    x, y, model = embeddings(cfg["n"], cfg["d"], rng)
    xt, yt, _ = embeddings(cfg["n_test"], cfg["d"], rng, model)
    m = cfg["mmd_n"]
    src0, src1 = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    xr, xs = x[np.sort(rng.choice(src0, m, replace=False))], x[np.sort(rng.choice(src1, m, replace=False))]
    x_dev, xt_dev = torch.from_numpy(x).to(device), torch.from_numpy(xt).to(device)  # as a model emits them
    xr_dev, xs_dev = torch.from_numpy(xr).to(device), torch.from_numpy(xs).to(device)
    k = cfg["k"]

    x64 = x.astype(np.float64)
    x64 -= x64.mean(axis=0)
    cov = x64.T @ x64 / (len(x) - 1)
    evr_ref = np.linalg.eigvalsh(cov)[::-1][:k] / np.trace(cov)
    del x64, cov

    def pca_ours():
        acc = stats.StreamingPCA(device=device)
        for b in torch.split(x_dev, cfg["batch"]):
            acc.update(b)
        return acc.result(k).explained_variance_ratio

    t_pca, evr = timed(pca_ours, device, repeats)
    t_pca_sk, est = timed(lambda: PCA(n_components=k, random_state=0).fit(x), device, repeats)
    t_lda, pred = timed(
        lambda: stats.lda_predict(stats.lda_fit(x_dev, y, device=device), xt_dev), device, repeats
    )
    sk_lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto")
    t_lda_sk, pred_sk = timed(lambda: sk_lda.fit(x, y).predict(xt), device, repeats)
    perms = cfg["perms"]
    t_mmd, res = timed(
        lambda: stats.mmd_test(xr_dev, xs_dev, n_permutations=perms, seed=0, max_n=None, device=device),
        device,
        repeats,
    )
    t_mmd_sk, res_sk = timed(lambda: mmd_sklearn(xr, xs, res.bandwidth, perms, 0), device, repeats)
    rows = [
        ["PCA", secs(t_pca), secs(t_pca_sk), ratio(t_pca_sk, t_pca), err(float(np.abs(evr - evr_ref).max())),
         err(float(np.abs(est.explained_variance_ratio_ - evr_ref).max()))],
        ["LDA", secs(t_lda), secs(t_lda_sk), ratio(t_lda_sk, t_lda),
         f"{float(np.mean(pred != pred_sk)):.4f} of predictions differ", f"accuracy {np.mean(pred_sk == yt):.3f}"],
        ["MMD", secs(t_mmd), secs(t_mmd_sk), ratio(t_mmd_sk, t_mmd),
         err(abs(res.mmd2 - res_sk["mmd2"]) / abs(res_sk["mmd2"])), f"p {res.p_value:.3g} vs {res_sk['p']:.3g}"],
    ]  # fmt: skip
    table(
        f"embedding: {cfg['n']} × {cfg['d']} float32 (PCA k = {k}, LDA held-out {cfg['n_test']}, MMD {m} vs {m}, "
        f"{perms} permutations); ours on {device}, scikit-learn on the CPU ({os.environ['OMP_NUM_THREADS']} threads)",
        ["statistic", "ours", "scikit-learn", "sklearn / ours", "ours: error", "sklearn: error / note"],
        rows,
    )
    print(
        "(PCA errors: max |ΔEVR| vs a two-pass float64 reference; MMD: |ΔMMD²|/MMD² vs sklearn's float64 kernel)"
    )
    return {
        "pca": {"ours": t_pca, "sklearn": t_pca_sk, "max_evr_error": float(np.abs(evr - evr_ref).max())},
        "lda": {"ours": t_lda, "sklearn": t_lda_sk, "disagreement": float(np.mean(pred != pred_sk))},
        "mmd": {
            "ours": t_mmd,
            "sklearn": t_mmd_sk,
            "rel_error": abs(res.mmd2 - res_sk["mmd2"]) / abs(res_sk["mmd2"]),
        },
    }


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--device", default=None, help="cuda, cuda:N or cpu (default: cuda when visible, else cpu)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="small sizes: checks that every section runs (any device)"
    )
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument(
        "--repeats", type=int, default=None, help="timed runs per measurement (default 3; smoke 1)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads: BLAS, OpenMP, torch (default all; smoke 1)"
    )
    p.add_argument("--json", default=None, help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = int(os.environ["OMP_NUM_THREADS"])
    torch.set_num_threads(threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: CUDA is not available here; use --device cpu (with --smoke)", file=sys.stderr)
        return 2
    try:
        import model_audit_probes  # noqa: F401
    except ImportError:
        print("bench_gpu: install model-audit first (pip install -e .)", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else FULL
    repeats = args.repeats or (1 if args.smoke else 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(
        f"# bench_gpu{' --smoke' if args.smoke else ''}: {device} ({name}); torch {torch.__version__}, numpy "
        f"{np.__version__}, python {platform.python_version()}; {threads} CPU threads; best of {repeats} after a warm-up"
    )
    start = time.perf_counter()
    out: dict = {"device": str(device), "device_name": name, "torch": torch.__version__, "smoke": args.smoke}
    runners = {"cka": bench_cka, "entk": bench_entk, "embedding": bench_embedding}
    for section in args.sections:
        out[section] = runners[section](sizes[section], device, repeats)
    print(f"\n# total {time.perf_counter() - start:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
