"""Generate example 08 offline: coloured shapes on plain and on textured backgrounds, and two ResNet-18s.

Seeded, NumPy only, nothing downloaded:

* **Images.** 32×32 RGB, one of six shapes (circle, square, triangle, star, cross, ring) with a random
  position, size (circumradius 5–12 px) and rotation, filled with a bright random colour (HSV value 0.75–1),
  anti-aliased by 4×4 supersampling. The class is the shape.
* **Backgrounds — what shifts.** In distribution (``plain_test``): one dark colour (HSV value 0.05–0.4).
  Out of distribution (``textured_test``): the same shapes, each on stripes or a checkerboard (period 3–8 px,
  any orientation) of its plain colour and a second, lighter one (value 0.3–0.7), still darker than every
  shape. A person reads the textured images as easily as the plain ones.
* **Graded and other shifts** (for ``shifts.toml``): the same textures with a fainter second colour
  (``faint_test``: value 0.05–0.4, ``medium_test``: 0.2–0.55) and the plain images with Gaussian pixel noise
  of σ = 0.1 (``noisy_test``).
* **Two models, trained the same way except for their training backgrounds.** ``resnet_plain`` sees only plain
  backgrounds; ``resnet_mixed`` sees a random half of the same training shapes on their textures (the
  augmentation that makes it robust to the shift). Both are ``resnet.resnet18(num_classes=6)`` (torchvision's
  ResNet-18) trained from scratch with Adam and a one-cycle schedule, seeded, on the CPU.

Pixels are stored standardised, (x − 0.5)/0.25 per channel, so that the model is torchvision's ResNet-18 as is.

Usage: ``python make_data.py`` (the full example) or ``python make_data.py --quick`` (the reduced version the
test runs: fewer images and training steps; the models are then barely trained).
"""

from __future__ import annotations

import argparse
import colorsys
import time
from pathlib import Path

import numpy as np
import torch
from resnet import resnet18

HERE = Path(__file__).resolve().parent
SIZE = 32
SUPER = 4  # supersampling per axis (anti-aliasing)
CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
RADIUS = (5.0, 12.0)  # circumradius in pixels
FG_VALUE = (0.75, 1.0)  # HSV value of the shape
BG_VALUE = (0.05, 0.4)  # HSV value of a plain background, and of a texture's first colour
TEXTURE_VALUE = (0.3, 0.7)  # HSV value of a texture's second colour: the out-of-distribution test set, and
FAINT_VALUE = (0.05, 0.4)  # ... of the graded shifts of shifts.toml (faint: as dark as the first colour)
MEDIUM_VALUE = (0.2, 0.55)
NOISE = 0.1  # standard deviation of the pixel noise of noisy_test (pixels in [0, 1])
PERIOD = (3.0, 8.0)  # pixels, of a texture's stripes or checks
MEAN, STD = 0.5, 0.25  # fixed standardisation of every pixel

FULL = {"n_train": 8000, "n_test": 1024, "epochs": 3, "batch": 64}
QUICK = {"n_train": 128, "n_test": 160, "epochs": 1, "batch": 64}


# ----------------------------------------------------------------------------------------------- the images


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.array([colorsys.hsv_to_rgb(*t) for t in zip(h, s, v, strict=True)], dtype=np.float32)


def _colours(n: int, value: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """n random RGB colours with HSV value in the given range."""
    return _hsv(rng.uniform(0, 1, n), rng.uniform(0.3, 1.0, n), rng.uniform(*value, n))


def _inside(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v), in units of the circumradius and in the shape's own frame, are inside."""
    rho = np.hypot(u, v)
    name = CLASSES[label]
    if name == "circle":
        return rho <= 1.0
    if name == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.75
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    phi = np.arctan2(v, u)
    if name == "triangle":  # equilateral, circumradius 1: inside every edge's half-plane
        normals = np.pi / 2 + 2 * np.pi * np.arange(3) / 3 + np.pi / 3
        return np.all([u * np.cos(a) + v * np.sin(a) <= 0.5 for a in normals], axis=0)
    if name == "star":  # five points, inner radius 0.45: fold the angle into one half-spike [0, π/5]
        sector = 2 * np.pi / 5
        a = np.abs(np.mod(phi, sector) - sector / 2)  # 0 at an inner vertex's direction
        a = sector / 2 - a  # 0 at an outer vertex's direction
        px, py = rho * np.cos(a), rho * np.sin(a)
        ox, oy = 1.0, 0.0
        ix, iy = 0.45 * np.cos(sector / 2), 0.45 * np.sin(sector / 2)
        # inside when on the origin's side of the edge outer → inner (the origin gives cross = iy > 0)
        cross = (ix - ox) * (py - oy) - (iy - oy) * (px - ox)
        return cross >= 0
    raise ValueError(name)


_FINE = (np.arange(SIZE * SUPER) + 0.5) / SUPER  # supersampled pixel centres, in pixels


def shape_alpha(label: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage (0…1) of one shape of class `label` with a random size, position and rotation."""
    r = rng.uniform(*RADIUS)
    cx, cy = rng.uniform(r + 1, SIZE - r - 1, 2)
    theta = rng.uniform(0, 2 * np.pi)
    dx, dy = (_FINE[None, :] - cx) / r, (_FINE[:, None] - cy) / r
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    inside = _inside(label, u, v).astype(np.float32)
    return inside.reshape(SIZE, SUPER, SIZE, SUPER).mean(axis=(1, 3))


_PIX = np.arange(SIZE) + 0.5


def texture_mask(rng: np.random.Generator) -> np.ndarray:
    """0/1 pattern: stripes or a checkerboard with a random period and orientation (anti-aliased)."""
    period = rng.uniform(*PERIOD)
    theta = rng.uniform(0, np.pi)
    fine = _FINE
    x, y = fine[None, :], fine[:, None]
    s = (np.cos(theta) * x + np.sin(theta) * y) / period
    t = (-np.sin(theta) * x + np.cos(theta) * y) / period
    stripes = rng.uniform() < 0.5
    mask = np.floor(2 * s) % 2 if stripes else (np.floor(2 * s) + np.floor(2 * t)) % 2
    return mask.reshape(SIZE, SUPER, SIZE, SUPER).mean(axis=(1, 3)).astype(np.float32)


def make_images(
    n: int, rng: np.random.Generator, contrasts: dict[str, tuple[float, float]] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """n shapes, each drawn on its plain background and on a texture of that colour and a second one.

    `contrasts` names the HSV value ranges of the texture's second colour (default: ``{"textured":
    TEXTURE_VALUE}``); every version shares the shapes, colours, hues and texture patterns, only the second
    colour's brightness differs (the same uniform draw scaled into each range). Returns (plain, {name:
    textured}, labels): images (n, 3, 32, 32) float32 standardised, labels (n,) int64, balanced classes in
    random order.
    """
    contrasts = contrasts or {"textured": TEXTURE_VALUE}
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    fg = _colours(n, FG_VALUE, rng)
    bg1 = _colours(n, BG_VALUE, rng)
    hue, sat, level = rng.uniform(0, 1, n), rng.uniform(0.3, 1.0, n), rng.uniform(0, 1, n)
    bg2 = {k: _hsv(hue, sat, lo + (hi - lo) * level) for k, (lo, hi) in contrasts.items()}
    plain = np.empty((n, SIZE, SIZE, 3), dtype=np.float32)
    textured = {k: np.empty_like(plain) for k in contrasts}
    for i, label in enumerate(labels):
        alpha = shape_alpha(int(label), rng)[..., None]
        m = texture_mask(rng)[..., None]
        plain[i] = alpha * fg[i] + (1 - alpha) * bg1[i]
        for k, x in textured.items():
            x[i] = alpha * fg[i] + (1 - alpha) * ((1 - m) * bg1[i] + m * bg2[k][i])
    return standardise(plain), {k: standardise(x) for k, x in textured.items()}, labels.astype(np.int64)


def standardise(x: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) pixels in [0, 1] → (n, 3, 32, 32) float32, (x − MEAN)/STD."""
    return np.ascontiguousarray((x.transpose(0, 3, 1, 2) - MEAN) / STD, dtype=np.float32)


def add_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian pixel noise of `sigma` (in pixel units, [0, 1]) on standardised images, clipped to [0, 1]."""
    noisy = x + rng.normal(0, sigma / STD, x.shape)
    return np.clip(noisy, -MEAN / STD, (1 - MEAN) / STD).astype(np.float32)


# ----------------------------------------------------------------------------------------------- training


def train(x: np.ndarray, y: np.ndarray, epochs: int, batch: int, seed: int) -> torch.nn.Module:
    """Adam with a one-cycle schedule on the cross-entropy; no augmentation beyond what the data holds."""
    torch.manual_seed(seed)
    model = resnet18(num_classes=len(CLASSES))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = epochs * -(-len(xt) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return float((pred.numpy() == y).mean())


MODELS = {"resnet_plain": 0.0, "resnet_mixed": 0.5}  # name → fraction of its training images on a texture
# The test sets: the same shapes on a plain background (in distribution), on textures of three contrasts and
# with pixel noise. audit.toml uses plain_test and textured_test; shifts.toml all of them.
TEST_CONTRASTS = {"faint_test": FAINT_VALUE, "medium_test": MEDIUM_VALUE, "textured_test": TEXTURE_VALUE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced version the test runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: OMP_NUM_THREADS if set, at most 2)"
    )
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads or max(1, min(2, torch.get_num_threads())))
    (HERE / "data").mkdir(exist_ok=True)
    (HERE / "models").mkdir(exist_ok=True)
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    plain, textured, labels = make_images(
        cfg["n_test"], np.random.default_rng([args.seed, 1]), TEST_CONTRASTS
    )
    noisy = add_noise(plain, NOISE, np.random.default_rng([args.seed, 4]))
    tests = {"plain_test": plain, **textured, "noisy_test": noisy}
    for name, x in tests.items():
        np.savez(HERE / "data" / f"{name}.npz", x=x, y=labels)
    # one training set of shapes for both models; they differ only in which backgrounds they see
    train_plain, train_textured, train_labels = make_images(
        cfg["n_train"], np.random.default_rng([args.seed, 2])
    )
    pick = np.random.default_rng([args.seed, 3]).uniform(size=cfg["n_train"])
    print(
        f"generated {cfg['n_test']} test shapes ({len(tests)} versions) and {cfg['n_train']} training shapes "
        f"in {time.perf_counter() - t0:.1f} s; training with {torch.get_num_threads()} torch thread(s)"
    )

    for i, (name, fraction) in enumerate(MODELS.items()):
        t1 = time.perf_counter()
        x = np.where((pick < fraction)[:, None, None, None], train_textured["textured"], train_plain)
        model = train(x, train_labels, cfg["epochs"], cfg["batch"], seed=args.seed * 100 + i)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(HERE / "models" / f"{name}.safetensors"),
        )
        scores = ", ".join(f"{t} {accuracy(model, xt, labels):.3f}" for t, xt in tests.items())
        print(f"trained {name} in {time.perf_counter() - t1:.1f} s — accuracy {scores}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
