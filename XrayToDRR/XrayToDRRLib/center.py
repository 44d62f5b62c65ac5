"""Centring and isotropic resampling: Slicer's "Center volume" + harden + "Resample Scalar Volume" in one step.

The output keeps the input's direction and physical extent, has cubic voxels of `spacing` mm, and its geometric
centre (`volumes.center_ras`) sits at world RAS (0, 0, 0). Outside the input is air (-1024 HU). A label map is
resampled nearest-neighbour onto the same grid, so it holds only labels it had.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .progress import Progress
from .volumes import LPS_TO_RAS, center_ras

AIR_HU = -1024.0
INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}
MAX_VOXELS = 2_000_000_000


@dataclass(frozen=True)
class Grid:
    size: list[int]
    spacing: float
    origin: list[float]  # LPS, as SimpleITK stores it
    direction: tuple[float, ...]


def centered_grid(img: sitk.Image, spacing: float = 1.0) -> Grid:
    """The output grid: same direction and extent as `img`, isotropic `spacing` mm, geometric centre at 0."""
    if not spacing > 0:
        raise InputError(f"--spacing must be > 0 mm, got {spacing:g}", None, "give a voxel size such as 1.0")
    extent = np.array(img.GetSize()) * np.array(img.GetSpacing())  # edge to edge
    size = [max(1, math.ceil(e / spacing - 1e-6)) for e in extent]
    if math.prod(size) > MAX_VOXELS:
        raise InputError(f"--spacing {spacing:g} mm would make {size} voxels", None, "give a coarser spacing")
    d = np.array(img.GetDirection()).reshape(3, 3)
    origin = -d @ (spacing * (np.array(size) - 1) / 2)
    return Grid(size, float(spacing), origin.tolist(), img.GetDirection())


def center(ct: sitk.Image, spacing: float = 1.0, interpolator: str = "linear", labels: sitk.Image | None = None,
           progress: Progress | None = None) -> tuple[sitk.Image, sitk.Image | None]:
    """Move the CT's centre to world origin and resample it to isotropic `spacing` mm (and the label map with it).
    Returns (ct, labels or None)."""
    progress = progress or Progress()
    if interpolator not in INTERPOLATORS:
        raise InputError(f"unknown interpolator '{interpolator}'", None, f"use {' or '.join(INTERPOLATORS)}")
    grid = centered_grid(ct, spacing)
    # Output point p samples the input at p + c: c (the input's centre, in LPS) lands on the origin.
    shift = sitk.TranslationTransform(3, (LPS_TO_RAS[:3, :3] @ center_ras(ct)).tolist())
    progress.update(0.05, f"resampling to {grid.size} voxels of {spacing:g} mm")
    out = resample_onto(ct, grid, shift, INTERPOLATORS[interpolator], AIR_HU)
    progress.update(0.8 if labels is not None else 1.0, "CT resampled")
    out_labels = None
    if labels is not None:
        out_labels = resample_onto(labels, grid, shift, sitk.sitkNearestNeighbor, 0)
        if not np.any(sitk.GetArrayViewFromImage(out_labels)):
            raise InputError("segmentation has no label inside the CT's field of view", None,
                             "give the segmentation drawn on this CT")
        progress.update(1.0, "segmentation resampled")
    return out, out_labels


def resample_onto(img: sitk.Image, grid: Grid, transform: sitk.Transform, interpolator, default: float) -> sitk.Image:
    """Resample onto `grid`, same pixel type. Integer CTs are interpolated in float and rounded (ITK would truncate)."""
    integer = img.GetPixelID() in _INTEGER_TYPES and interpolator != sitk.sitkNearestNeighbor
    f = sitk.ResampleImageFilter()
    f.SetSize(grid.size)
    f.SetOutputSpacing([grid.spacing] * 3)
    f.SetOutputOrigin(grid.origin)
    f.SetOutputDirection(grid.direction)
    f.SetTransform(transform)
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default))
    f.SetOutputPixelType(sitk.sitkFloat32 if integer else img.GetPixelID())
    out = f.Execute(img)
    if integer:
        arr = sitk.GetArrayViewFromImage(out)
        dtype = sitk.GetArrayViewFromImage(img).dtype
        rounded = sitk.GetImageFromArray(np.clip(np.rint(arr), np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype))
        rounded.CopyInformation(out)
        out = rounded
    return out


_INTEGER_TYPES = (sitk.sitkInt8, sitk.sitkUInt8, sitk.sitkInt16, sitk.sitkUInt16, sitk.sitkInt32, sitk.sitkUInt32,
                  sitk.sitkInt64, sitk.sitkUInt64)
