"""Paired augmentation: more (X-ray, DRR) pairs from each pair, still pixel-aligned.

Geometric (the SAME transform on both images of a pair, one sampling grid, bilinear, air = 0 outside):
  horizontal flip (p = 0.5), rotation +-`rotation` degrees about the centre, isotropic scale 1 +- `scale`,
  translation +-`translate` of the size, and a mild elastic displacement: a Gaussian-smoothed random field
  (sigma = size / 8) of at most `elastic` x size pixels.
Photometric (the X-ray only; the DRR target stays as the geometry leaves it): gamma in [0.7, 1.4] (log-uniform),
  contrast x[0.8, 1.2] about the mean, Gaussian blur sigma in [0, 1] px (p = 0.5), Gaussian noise sigma in
  [0, 0.02] of the range.
Each image is first scaled to [0, 1] by its own minimum and maximum and written as a 16-bit PNG (training
normalises each image anyway). Copy k of pair NAME draws its parameters from (seed, crc32(NAME), k): the same seed
gives the same files, whatever else is in the folder.

Output: OUT/xray/NAME_augKK.png, OUT/drr/NAME_augKK.png (and the originals as NAME.png unless keep_originals is
off), plus augment.csv with every drawn parameter and each copy's patient id (from the input's pairs.csv or
augment.csv, empty when it has none; see dataset.read_patients). The folder is written as a whole (atomically) and never inside
its input.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from XrayToDRRLib.atomic import atomic_dir
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.progress import Progress

from .dataset import check_pairs, list_pairs, read_gray, read_patients
from .outputs import check_output_dir


@dataclasses.dataclass(frozen=True)
class Settings:
    flip: bool = True
    rotation: float = 10.0     # degrees, +-
    scale: float = 0.1         # 1 +- scale
    translate: float = 0.05    # fraction of the size, +-
    elastic: float = 0.01      # largest displacement, fraction of the size
    photometric: bool = True


def unit(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


# --- geometry -------------------------------------------------------------------------------------------------
def sample_geometry(rng: np.random.Generator, settings: Settings = Settings()) -> dict:
    return {
        "flip": bool(settings.flip and rng.random() < 0.5),
        "angle": float(rng.uniform(-settings.rotation, settings.rotation)),
        "scale": float(1.0 + rng.uniform(-settings.scale, settings.scale)),
        "tx": float(rng.uniform(-settings.translate, settings.translate)),
        "ty": float(rng.uniform(-settings.translate, settings.translate)),
        "elastic": float(rng.uniform(0.0, settings.elastic)),
        "elastic_seed": int(rng.integers(0, 2**31 - 1)),
    }


def sampling_grid(params: dict, shape: tuple[int, int]) -> np.ndarray:
    """(2, H, W) input (row, col) coordinates for every output pixel: the inverse of
    flip -> rotate and scale about the centre -> translate, applied after the elastic displacement."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    if params["elastic"] > 0:
        field = np.random.default_rng(params["elastic_seed"]).standard_normal((2, h, w))
        field = np.stack([ndimage.gaussian_filter(f, sigma=max(h, w) / 8.0, mode="reflect") for f in field])
        field *= params["elastic"] * max(h, w) / max(float(np.abs(field).max()), 1e-12)
        rows, cols = rows + field[0], cols + field[1]
    cr, cc = (h - 1) / 2.0, (w - 1) / 2.0
    r = rows - cr - params["ty"] * h
    c = cols - cc - params["tx"] * w
    a = np.deg2rad(params["angle"])
    # inverse rotation and scale (rotation is counter-clockwise on screen for positive angles)
    r_in = (np.cos(a) * r - np.sin(a) * c) / params["scale"] + cr
    c_in = (np.sin(a) * r + np.cos(a) * c) / params["scale"] + cc
    if params["flip"]:
        c_in = (w - 1) - c_in
    return np.stack([r_in, c_in])


def warp(img: np.ndarray, grid: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(np.asarray(img, dtype=np.float64), grid, order=1, mode="constant", cval=0.0)


# --- photometric (input only) ---------------------------------------------------------------------------------
def sample_photometric(rng: np.random.Generator) -> dict:
    return {
        "gamma": float(np.exp(rng.uniform(np.log(0.7), np.log(1.4)))),
        "contrast": float(rng.uniform(0.8, 1.2)),
        "blur": float(rng.uniform(0.0, 1.0)) if rng.random() < 0.5 else 0.0,
        "noise": float(rng.uniform(0.0, 0.02)),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
    }


def photometric(img01: np.ndarray, params: dict) -> np.ndarray:
    img = np.clip(img01, 0.0, 1.0) ** params["gamma"]
    img = (img - img.mean()) * params["contrast"] + img.mean()
    if params["blur"] > 0:
        img = ndimage.gaussian_filter(img, params["blur"], mode="nearest")
    if params["noise"] > 0:
        img = img + params["noise"] * np.random.default_rng(params["noise_seed"]).standard_normal(img.shape)
    return np.clip(img, 0.0, 1.0)


def augment_pair(xray: np.ndarray, drr: np.ndarray, rng: np.random.Generator, settings: Settings = Settings()
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """One augmented copy: (X-ray, DRR) in [0, 1] and the drawn parameters."""
    if xray.shape != drr.shape:
        raise ValueError("both images of a pair must have the same shape")
    geo = sample_geometry(rng, settings)
    pho = sample_photometric(rng)
    grid = sampling_grid(geo, xray.shape)
    x, y = warp(unit(xray), grid), warp(unit(drr), grid)
    if settings.photometric:
        x = photometric(x, pho)
    else:
        pho = {k: None for k in pho}
    return np.clip(x, 0, 1), np.clip(y, 0, 1), {**geo, **pho}


def copy_rng(seed: int, name: str, copy: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8")), int(copy)])


def write_png16(img01: np.ndarray, path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.round(np.clip(img01, 0, 1) * 65535).astype(np.uint16)), str(path))
    return path


# --- the verb's engine ----------------------------------------------------------------------------------------
def augment(input_dir: str | Path, output_dir: str | Path, copies: int = 4, seed: int = 0,
            keep_originals: bool = True, settings: Settings = Settings(), progress: Progress | None = None) -> Path:
    """Write `copies` augmented copies of every pair in `input_dir` (xray/ + drr/) to `output_dir`."""
    progress = progress or Progress()
    if copies < 1:
        raise InputError(f"copies must be at least 1, got {copies}", None, "pass --copies 1 or more")
    pairs = list_pairs(input_dir)
    check_pairs(pairs)
    out = check_output_dir(output_dir, [input_dir], "-o")
    patients = read_patients(input_dir)
    columns = ["name", "patient", "source", "copy", "flip", "angle", "scale", "tx", "ty", "elastic", "gamma", "contrast",
               "blur", "noise"]
    records = []
    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        (tmp / "xray").mkdir()
        (tmp / "drr").mkdir()
        for n, pair in enumerate(pairs):
            progress.update(n / len(pairs), f"{n + 1}/{len(pairs)} {pair.name}")
            xray, drr = read_gray(pair.xray), read_gray(pair.drr)
            if keep_originals:
                write_png16(unit(xray), tmp / "xray" / f"{pair.name}.png")
                write_png16(unit(drr), tmp / "drr" / f"{pair.name}.png")
                records.append({"name": pair.name, "patient": patients.get(pair.name, ""), "source": pair.name,
                                "copy": 0})
            for k in range(1, copies + 1):
                x, y, params = augment_pair(xray, drr, copy_rng(seed, pair.name, k), settings)
                name = f"{pair.name}_aug{k:02d}"
                write_png16(x, tmp / "xray" / f"{name}.png")
                write_png16(y, tmp / "drr" / f"{name}.png")
                records.append({"name": name, "patient": patients.get(pair.name, ""), "source": pair.name,
                                "copy": k, **{c: params.get(c) for c in columns[4:]}})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        (tmp / "augment.csv").write_text(buffer.getvalue())
    progress.log(f"wrote {len(records)} pairs ({len(pairs)} sources x {copies} copies"
                 f"{' + originals' if keep_originals else ''}) to {out}")
    progress.update(1.0, "done")
    return out
