"""Predict the canonical C-arm pose of an X-ray with a trained pose regressor (the registration's initial pose).

1. The X-ray is resampled onto the detector the network was trained on (its checkpoint's `frame.detector`: square,
   `height` pixels of `delx` mm at `sdd`): each training-detector pixel takes the X-ray value along the same ray
   from the source (a change of intrinsics only, so the pose it shows is unchanged), after an anti-aliasing
   reduction when the X-ray is finer; pixels outside the X-ray are 0.
2. It is normalised exactly as the DRRs were in training (`model.preprocess`).
3. The network's DiffDRR pose becomes a canonical world_from_camera through `diffdrr_frames.from_diffdrr_extrinsic`
   with the checkpoint's frame (orientation, reverse_x_axis) and the CT's volume centre as isocentre.
4. The returned Pose carries the X-ray's own detector (sdd, size, pixel spacing).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from XrayToDRRLib import diffdrr_frames as frames
from XrayToDRRLib.errors import InputError
from XrayToDRRLib.pose import Pose
from XrayToDRRLib.render import pick_device
from XrayToDRRLib.volumes import center_ras, read_volume
from XrayToDRRLib.xray import Xray, read_xray, require_geometry

from .model import load_checkpoint, model_from_checkpoint, preprocess


def resample_to_detector(pixels, source: Pose, target: Pose) -> torch.Tensor:
    """(H, W) image on `source`'s detector -> (1, 1, h, w) on `target`'s detector, ray for ray (both cameras
    share the source position and axes; only the intrinsics differ)."""
    img = torch.as_tensor(np.asarray(pixels, dtype=np.float32))[None, None]
    # Source pixels per target pixel along each axis: reduce first when the X-ray is finer (no aliasing).
    scale_x = (target.delx / target.sdd) / (source.delx / source.sdd)
    scale_y = (target.dely / target.sdd) / (source.dely / source.sdd)
    if scale_x > 1.5 or scale_y > 1.5:
        h = max(2, round(source.height / max(scale_y, 1.0)))
        w = max(2, round(source.width / max(scale_x, 1.0)))
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        source = source.with_detector(height=h, width=w)
    rows, cols = torch.meshgrid(torch.arange(target.height, dtype=torch.float64),
                                torch.arange(target.width, dtype=torch.float64), indexing="ij")
    # Target pixel -> camera ray (x/z, y/z) -> source pixel (fractional col, row).
    x = ((cols - (target.width - 1) / 2) * target.delx + target.x0) / target.sdd
    y = ((rows - (target.height - 1) / 2) * target.dely + target.y0) / target.sdd
    col = (x * source.sdd - source.x0) / source.delx + (source.width - 1) / 2
    row = (y * source.sdd - source.y0) / source.dely + (source.height - 1) / 2
    grid = torch.stack([col / max(source.width - 1, 1) * 2 - 1, row / max(source.height - 1, 1) * 2 - 1], -1)
    return F.grid_sample(img, grid[None].float(), mode="bilinear", padding_mode="zeros", align_corners=True)


def _as_xray(xray) -> Xray:
    return require_geometry(xray if isinstance(xray, Xray) else read_xray(xray))


def _as_volume(volume):
    return read_volume(volume) if isinstance(volume, (str, Path)) else volume


@functools.lru_cache(maxsize=2)
def _cached_model(path: str, mtime: float, device: str):
    ckpt = load_checkpoint(path, device)
    return ckpt, model_from_checkpoint(ckpt, device, path)


def load_predictor(ckpt: str | Path, device: str | torch.device = "auto"):
    """(checkpoint dict, network in eval mode on `device`), cached for the last two files asked for."""
    from XrayToDRRLib.errors import require_file

    p = require_file(ckpt, "checkpoint")
    here = pick_device(device)
    return _cached_model(str(p.resolve()), p.stat().st_mtime, str(here))


def network_input(xray: Xray, ckpt: dict) -> torch.Tensor:
    """The X-ray as the network sees it: (1, 1, height, height)."""
    d = ckpt["frame"]["detector"]
    model_detector = Pose(np.eye(4), d["sdd"], d["height"], d["width"], d["delx"], d["dely"], d["x0"], d["y0"])
    xray_detector = Pose(np.eye(4), xray.sdd, xray.height, xray.width, xray.delx, xray.dely)
    img = resample_to_detector(xray.pixels, xray_detector, model_detector)
    return preprocess(img, int(ckpt["config"]["height"]))


def predict_world_from_camera(xray: Xray, ckpt: dict, model: torch.nn.Module, isocenter) -> np.ndarray:
    frame = ckpt["frame"]
    device = next(model.parameters()).device
    with torch.no_grad():
        extrinsic = model(network_input(xray, ckpt).to(device)).matrix[0].double().cpu().numpy()
    world = frames.from_diffdrr_extrinsic(extrinsic, np.asarray(frame["reorient"], dtype=np.float64),
                                          np.asarray(isocenter, dtype=np.float64), bool(frame["reverse_x_axis"]))
    u, _, vt = np.linalg.svd(world[:3, :3])  # float32 network output: snap to the nearest rotation
    world[:3, :3] = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    if not np.all(np.isfinite(world)):
        raise InputError("the network predicted a non-finite pose", None, "check the checkpoint's training log")
    return world


def initial_pose_from_model(xray, ckpt, volume, device: str | torch.device = "auto") -> Pose:
    """Canonical pose of `xray` (an Xray or a path) predicted by the checkpoint `ckpt` (a path) for the CT `volume`
    (a SimpleITK image or a path), with the X-ray's own detector geometry."""
    xray = _as_xray(xray)
    checkpoint, model = load_predictor(ckpt, device)
    isocenter = center_ras(_as_volume(volume))
    world = predict_world_from_camera(xray, checkpoint, model, isocenter)
    pose = Pose(world, xray.sdd, xray.height, xray.width, xray.delx, xray.dely)
    return pose.validate()


def pose_error(a: Pose, b: Pose) -> tuple[float, float]:
    """(angle between the two cameras' orientations in degrees, distance between their sources in mm)."""
    r = a.rotation.T @ b.rotation
    angle = math.degrees(math.acos(float(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))
    return angle, float(np.linalg.norm(a.source - b.source))
