"""The X-ray as registration sees it: read with its geometry, cropped, rescaled, optionally background-subtracted
and linearised, with the exposed field (collimation excluded) as a mask, and downsampled per stage.

Steps (in order, all optional except reading and rescaling):
1. `read_xray` (DICOM, PNG + --sdd/--pixel-spacing, NIfTI/NRRD); SDD and pixel spacing are required.
2. `crop`: remove that many pixels from every border (the detector keeps its centre, so the principal point is
   unchanged). xvr's --crop removes that many pixels per dimension in total, half from each side: ours is per side.
3. Rescale to [0, 1] (min/max).
4. `subtract_background`: subtract the most common intensity (the background: air, or the unexposed border) and
   clip below it, then rescale to [0, 1] again (xvr's option, in our dense = bright convention).
5. `linearize`: treat the image as an inverted intensity image D = 1 - I/I0 and return the attenuation-like
   log(2) - log(2 - D) (xvr's log transform with its +1 offset, in our dense = bright convention).
6. `collimator="auto"`: pixels of flat regions connected to the image border (collimator blades, electronic
   shutters, saturated air at the edges) are excluded from the similarity (the mask), so their straight edges do
   not pull the registration. "none" keeps every pixel.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from XrayToDRRLib.errors import InputError
from XrayToDRRLib.fast_render import FastRenderer
from XrayToDRRLib.pose import Pose
from XrayToDRRLib.truncation import cut_rays
from XrayToDRRLib.xray import Xray, read_xray, require_geometry

COLLIMATOR_MODES = ("auto", "none")
MIN_UNCUT_FRACTION = 0.1  # keep the cut rays when leaving them out would leave less than this of the field


@dataclasses.dataclass
class PreparedXray:
    """`image` (H, W) float32 in [0, 1], dense = bright; `mask` (H, W) bool of the pixels to compare (None: all);
    `detector` a Pose whose detector fields describe `image` (its world_from_camera is a placeholder)."""

    image: np.ndarray
    mask: np.ndarray | None
    detector: Pose
    xray: Xray
    crop: int = 0
    original: np.ndarray | None = None  # with --translate: the X-ray before translation (translate_xray.py)

    @property
    def path(self) -> Path | None:
        return self.xray.path

    @property
    def shown(self) -> np.ndarray:
        """The X-ray as shown and evaluated (gt.png, the NCCs): never the translated image the similarity sees."""
        return self.image if self.original is None else self.original


def prepare_xray(path, sdd: float | None = None, pixel_spacing=None, reducefn: str = "max", crop: int = 0,
                 subtract_background: bool = False, linearize: bool = False,
                 collimator: str = "auto", frame: int | None = None) -> PreparedXray:
    """Read an X-ray and prepare it for registration (see the module docstring for the steps); `frame`: that
    frame (0-based) of a multi-frame DICOM instead of `reducefn` over all of them."""
    xray = require_geometry(read_xray(path, sdd=sdd, pixel_spacing=pixel_spacing, reduce=reducefn, frame=frame))
    return prepare_pixels(xray, crop, subtract_background, linearize, collimator)


def prepare_pixels(xray: Xray, crop: int = 0, subtract_background: bool = False, linearize: bool = False,
                   collimator: str = "auto") -> PreparedXray:
    if collimator not in COLLIMATOR_MODES:
        raise InputError(f"unknown collimator mode '{collimator}'", None, f"use one of {', '.join(COLLIMATOR_MODES)}")
    crop = int(crop or 0)
    img = np.asarray(xray.pixels, dtype=np.float64)
    if crop < 0 or 2 * crop >= min(img.shape) - 8:
        raise InputError(f"--crop {crop} leaves no image ({img.shape[0]}x{img.shape[1]} pixels)", xray.path,
                         "crop fewer pixels from each border")
    if crop:
        img = img[crop:-crop, crop:-crop]
    if not np.all(np.isfinite(img)):
        raise InputError("X-ray contains NaN or infinite pixels", xray.path, "give a finite image")
    img = _unit(img)
    if subtract_background:
        img = _unit(np.clip(img - background_level(img), 0.0, None))
    if linearize:
        img = _unit(math.log(2.0) - np.log(2.0 - img))
    if float(img.max() - img.min()) <= 0:
        raise InputError("X-ray is blank (all pixels equal after preprocessing)", xray.path,
                         "give a real X-ray, or drop --subtract-background")
    mask = exposed_field(img) if collimator == "auto" else None
    h, w = img.shape
    detector = Pose(np.eye(4), xray.sdd, h, w, xray.delx, xray.dely)
    return PreparedXray(img.astype(np.float32), mask, detector, xray, crop)


def _unit(img: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(img)), float(np.max(img))
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def background_level(img: np.ndarray, bins: int = 256) -> float:
    """The most common intensity (centre of the fullest of `bins` histogram bins)."""
    counts, edges = np.histogram(img, bins=bins, range=(0.0, 1.0))
    k = int(np.argmax(counts))
    return float((edges[k] + edges[k + 1]) / 2)


def exposed_field(img: np.ndarray, min_fraction: float = 0.3, border_px: int = 2) -> np.ndarray | None:
    """Mask of the exposed field: everything except flat regions that touch the image border.

    A pixel is flat when the intensity range of its 5x5 neighbourhood is below 1 % of the image's range (plus
    three times the noise, estimated from the median absolute Laplacian). Flat border-connected regions larger
    than 0.5 % of the image are excluded and the field is eroded by `border_px` (soft blade edges). Returns None
    (compare every pixel) when nothing is excluded or less than `min_fraction` of the image would remain."""
    img = np.asarray(img, dtype=np.float64)
    noise = 1.4826 * float(np.median(np.abs(ndimage.laplace(img)))) / math.sqrt(20.0)
    spread = ndimage.maximum_filter(img, 5) - ndimage.minimum_filter(img, 5)
    flat = spread < 0.01 * float(img.max() - img.min()) + 3.0 * noise
    labels, n = ndimage.label(flat)
    if n == 0:
        return None
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = ndimage.sum(np.ones_like(img), labels, index=np.arange(1, n + 1))
    big = [k for k in edge if k > 0 and sizes[k - 1] >= 0.005 * img.size]
    if not big:
        return None
    excluded = np.isin(labels, big)
    field = ~ndimage.binary_dilation(excluded, iterations=border_px + 2)  # flat test ate 2 px of the edge
    field = ndimage.binary_opening(field, iterations=2)
    if field.mean() < min_fraction:
        return None
    return field


def stage_detector(detector: Pose, scale: float) -> Pose:
    """The detector downsampled by `scale` (same field of view; at least 8 pixels a side)."""
    h = max(8, int(round(detector.height / scale)))
    w = max(8, int(round(detector.width / scale)))
    return detector.with_detector(height=h, width=w)


def downsampled(prepared: PreparedXray, pixels: int, device) -> tuple[Pose, torch.Tensor, torch.Tensor | None]:
    """(detector, (1,1,h,w) image, mask) at about `pixels` along the longer side (never upsampled)."""
    det = prepared.detector
    small = stage_detector(det, max(1.0, max(det.height, det.width) / pixels))
    image, mask = stage_images(prepared, small.height, small.width, device)
    return small, image, mask


def stage_images(prepared: PreparedXray, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1,1,h,w) image (area-averaged) and mask (pixels wholly inside the field) for one stage."""
    img = torch.as_tensor(prepared.image, dtype=torch.float32)[None, None]
    small = F.interpolate(img, size=(height, width), mode="area") if (height, width) != img.shape[-2:] else img
    mask = None
    if prepared.mask is not None:
        m = torch.as_tensor(prepared.mask, dtype=torch.float32)[None, None]
        m = F.interpolate(m, size=(height, width), mode="area") if (height, width) != m.shape[-2:] else m
        mask = (m > 0.999).float().to(device)
    return small.to(device), mask


def without_cut_rays(renderer: FastRenderer, pose: Pose, level: int, mask, target: torch.Tensor,
                     dilate: bool = True):
    """The stage's field mask less the pixels whose rays cross a cut face of the CT (with `dilate`, widened by a
    pixel: the pose moves a little during the stage), at the stage's starting pose. When that would leave under
    MIN_UNCUT_FRACTION of the field (a CT cut close around the anatomy, seen steeply), the field as it was.
    Returns (mask, the fraction of the field left out)."""
    cut = cut_rays(renderer, pose, level)
    cut = ndimage.binary_dilation(cut, iterations=1) if dilate else cut
    if not cut.any():
        return mask, 0.0
    kept = torch.as_tensor(~cut, dtype=target.dtype, device=target.device)[None, None]
    field = torch.ones_like(target) if mask is None else mask
    new = field * kept
    if float(new.sum()) < MIN_UNCUT_FRACTION * float(field.sum()):
        return mask, 0.0
    return new, 1.0 - float(new.sum()) / float(field.sum())
