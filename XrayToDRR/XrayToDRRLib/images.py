"""Writing 2D images (DRRs, X-rays, figures' inputs): 16-bit PNG, NIfTI/NRRD with pixel spacing, or raw .npy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path, write_text
from .errors import InputError

METADATA_KEY = "xraytodrr"
SIDECAR_SUFFIXES = (".npy", ".tif", ".tiff", ".nii", ".nii.gz")  # formats with no room for free text
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


def save_image(img: np.ndarray, path: str | Path, spacing: tuple[float, float] = (1.0, 1.0),
               metadata: dict | None = None) -> Path:
    """Save a (H,W) float image. PNG/TIFF are 16-bit, scaled from 0 (or the minimum if negative) to the maximum;
    NIfTI/NRRD keep float values and `spacing` = (row spacing, column spacing) in mm; .npy keeps raw float32.
    `metadata` (e.g. which renderer made it) goes into the file where the format has room (a PNG text chunk, an
    NRRD key), else into a `.json` sidecar (.npy, TIFF, NIfTI); `read_metadata` reads it back."""
    path = Path(path)
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"expected a 2D image, got shape {img.shape}", path)
    kind = suffix_of(path)
    if kind not in IMAGE_SUFFIXES:
        raise InputError(f"unknown image type '{kind}'", path, f"use one of {', '.join(IMAGE_SUFFIXES)}")
    text = json.dumps(metadata, sort_keys=True) if metadata else ""
    with atomic_path(path) as tmp:
        if kind == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, img)
        elif kind == ".png":
            _write_png16(to_uint16(img, lo=min(0.0, float(img.min()))), tmp, text)
        elif kind in (".tif", ".tiff"):
            sitk.WriteImage(sitk.GetImageFromArray(to_uint16(img, lo=min(0.0, float(img.min())))), str(tmp))
        else:
            out = sitk.GetImageFromArray(img)
            out.SetSpacing((float(spacing[1]), float(spacing[0])))
            if text:
                out.SetMetaData(METADATA_KEY, text)
            sitk.WriteImage(out, str(tmp), True)
    if text and kind in SIDECAR_SUFFIXES:
        write_text(_sidecar(path), text + "\n")
    return path


def _write_png16(pixels: np.ndarray, path: Path, text: str) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if text:
        info.add_text(METADATA_KEY, text)
    Image.fromarray(pixels.astype(np.uint16)).save(path, format="PNG", pnginfo=info)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_metadata(path: str | Path) -> dict:
    """The metadata `save_image` stored with an image ({} when there is none)."""
    path = Path(path)
    kind = suffix_of(path)
    text = ""
    if _sidecar(path).exists():
        text = _sidecar(path).read_text()
    elif kind == ".png":
        from PIL import Image

        with Image.open(path) as im:
            text = im.info.get(METADATA_KEY, "")
    elif kind == ".nrrd":
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        if reader.HasMetaDataKey(METADATA_KEY):
            text = reader.GetMetaData(METADATA_KEY)
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"description": text}


def to_uint8(img: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Window an image to 8 bits between two percentiles (for figures and previews)."""
    img = np.asarray(img, dtype=np.float64)
    lo, hi = np.percentile(img, percentiles)
    return np.round(np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255).astype(np.uint8)
