"""CKA and eNTK on the architectures users audit, against independent float64 references, and the time
the in-place protection of activation capture costs on ResNet-18.

References (independent of the code under test):

* CKA: each layer's activations from a copy of the model with every in-place flag off and residual adds
  written out of place (hooks that copy), then the unbiased HSIC written from Song et al.'s three-term
  formula in NumPy float64, accumulated over the same minibatches. Ours: `audit.api.capture` on the original
  model (in-place ReLUs and all) + `MinibatchCKA` with float32 Grams, as the probe runs it.
* eNTK: `kernels.empirical_ntk(method="jacobian")` (per-sample torch.func Jacobians of every parameter) on
  the out-of-place copy, float64. Ours: the default routes (dense/conv factorisations) on the original.

Timing: capture of the default layers of ResNet-18 (42 layers, 32×32 inputs), ours (version counters,
copies of the layers written in place) against plain ``output.detach()`` hooks (the old, wrong capture),
same model, same run, interleaved repeats, median.

    python benchmarks/bench_architectures.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from architectures import (  # noqa: E402
    ConvBNReLU,
    LinearReLU,
    RecurrentClassifier,
    TransformerClassifier,
    hf_models,
    out_of_place,
    resnet18,
    seeded,
)

from audit.api.capture import OUTPUT, Capture, features, select_output, stream_activations, survey  # noqa: E402
from model_audit_probes.cka.hsic import MinibatchCKA  # noqa: E402
from model_audit_probes.entk import kernels  # noqa: E402


def hsic_song(k: np.ndarray, l_: np.ndarray) -> float:
    """Unbiased HSIC, Song et al. (2012) eq. (5), from the definition (zero diagonals, three terms)."""
    m = k.shape[0]
    k, l_ = k.copy(), l_.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    one = np.ones(m)
    term = np.trace(k @ l_) + (one @ k @ one) * (one @ l_ @ one) / ((m - 1) * (m - 2))
    term -= 2.0 / (m - 2) * (one @ k @ l_ @ one)
    return term / (m * (m - 3))


def reference_cka(model, x, layers, batch, rule="flatten") -> np.ndarray:
    ref = out_of_place(model)
    modules = dict(ref.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(
            lambda _m, _i, o, n=n: seen.__setitem__(n, (o if torch.is_tensor(o) else o[0]).clone())
        )
        for n in layers
        if n != OUTPUT
    ]
    found = survey(ref, x)
    cross = np.zeros((len(layers), len(layers)))
    for s in range(0, x.shape[0], batch):
        seen.clear()
        with torch.no_grad():
            out = ref(x[s : s + batch])
        grams = []
        for n in layers:
            t = out if n == OUTPUT else seen[n]
            axis = 0 if n == OUTPUT else found.layers[n].batch_axis
            f = features(t.movedim(axis, 0), rule).double().numpy()
            grams.append(f @ f.T)
        for i, ki in enumerate(grams):
            for j, kj in enumerate(grams):
                cross[i, j] += hsic_song(ki, kj)
    for h in handles:
        h.remove()
    d = np.sqrt(np.diag(cross))
    return cross / np.outer(d, d)


def our_cka(model, x, layers, batch, rule="flatten") -> np.ndarray:
    found = survey(model, x)
    acc = MinibatchCKA(len(layers), None, "unbiased", torch.float32)
    batches = [(x[s : s + batch], None) for s in range(0, x.shape[0], batch)]
    for acts, _, _ in stream_activations(model, batches, layers, found.axes(layers)):
        acc.update([features(a.float(), rule) for a in acts])
    return acc.matrix()


def entk_error(model, x, output) -> float:
    got = kernels.empirical_ntk(model, x, output=output)
    want = kernels.empirical_ntk(out_of_place(model), x, output=output, method="jacobian")
    return float(torch.linalg.norm(got - want) / torch.linalg.norm(want))


def architectures():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(64, 3, 32, 32, generator=g, dtype=torch.float64)
    sequences = torch.randn(64, 8, 6, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 50, (64, 12), generator=g)
    yield (
        "Linear → ReLU(inplace)",
        seeded(LinearReLU).double(),
        torch.randn(64, 8, dtype=torch.float64),
        "trace",
    )
    yield "Conv → BN → ReLU(inplace), +=, relu_()", seeded(ConvBNReLU).double(), images[:, :, :8, :8], "trace"
    yield "ResNet-18 (torchvision definition)", resnet18(10).double(), images, "sum"
    for name, m in hf_models(0).items():
        yield (
            f"Hugging Face {name}",
            select_output(m).double(),
            (tokens if "bert" in name else images),
            "trace",
        )
    yield "nn.TransformerEncoder", seeded(TransformerClassifier).double(), sequences, "trace"
    yield "LSTM", seeded(RecurrentClassifier, kind="lstm").double(), sequences, "trace"
    yield "GRU", seeded(RecurrentClassifier, kind="gru").double(), sequences, "trace"


def accuracy(entk_n: int) -> None:
    print(f"| architecture | layers | CKA max error vs float64 reference | eNTK rel. error (n = {entk_n}) |")
    print("|---|---|---|---|")
    for name, model, x, output in architectures():
        model.eval()
        layers = survey(model, x).default_layers()
        # ours as the probe runs it: the float32 model, float32 Grams; the reference in float64
        x32 = x.float() if x.is_floating_point() else x
        ours = our_cka(copy.deepcopy(model).float(), x32, layers, 16)
        err = np.nanmax(np.abs(ours - reference_cka(model, x, layers, 16)))
        # eNTK in float64 on a few examples (the Jacobian reference holds n·C'·P numbers)
        e = entk_error(model, x[:entk_n], output)
        print(f"| {name} | {len(layers)} | {err:.1e} | {e:.1e} |", flush=True)


def overhead(repeats: int, n: int, batch: int) -> None:
    """Capture time, ours vs plain ``detach()`` hooks, on ResNet-18 (BatchNorm outputs written in place by
    the ReLU or ``+=``: ours copies those 16 layers) and on its out-of-place copy (nothing to copy)."""
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = resnet18(10)
    print(
        f"\nResNet-18 capture, n = {n}, batch {batch}, {torch.get_num_threads()} thread(s), median of {repeats}:"
    )
    for label, model in (("in-place ReLUs and +=", base), ("out-of-place copy", out_of_place(base))):
        layers = survey(model, x).default_layers()
        mods = dict(model.named_modules())

        def plain(model=model, layers=layers, mods=mods) -> None:  # the old capture: overwritten views
            store: dict[str, torch.Tensor] = {}
            hs = [
                mods[k].register_forward_hook(lambda _m, _i, o, k=k: store.__setitem__(k, o.detach()))
                for k in layers
                if k != OUTPUT
            ]
            with torch.no_grad():
                for s in range(0, n, batch):
                    model(x[s : s + batch])
            for h in hs:
                h.remove()

        def ours(model=model, layers=layers) -> None:
            with Capture(model, layers) as cap:
                for s in range(0, n, batch):
                    cap.forward(x[s : s + batch])

        plain()
        ours()
        t_plain, t_ours = [], []
        for _ in range(repeats):
            for fn, acc in ((plain, t_plain), (ours, t_ours)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        mp, mo = float(np.median(t_plain)), float(np.median(t_ours))
        print(
            f"  {label}: {len(layers)} layers; plain detach hooks {mp:.3f} s, in-place-safe capture "
            f"{mo:.3f} s, ratio {mo / mp:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--entk-n", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    accuracy(args.entk_n)
    overhead(args.repeats, n=512, batch=128)


if __name__ == "__main__":
    main()
