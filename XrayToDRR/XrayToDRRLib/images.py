"""Writing 2D images (DRRs, X-rays, figures' inputs): 16-bit PNG, NIfTI/NRRD with pixel spacing, or raw .npy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import InputError

IMAGE_SUFFIXES = (".png", ".nii.gz", ".nii", ".nrrd", ".npy", ".tif", ".tiff")


def suffix_of(path: str | Path) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def to_uint16(img: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linear map [lo, hi] (default: the image's min and max) onto 0..65535."""
    img = np.asarray(img, dtype=np.float64)
    lo = float(np.nanmin(img)) if lo is None else lo
    hi = float(np.nanmax(img)) if hi is None else hi
    scaled = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.round(np.clip(np.nan_to_num(scaled), 0, 1) * 65535).astype(np.uint16)


def save_image(img: np.ndarray, path: str | Path, spacing: tuple[float, float] = (1.0, 1.0)) -> Path:
    """Save a (H,W) float image. PNG/TIFF are 16-bit, scaled from 0 (or the minimum if negative) to the maximum;
    NIfTI/NRRD keep float values and `spacing` = (row spacing, column spacing) in mm; .npy keeps raw float32."""
    path = Path(path)
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"expected a 2D image, got shape {img.shape}", path)
    kind = suffix_of(path)
    if kind not in IMAGE_SUFFIXES:
        raise InputError(f"unknown image type '{kind}'", path, f"use one of {', '.join(IMAGE_SUFFIXES)}")
    with atomic_path(path) as tmp:
        if kind == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, img)
        elif kind in (".png", ".tif", ".tiff"):
            sitk.WriteImage(sitk.GetImageFromArray(to_uint16(img, lo=min(0.0, float(img.min())))), str(tmp))
        else:
            out = sitk.GetImageFromArray(img)
            out.SetSpacing((float(spacing[1]), float(spacing[0])))
            sitk.WriteImage(out, str(tmp), True)
    return path


def to_uint8(img: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Window an image to 8 bits between two percentiles (for figures and previews)."""
    img = np.asarray(img, dtype=np.float64)
    lo, hi = np.percentile(img, percentiles)
    return np.round(np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255).astype(np.uint8)
