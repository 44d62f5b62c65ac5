"""On-the-fly augmentation aimed at what differs between patients (`translate train --augment cross-patient`).

Drawn afresh for every training pair in every epoch, from (seed, epoch, index) only, so a run is reproducible and
`--resume` continues it exactly. On images scaled to [0, 1] at the network's size (dense = bright, air = 0):

Geometry, the SAME on both images (they stay pixel-aligned): body size, an anisotropic scaling about the centre
  (overall 0.85-1.15, aspect 0.92-1.08: wider, narrower, taller patients), and a shift of up to 4 % of the size;
  outside the image is air (0).
The X-ray only (the DRR target is what the CT gives, whoever the patient):
  exposure: gamma, log-uniform in [0.6, 1.6];
  processing: a sigmoid tone curve (slope 0-6 about a centre in [0.35, 0.65], 0 = linear) and an unsharp mask
  (amount 0-1, sigma 1-4 px), the vendor look;
  mild blur (sigma 0-1 px, half the time) and Gaussian noise (sigma 0-0.03).
Each image is then normalised as in training (dataset.normalize).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from XrayToDRRLib.errors import InputError

AUGMENTS = ("none", "cross-patient")


def check_augment(name: str) -> None:
    if name not in AUGMENTS:
        raise InputError(f"unknown augmentation '{name}'", None, f"use --augment {' or '.join(AUGMENTS)}")


def sample(rng: np.random.Generator) -> dict:
    size, aspect = rng.uniform(0.85, 1.15), rng.uniform(0.92, 1.08)
    return {
        "scale_rows": float(size / aspect), "scale_cols": float(size * aspect),
        "shift_rows": float(rng.uniform(-0.04, 0.04)), "shift_cols": float(rng.uniform(-0.04, 0.04)),
        "gamma": float(np.exp(rng.uniform(np.log(0.6), np.log(1.6)))),
        "curve_slope": float(rng.uniform(0.0, 6.0)), "curve_centre": float(rng.uniform(0.35, 0.65)),
        "unsharp": float(rng.uniform(0.0, 1.0)), "unsharp_sigma": float(rng.uniform(1.0, 4.0)),
        "blur": float(rng.uniform(0.0, 1.0)) if rng.random() < 0.5 else 0.0,
        "noise": float(rng.uniform(0.0, 0.03)),
    }


def scale_both(img01: np.ndarray, p: dict) -> np.ndarray:
    """Scaling by (scale_rows, scale_cols) about the centre, then the shift (fractions of the size); air outside."""
    h, w = img01.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    matrix = np.array([1.0 / p["scale_rows"], 1.0 / p["scale_cols"]])
    shift = np.array([p["shift_rows"] * h, p["shift_cols"] * w])
    offset = centre - matrix * (centre + shift)  # input = matrix * output + offset
    return ndimage.affine_transform(img01, matrix, offset=offset, order=1, mode="constant", cval=0.0)


def tone_curve(img01: np.ndarray, slope: float, centre: float) -> np.ndarray:
    """A sigmoid through (0, 0) and (1, 1); slope 0 is the identity."""
    if slope < 1e-3:
        return img01
    s = lambda v: 1.0 / (1.0 + np.exp(-slope * (v - centre)))  # noqa: E731
    return (s(img01) - s(0.0)) / (s(1.0) - s(0.0))


def xray_look(img01: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    img = np.clip(img01, 0.0, 1.0) ** p["gamma"]
    img = tone_curve(img, p["curve_slope"], p["curve_centre"])
    if p["unsharp"] > 0:
        img = img + p["unsharp"] * (img - ndimage.gaussian_filter(img, p["unsharp_sigma"], mode="nearest"))
    if p["blur"] > 0:
        img = ndimage.gaussian_filter(img, p["blur"], mode="nearest")
    if p["noise"] > 0:
        img = img + p["noise"] * rng.standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0)


def augment_pair(xray01: np.ndarray, drr01: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    p = sample(rng)
    x = scale_both(np.asarray(xray01, np.float64), p)
    y = scale_both(np.asarray(drr01, np.float64), p)
    return xray_look(x, p, rng).astype(np.float32), np.clip(y, 0.0, 1.0).astype(np.float32)


class CrossPatientDataset:
    """PairDataset's (input, target) tensors, each pair augmented anew per epoch (set_epoch) from
    (seed, epoch, index); the [0, 1] images at the network's size are cached, the augmentation is not."""

    def __init__(self, pairs, image_size: int, normalization: dict | None, seed: int):
        from .dataset import NORMALIZATION

        self.pairs, self.image_size = list(pairs), int(image_size)
        self.normalization = normalization or NORMALIZATION
        self.seed, self.epoch = int(seed), 0
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def _unit(self, path) -> np.ndarray:
        from .augment import unit
        from .dataset import read_gray, resize

        return resize(unit(read_gray(path)).astype(np.float32), (self.image_size, self.image_size))

    def __getitem__(self, index: int):
        import torch

        from .dataset import normalize

        if index not in self.cache:
            pair = self.pairs[index]
            self.cache[index] = (self._unit(pair.xray), self._unit(pair.drr))
        x, y = augment_pair(*self.cache[index], np.random.default_rng([self.seed, self.epoch, int(index)]))
        return tuple(torch.from_numpy(np.ascontiguousarray(normalize(img, self.normalization)))[None]
                     for img in (x, y))
