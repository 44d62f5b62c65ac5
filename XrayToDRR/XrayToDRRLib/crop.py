"""Cropping a CT and its label map to chosen labels, and mirroring right-sided anatomy to the left.

Mirror plane: the sagittal plane x = x_c in RAS through the geometric centre of the *uncropped* CT (its field of
view is centred on the patient, so this approximates the mid-sagittal plane). The mirror is exact (no resampling):
voxels are flipped along the index axis closest to RAS x and the geometry is rewritten, so the direction matrix
keeps its handedness and every voxel lands at its mirror position.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .progress import Progress
from .volumes import LPS_TO_RAS, center_ras, check_labels, check_same_grid


def label_box(labels: sitk.Image, wanted: list[int], padding_mm: float = 0.0) -> tuple[list[int], list[int]]:
    """Index box (start, size) of the wanted labels grown by `padding_mm` on every side (rounded up to whole
    voxels per axis) and clipped to the image."""
    mask = np.isin(sitk.GetArrayViewFromImage(labels), wanted)
    lo, hi = [], []
    for axis in (2, 1, 0):  # numpy axes are (z, y, x), SimpleITK indices (x, y, z)
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not hits.size:
            raise InputError(f"labels {wanted} are empty")
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]))
    pad = [math.ceil(padding_mm / s - 1e-6) for s in labels.GetSpacing()]
    start = [max(0, l - p) for l, p in zip(lo, pad)]
    stop = [min(n - 1, h + p) for h, p, n in zip(hi, pad, labels.GetSize())]
    return start, [b - a + 1 for a, b in zip(start, stop)]


def crop(ct: sitk.Image, labels: sitk.Image, wanted: list[int] | None = None, padding_mm: float = 10.0,
         mirror: bool = False, path=None, progress: Progress | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Crop CT and label map (same grid) to the wanted labels' box plus padding; optionally mirror both.
    The cropped label map keeps every label inside the box. `path` names the label file in error messages."""
    progress = progress or Progress()
    if padding_mm < 0:
        raise InputError(f"--padding must be >= 0 mm, got {padding_mm:g}", None, "give a padding of 0 or more mm")
    check_same_grid(ct, labels, path)
    wanted = check_labels(labels, wanted, path)
    start, size = label_box(labels, wanted, padding_mm)
    progress.log(f"crop box: index {start}, size {size} voxels")
    ct_box, labels_box = (sitk.RegionOfInterest(img, size, start) for img in (ct, labels))
    progress.update(0.5, "cropped")
    if mirror:
        plane_x = float(center_ras(ct)[0])
        ct_box, labels_box = mirror_x(ct_box, plane_x), mirror_x(labels_box, plane_x)
        progress.log(f"mirrored across RAS x = {plane_x:.1f} mm")
    progress.update(1.0, "cropped")
    return ct_box, labels_box


def mirror_x(img: sitk.Image, plane_x: float = 0.0) -> sitk.Image:
    """Mirror an image across the RAS plane x = plane_x (right <-> left), exactly and with a valid geometry."""
    # Reflection in LPS: x -> 2c - x with c = -plane_x (LPS x = -RAS x).
    reflect = np.diag([-1.0, 1.0, 1.0])
    shift = np.array([-2.0 * plane_x, 0.0, 0.0])
    d = np.array(img.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(d[0])))  # index axis closest to x: flipping it restores the handedness
    n = img.GetSize()[axis]
    direction = reflect @ d
    origin = reflect @ np.array(img.GetOrigin()) + shift + direction[:, axis] * img.GetSpacing()[axis] * (n - 1)
    direction[:, axis] *= -1
    arr = np.flip(sitk.GetArrayViewFromImage(img), axis=2 - axis)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=img.GetNumberOfComponentsPerPixel() > 1)
    out.SetSpacing(img.GetSpacing())
    out.SetOrigin(origin.tolist())
    out.SetDirection(direction.ravel().tolist())
    return out


def label_centroid_ras(labels: sitk.Image, wanted: list[int] | None = None) -> np.ndarray:
    """RAS centroid (mm) of the wanted labels' voxels (all labels by default)."""
    arr = sitk.GetArrayViewFromImage(labels)
    k, j, i = np.nonzero(np.isin(arr, wanted) if wanted else arr != 0)
    d = np.array(labels.GetDirection()).reshape(3, 3)
    lps = np.array(labels.GetOrigin()) + d @ (np.array(labels.GetSpacing()) * np.array([i, j, k]).mean(axis=1))
    return LPS_TO_RAS[:3, :3] @ lps
