"""Helpers for the X-ray import and simulation tests: tiny DICOM files with chosen tags, and a bone phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from XrayToDRRLib.dicom import write_xray_dicom
from XrayToDRRLib.pose import standard_view
from XrayToDRRLib.volumes import center_ras


def ramp_pixels(height: int = 24, width: int = 32, top: int = 4000) -> np.ndarray:
    """A uint16 image with distinct values (row-major ramp modulo `top`), so any flip or shift shows."""
    return (np.arange(height * width).reshape(height, width) * 7 % top).astype(np.uint16)


def make_dicom(path: Path, pixels: np.ndarray | None = None, sdd: float | None = 1020.0,
               imager_spacing: tuple | None = (0.25, 0.3), pixel_spacing: tuple | None = None,
               photometric: str = "MONOCHROME2", bits_stored: int = 16, slope: float | None = None,
               intercept: float | None = None, frames: np.ndarray | None = None) -> Path:
    """A DX DICOM written by write_xray_dicom, then edited: drop or change geometry tags, photometric
    interpretation, rescale, or store several frames ((F,H,W) uint16 `frames`)."""
    data = frames[0] if frames is not None else (ramp_pixels() if pixels is None else pixels)
    write_xray_dicom(data, path, 1000.0, 0.5, 0.5)
    ds = pydicom.dcmread(path)
    for keyword in ("DistanceSourceToDetector", "ImagerPixelSpacing", "PixelSpacing"):
        delattr(ds, keyword)
    if sdd is not None:
        ds.DistanceSourceToDetector = sdd
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    ds.PhotometricInterpretation = photometric
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    if slope is not None:
        ds.RescaleSlope = slope
    elif "RescaleSlope" in ds and intercept is not None:
        del ds.RescaleSlope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    elif "RescaleIntercept" in ds and slope is not None:
        del ds.RescaleIntercept
    if frames is not None:
        ds.NumberOfFrames = int(frames.shape[0])
        ds.PixelData = np.ascontiguousarray(frames.astype("<u2")).tobytes()
    ds.save_as(path)
    return Path(path)


def bone_phantom(n: int = 40, spacing: float = 2.5) -> sitk.Image:
    """n^3 voxels in HU: air, a soft-tissue (40 HU) cylinder along S-I holding a 1200 HU bone rod off-centre
    and a -800 HU 'lung' rod on the other side."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")  # array order (k, j, i) = (S, A/P, R/L)
    hu = np.full((n, n, n), -1000.0, np.float32)
    body = (i / 0.7) ** 2 + (j / 0.6) ** 2 < 1
    hu[body & (np.abs(k) < 0.8)] = 40.0
    hu[((i + 0.3) / 0.15) ** 2 + (j / 0.15) ** 2 < 1] = 1200.0
    hu[((i - 0.35) / 0.15) ** 2 + (j / 0.2) ** 2 < 1] = -800.0
    hu[np.abs(k) >= 0.8] = -1000.0
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((spacing,) * 3)
    img.SetOrigin((-(n - 1) * spacing / 2,) * 3)
    return img


def phantom_pose(ct: sitk.Image, view: str = "ap", size: int = 64, delx: float = 4.0, sdd: float = 1000.0):
    """A standard view of the phantom, magnification 2: the detector sees air around the body."""
    return standard_view(view, center_ras(ct), sdd=sdd, height=size, width=size, delx=delx)
