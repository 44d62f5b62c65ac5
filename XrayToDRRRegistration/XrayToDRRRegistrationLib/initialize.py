"""Initial poses for registration: exactly one initialiser per run.

- `--init-pose FILE`: a pose.json or a previous registration's parameters.pt; its camera (world_from_camera) is
  kept and its detector replaced by the X-ray's.
- `--init-view ap|pa|lateral|right-lateral|auto`: a global pose search (`search.py`) about that standard view
  (`XrayToDRRLib.pose.standard_view`, centred on the volume centre); `auto` searches AP, PA and both laterals.
  With `--no-search`: the standard view itself, the source at the DICOM DistanceSourceToPatient when the file has
  one, else at half the SDD.
- `--init-dicom`: the C-arm angles of the DICOM file: PositionerPrimaryAngle (LAO +, RAO -, about the patient's
  long axis; 0 = beam from posterior to anterior, detector anterior) and PositionerSecondaryAngle (cranial +,
  caudal -) give the beam direction, DistanceSourceToPatient the source's distance from the isocentre (else
  SDD / EstimatedRadiographicMagnificationFactor, else SDD / 2). The isocentre is taken at the volume centre
  (a DICOM header does not relate the patient to the CT). Image rows run towards the patient's feet unless
  PatientOrientation says otherwise. This inverts `XrayToDRRLib.dicom.positioner_angles`. The global search runs
  about that pose (distances are often missing, or refer to the isocentre, not the CT), unless `--no-search`.
- `--init-landmarks POINTS.json`: at least 4 matching 2D/3D points,
      {"points": [{"pixel": [col, row], "ras": [x, y, z]}, ...]}
  with `pixel` the 0-based (column, row) of the X-ray file as stored (before --crop) and `ras` in the CT's RAS mm
  (Slicer's coordinates). The pose comes from a perspective-n-point solve with the X-ray's pinhole intrinsics:
  EPnP (non-coplanar points) or a plane homography (coplanar points) on minimal samples inside a seeded RANSAC
  loop, then Levenberg-Marquardt on the reprojection error of all inliers.
- `--model CKPT`: a pose-regression network (`initial_pose_from_model`; not available yet).

`--warp TFM [--invert]`: the initial pose is given in another frame (e.g. the reference CT of `xraytodrr
coregister`); the SimpleITK transform maps that frame's points onto the volume's (ITK's fixed -> moving
convention, as coregister writes it) and is applied to the pose; --invert applies its inverse. It must be rigid
(or an affine whose linear part is a rotation).

Every initial pose is checked: rigid, finite, and the volume centre in front of the source.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import SimpleITK as sitk

from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.pose import STANDARD_VIEWS, Pose, load_pose, look_at, standard_view
from XrayToDRRLib.volumes import LPS_TO_RAS, center_ras
from XrayToDRRLib.xray import Xray

from .preprocess import PreparedXray

KINDS = ("model", "pose", "view", "dicom", "landmarks")
AUTO_VIEWS = ("ap", "pa", "lateral", "right-lateral")  # --init-view auto: the views a clinician could have taken
VIEW_CHOICES = tuple(STANDARD_VIEWS) + ("auto",)
SEARCHED = ("view", "dicom")  # initialisers that give a direction but no trustworthy distance or offset
FLAGS = {"model": "--model", "pose": "--init-pose", "view": "--init-view", "dicom": "--init-dicom",
         "landmarks": "--init-landmarks"}


@dataclasses.dataclass
class Initializer:
    kind: str
    value: str | None = None   # the file, view name or checkpoint (None for dicom)

    def describe(self) -> str:
        return f"{FLAGS[self.kind]}{'' if self.value is None else ' ' + str(self.value)}"


def choose_initializer(model=None, init_pose=None, init_view=None, init_dicom: bool = False,
                       init_landmarks=None) -> Initializer:
    """Exactly one of the initialisers must be given."""
    given = [(k, v) for k, v in (("model", model), ("pose", init_pose), ("view", init_view),
                                 ("dicom", True if init_dicom else None), ("landmarks", init_landmarks))
             if v is not None and v is not False]
    if len(given) != 1:
        names = ", ".join(FLAGS[k] for k, _ in given) if given else "none"
        raise InputError(f"give exactly one initialiser (got {names})", None,
                         "pass one of --model, --init-pose, --init-view, --init-dicom, --init-landmarks")
    kind, value = given[0]
    if kind == "view" and str(value).lower() not in VIEW_CHOICES:
        raise InputError(f"unknown view '{value}'", None, f"use --init-view {' | '.join(VIEW_CHOICES)}")
    if kind in ("pose", "landmarks", "model"):
        require_file(value, {"pose": "initial pose", "landmarks": "landmarks file", "model": "checkpoint"}[kind])
    return Initializer(kind, None if kind == "dicom" else str(value).lower() if kind == "view" else str(value))


def initial_pose(init: Initializer, prepared: PreparedXray, volume: sitk.Image, device="auto",
                 warp: np.ndarray | None = None, log=print, seed: int = 0) -> tuple[Pose, dict]:
    """The initial pose for one prepared X-ray (its detector), with notes about how it was found."""
    detector = prepared.detector
    info: dict = {"initializer": init.describe()}
    if init.kind == "pose":
        pose = with_camera(detector, load_pose(init.value).world_from_camera)
    elif init.kind == "view":
        view = AUTO_VIEWS[0] if init.value == "auto" else init.value
        pose = pose_from_view(view, volume, detector, distance_source_to_patient(prepared.xray))
    elif init.kind == "dicom":
        pose = pose_from_dicom(prepared.xray, volume, detector)
    elif init.kind == "landmarks":
        pose, found = pose_from_landmarks(init.value, detector, crop=prepared.crop, seed=seed)
        info.update(found)
        log(f"landmarks: {found['inliers']}/{found['points']} inliers, RMS reprojection {found['rms_px']:.2f} px")
    else:
        pose = with_camera(detector, initial_pose_from_model(prepared.xray, init.value, volume, device)
                           .world_from_camera)
    if warp is not None:
        pose = with_camera(pose, warp @ pose.world_from_camera)
    return check_initial_pose(pose, volume, init.value if init.kind == "pose" else None), info


def nominal_poses(init: Initializer, start: Pose, volume: sitk.Image) -> dict[str, Pose]:
    """View name -> the pose the global search turns about: every AUTO_VIEWS for `--init-view auto`, else the
    initial pose itself (a standard view, or the DICOM's angles)."""
    if init.kind == "view" and init.value == "auto":
        return {view: pose_from_view(view, volume, start) for view in AUTO_VIEWS}
    return {init.value if init.kind == "view" else "dicom": start}


def with_camera(detector: Pose, world_from_camera) -> Pose:
    return dataclasses.replace(detector, world_from_camera=np.asarray(world_from_camera, dtype=np.float64))


def check_initial_pose(pose: Pose, volume: sitk.Image, source=None) -> Pose:
    pose.validate(source)
    depth = float(pose.depth(center_ras(volume))[0])
    if depth <= 0:
        raise InputError(f"the volume centre is behind the X-ray source (depth {depth:.1f} mm along the beam)", source,
                         "give an initial pose whose camera looks at the CT (check the pose's frame, or --warp)")
    return pose


# --- view and DICOM -----------------------------------------------------------------------------------------------
def distance_source_to_patient(xray: Xray) -> float | None:
    meta = xray.metadata or {}
    try:
        dsp = float(meta.get("DistanceSourceToPatient"))
        if math.isfinite(dsp) and dsp > 0:
            return dsp
    except (TypeError, ValueError):
        pass
    try:
        mag = float(meta.get("EstimatedRadiographicMagnificationFactor"))
        if math.isfinite(mag) and mag >= 1 and xray.sdd:
            return float(xray.sdd) / mag
    except (TypeError, ValueError):
        pass
    return None


def pose_from_view(view: str, volume: sitk.Image, detector: Pose, source_to_isocenter: float | None = None) -> Pose:
    pose = standard_view(view, center_ras(volume), detector.sdd, detector.height, detector.width, detector.delx,
                         detector.dely, source_to_isocenter)
    return with_camera(detector, pose.world_from_camera)


_LETTER_RAS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}


def _orientation_vector(code: str) -> np.ndarray | None:
    v = np.zeros(3)
    for letter in str(code).upper():
        if letter in _LETTER_RAS:
            v += _LETTER_RAS[letter]
    return v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else None


def beam_direction(primary_deg: float, secondary_deg: float) -> np.ndarray:
    """Unit RAS direction source -> detector for DICOM positioner angles (inverse of dicom.positioner_angles)."""
    p, s = math.radians(primary_deg), math.radians(secondary_deg)
    return np.array([-math.sin(p) * math.cos(s), math.cos(p) * math.cos(s), math.sin(s)])


def pose_from_dicom(xray: Xray, volume: sitk.Image, detector: Pose) -> Pose:
    path = xray.path
    if (xray.metadata or {}).get("format") != "DICOM":
        raise InputError("--init-dicom needs a DICOM X-ray", path, "use --init-view or --init-pose for other files")
    angles = []
    for keyword in ("PositionerPrimaryAngle", "PositionerSecondaryAngle"):
        value = xray.metadata.get(keyword)  # the file's (read_xray), or one frame's own of a multi-frame run
        try:
            angles.append(float(value))
        except (TypeError, ValueError):
            angles.append(None)
    if angles[0] is None:
        raise InputError("DICOM has no PositionerPrimaryAngle (0018,1510)", path,
                         "use --init-view ap|pa|lateral or --init-pose instead of --init-dicom")
    secondary = angles[1] if angles[1] is not None else 0.0
    beam = beam_direction(angles[0], secondary)
    iso = center_ras(volume)
    dsp = distance_source_to_patient(xray) or detector.sdd / 2
    # Rows run along the PatientOrientation row direction when the file says so, else towards the feet.
    up = np.array([0.0, 0.0, 1.0])
    codes = (xray.metadata or {}).get("PatientOrientation")
    if isinstance(codes, (list, tuple)) and len(codes) == 2:
        row_dir = _orientation_vector(codes[1])
        if row_dir is not None and abs(row_dir @ beam) < 0.9:
            up = -row_dir
    if abs(up @ beam) > 0.95:  # looking along the long axis: let the top of the image be anterior
        up = np.array([0.0, 1.0, 0.0])
    pose = look_at(iso - dsp * beam, iso, up, detector.sdd, detector.height, detector.width, detector.delx,
                   detector.dely)
    return with_camera(detector, pose.world_from_camera)


def initial_pose_from_model(xray: Xray, ckpt, volume, device) -> Pose:
    """Hook for the pose-regression initialiser (trained by `xraytodrr train`): predict world_from_camera from
    the X-ray (`predict_pose.initial_pose_from_model`; the pose carries the X-ray's own detector)."""
    from .predict_pose import initial_pose_from_model as predict

    return predict(xray, ckpt, volume, device)


# --- warp -----------------------------------------------------------------------------------------------------------
def read_warp(path, invert: bool = False) -> np.ndarray:
    """4x4 RAS matrix of a rigid SimpleITK transform file (inverted with `invert`)."""
    p = require_file(path, "warp transform")
    try:
        tfm = sitk.ReadTransform(str(p))
    except RuntimeError:
        raise InputError("cannot read as an ITK transform", p, "give a .tfm/.txt/.h5 written by SimpleITK or Slicer") \
            from None
    if tfm.GetDimension() != 3:
        raise InputError("transform is not 3D", p, "give a 3D rigid transform")
    m = _as_matrix(tfm, p)
    ras = LPS_TO_RAS @ m @ LPS_TO_RAS
    r = ras[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-4) or np.linalg.det(r) <= 0:
        raise InputError("warp is not rigid (a pose can only be moved rigidly)", p,
                         "give a rigid (Euler/versor) transform, e.g. from `xraytodrr coregister` without --affine")
    return np.linalg.inv(ras) if invert else ras


def _as_matrix(tfm: sitk.Transform, p) -> np.ndarray:
    """LPS 4x4 of a (composite of) linear transform(s): x -> A (x - c) + c + t."""
    if tfm.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tfm)
        m = np.eye(4)
        for k in range(comp.GetNumberOfTransforms()):  # ITK applies the last added first
            m = m @ _as_matrix(comp.GetNthTransform(k), p)
        return m
    if tfm.GetName() == "IdentityTransform":
        return np.eye(4)
    try:
        linear = sitk.AffineTransform(tfm) if tfm.GetName() == "AffineTransform" else None
        if linear is None:
            for cls in (sitk.Euler3DTransform, sitk.VersorRigid3DTransform, sitk.Similarity3DTransform,
                        sitk.TranslationTransform, sitk.ScaleVersor3DTransform):
                try:
                    linear = cls(tfm)
                    break
                except (RuntimeError, TypeError):
                    continue
        if linear is None:
            raise RuntimeError
    except RuntimeError:
        raise InputError(f"unsupported transform type {tfm.GetName()}", p, "give a rigid transform") from None
    if isinstance(linear, sitk.TranslationTransform):
        a, c, t = np.eye(3), np.zeros(3), np.array(linear.GetOffset())
    else:
        a = np.array(linear.GetMatrix()).reshape(3, 3)
        c, t = np.array(linear.GetCenter()), np.array(linear.GetTranslation())
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = -a @ c + c + t
    return m


# --- landmarks and perspective-n-point ---------------------------------------------------------------------------
def read_landmarks(path) -> tuple[np.ndarray, np.ndarray]:
    """(N,2) pixels (col, row) and (N,3) RAS points from a landmarks JSON file."""
    p = require_file(path, "landmarks file")
    fix = 'write {"points": [{"pixel": [col, row], "ras": [x, y, z]}, ...]} with at least 4 points'
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", p, fix) from None
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list):
        raise InputError("has no 'points' list", p, fix)
    try:
        pixels = np.array([[float(v) for v in q["pixel"]] for q in points], dtype=np.float64).reshape(-1, 2)
        ras = np.array([[float(v) for v in q["ras"]] for q in points], dtype=np.float64).reshape(-1, 3)
    except (KeyError, TypeError, ValueError):
        raise InputError("every point needs 'pixel' [col, row] and 'ras' [x, y, z] numbers", p, fix) from None
    if len(pixels) != len(ras) or not (np.all(np.isfinite(pixels)) and np.all(np.isfinite(ras))):
        raise InputError("points must be finite numbers", p, fix)
    return pixels, ras


def pose_from_landmarks(path, detector: Pose, crop: int = 0, threshold_px: float | None = None, seed: int = 0,
                        iterations: int = 500) -> tuple[Pose, dict]:
    pixels, ras = read_landmarks(path)
    pixels = pixels - crop
    k = detector.intrinsics()
    threshold = threshold_px if threshold_px is not None else max(2.0, 0.01 * math.hypot(detector.height,
                                                                                            detector.width))
    camera_from_world, inliers, rms = solve_pnp_ransac(pixels, ras, k, threshold, iterations, seed, path)
    world_from_camera = np.linalg.inv(camera_from_world)
    return with_camera(detector, world_from_camera), {
        "points": int(len(pixels)), "inliers": int(inliers.sum()), "rms_px": float(rms),
        "inlier_mask": inliers.tolist(), "ransac_threshold_px": float(threshold)}


def _rank_ratios(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(0)
    s = np.linalg.svd(centred, compute_uv=False)
    return s / max(s[0], 1e-12)


def check_correspondences(pixels: np.ndarray, points: np.ndarray, where=None) -> bool:
    """Raise InputError for fewer than 4 or degenerate correspondences; return True when the 3D points are
    coplanar (solved through a plane homography)."""
    fix = "give at least 4 well-spread landmarks, not all on one line, visible in the X-ray"
    if len(pixels) < 4:
        raise InputError(f"perspective-n-point needs at least 4 landmarks, got {len(pixels)}", where, fix)
    r3 = _rank_ratios(points)
    if r3[1] < 1e-3:
        raise InputError("the 3D landmarks are collinear (degenerate)", where, fix)
    if _rank_ratios(pixels)[1] < 1e-3:
        raise InputError("the 2D landmarks are collinear (the source lies in their plane: degenerate)", where, fix)
    if len(np.unique(np.round(points, 6), axis=0)) < 4 or len(np.unique(np.round(pixels, 6), axis=0)) < 4:
        raise InputError("fewer than 4 distinct landmarks", where, fix)
    return bool(r3[2] < 1e-3)


def _rodrigues(r: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (plain numpy: this runs inside least-squares loops)."""
    theta = float(np.linalg.norm(r))
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(theta) * kx + (1.0 - math.cos(theta)) * (kx @ kx)


def _rotvec(m: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(m).as_rotvec()


def _project(r: np.ndarray, t: np.ndarray, points: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = points @ r.T + t
    uvw = cam @ k.T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


def reprojection_errors(m: np.ndarray, pixels: np.ndarray, points: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Pixel distance per point for camera_from_world `m` (infinite for points behind the source)."""
    uv, depth = _project(m[:3, :3], m[:3, 3], points, k)
    err = np.linalg.norm(uv - pixels, axis=1)
    return np.where(depth > 0, err, np.inf)


def _procrustes(world: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Rigid camera_from_world (4x4) that best maps `world` onto `cam` (Kabsch)."""
    mw, mc = world.mean(0), cam.mean(0)
    u, _, vt = np.linalg.svd((cam - mc).T @ (world - mw))
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, 1.0, d]) @ vt
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, mc - r @ mw
    return m


def _epnp(rays: np.ndarray, points: np.ndarray) -> list[np.ndarray]:
    """EPnP (Lepetit et al. 2009) for non-coplanar points: candidate camera_from_world matrices (N = 1, 2, 3)."""
    n = len(points)
    c0 = points.mean(0)
    _, s, vt = np.linalg.svd(points - c0, full_matrices=False)
    controls = np.vstack([c0, c0 + (s[:, None] / math.sqrt(n)) * vt])             # (4,3)
    basis = (controls[1:] - c0).T
    alphas = np.linalg.solve(basis, (points - c0).T).T
    alphas = np.hstack([1.0 - alphas.sum(1, keepdims=True), alphas])             # (n,4)
    m = np.zeros((2 * n, 12))
    for j in range(4):
        m[0::2, 3 * j] = alphas[:, j]
        m[0::2, 3 * j + 2] = -alphas[:, j] * rays[:, 0]
        m[1::2, 3 * j + 1] = alphas[:, j]
        m[1::2, 3 * j + 2] = -alphas[:, j] * rays[:, 1]
    _, vecs = np.linalg.eigh(m.T @ m)
    v = [vecs[:, k].reshape(4, 3) for k in range(4)]                             # smallest eigenvalues first
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    rho = np.array([np.sum((controls[a] - controls[b]) ** 2) for a, b in pairs])
    dv = [np.array([v[k][a] - v[k][b] for a, b in pairs]) for k in range(3)]     # (6,3) each
    candidates = []

    def from_betas(betas):
        ctrl = sum(b * v[k] for k, b in enumerate(betas))
        cam = alphas @ ctrl
        if np.mean(cam[:, 2]) < 0:
            cam = -cam
        return _procrustes(points, cam)

    # N = 1
    d1 = np.linalg.norm(dv[0], axis=1)
    beta = float(d1 @ np.sqrt(rho) / max(d1 @ d1, 1e-12))
    candidates.append(from_betas([beta]))
    # N = 2: unknowns b11, b12, b22
    l2 = np.stack([np.sum(dv[0] ** 2, 1), 2 * np.sum(dv[0] * dv[1], 1), np.sum(dv[1] ** 2, 1)], 1)
    b = np.linalg.lstsq(l2, rho, rcond=None)[0]
    if b[0] > 0:
        b1 = math.sqrt(b[0])
        candidates.append(from_betas([b1, b[1] / b1]))
    # N = 3: unknowns b11, b12, b13, b22, b23, b33
    l3 = np.stack([np.sum(dv[0] ** 2, 1), 2 * np.sum(dv[0] * dv[1], 1), 2 * np.sum(dv[0] * dv[2], 1),
                   np.sum(dv[1] ** 2, 1), 2 * np.sum(dv[1] * dv[2], 1), np.sum(dv[2] ** 2, 1)], 1)
    b = np.linalg.lstsq(l3, rho, rcond=None)[0]
    if b[0] > 0:
        b1 = math.sqrt(b[0])
        candidates.append(from_betas([b1, b[1] / b1, b[2] / b1]))
    return candidates


def _homography_pnp(rays: np.ndarray, points: np.ndarray) -> list[np.ndarray]:
    """Coplanar points: plane-to-image homography (normalised DLT) decomposed into camera_from_world."""
    c = points.mean(0)
    _, _, vt = np.linalg.svd(points - c)
    e = vt.T.copy()
    if np.linalg.det(e) < 0:
        e[:, 2] = -e[:, 2]
    plane = (points - c) @ e[:, :2]
    # Hartley normalisation of both point sets
    def norm(x):
        mu = x.mean(0)
        sc = math.sqrt(2) / max(np.mean(np.linalg.norm(x - mu, axis=1)), 1e-12)
        t = np.array([[sc, 0, -sc * mu[0]], [0, sc, -sc * mu[1]], [0, 0, 1]])
        return (np.hstack([x, np.ones((len(x), 1))]) @ t.T), t
    p, tp = norm(plane)
    q, tq = norm(rays[:, :2])
    a = []
    for (x, y, _), (u, v, _) in zip(p, q):
        a.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
        a.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
    h = np.linalg.svd(np.array(a))[2][-1].reshape(3, 3)
    h = np.linalg.inv(tq) @ h @ tp
    lam = 2.0 / (np.linalg.norm(h[:, 0]) + np.linalg.norm(h[:, 1]))
    out = []
    for sign in (1.0, -1.0):
        r1, r2, t = sign * lam * h[:, 0], sign * lam * h[:, 1], sign * lam * h[:, 2]
        if t[2] <= 0:
            continue
        u, _, vt2 = np.linalg.svd(np.stack([r1, r2, np.cross(r1, r2)], 1))
        rp = u @ np.diag([1, 1, np.linalg.det(u @ vt2)]) @ vt2
        r = rp @ e.T
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = r, t - r @ c
        out.append(m)
    return out


def _refine(m: np.ndarray, pixels: np.ndarray, points: np.ndarray, k: np.ndarray, max_nfev: int = 200) -> np.ndarray:
    """Levenberg-Marquardt on the pixel reprojection error over (rotation vector, translation)."""
    from scipy.optimize import least_squares

    def residuals(x):
        uv, _ = _project(_rodrigues(x[:3]), x[3:], points, k)
        return (uv - pixels).ravel()

    x0 = np.concatenate([_rotvec(m[:3, :3]), m[:3, 3]])
    method = "lm" if 2 * len(points) >= 6 else "trf"
    sol = least_squares(residuals, x0, method=method, x_scale="jac", max_nfev=max_nfev)
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = _rodrigues(sol.x[:3]), sol.x[3:]
    return out


def solve_pnp(pixels: np.ndarray, points: np.ndarray, k: np.ndarray, max_nfev: int = 200) -> np.ndarray | None:
    """camera_from_world (4x4) from >= 4 correspondences (pixels (N,2) col,row; points (N,3)); no outliers.
    The linear candidates (plane homography, and EPnP for non-coplanar points) are ranked by reprojection
    error; the best is refined by Levenberg-Marquardt."""
    pixels, points = np.asarray(pixels, float), np.asarray(points, float)
    planar = _rank_ratios(points)[2] < 1e-3
    rays = np.hstack([pixels, np.ones((len(pixels), 1))]) @ np.linalg.inv(k).T
    # Nearly coplanar points make EPnP ill-conditioned: the plane homography is tried for them as well.
    candidates = _homography_pnp(rays, points)
    if not planar:
        candidates += _epnp(rays, points)
    scored = []
    for m in candidates:
        if np.all(np.isfinite(m)):
            err = reprojection_errors(m, pixels, points, k)
            scored.append((float(np.mean(np.minimum(err, 1e6) ** 2)), m))
    if not scored:
        return None
    scored.sort(key=lambda item: item[0])
    best, best_err = None, np.inf
    for _, m in scored[:2]:  # the two best linear solutions (planar scenes have a mirror ambiguity)
        refined = _refine(m, pixels, points, k, max_nfev)
        err = float(np.mean(reprojection_errors(refined, pixels, points, k) ** 2))
        if err < best_err:
            best, best_err = refined, err
    return best


def solve_pnp_ransac(pixels, points, k, threshold_px: float, iterations: int = 500, seed: int = 0, where=None):
    """RANSAC over minimal samples of 4; returns (camera_from_world, inlier mask, RMS px of the inliers)."""
    pixels, points = np.asarray(pixels, float), np.asarray(points, float)
    check_correspondences(pixels, points, where)
    n = len(pixels)
    rng = np.random.default_rng(seed)
    best_m, best_in, best_err = None, None, np.inf
    needed, tried = iterations, 0
    samples = [np.arange(n)] if n == 4 else []
    while tried < min(needed, iterations) or (best_m is None and tried < 4 * iterations):
        sample = samples.pop() if samples else rng.choice(n, 4, replace=False)
        tried += 1
        if _rank_ratios(points[sample])[1] < 1e-3 or _rank_ratios(pixels[sample])[1] < 1e-3:
            continue
        m = solve_pnp(pixels[sample], points[sample], k, max_nfev=30)
        if m is None:
            continue
        err = reprojection_errors(m, pixels, points, k)
        inliers = err < threshold_px
        score = np.mean(np.minimum(err, threshold_px) ** 2)
        if best_in is None or inliers.sum() > best_in.sum() or (inliers.sum() == best_in.sum() and score < best_err):
            best_m, best_in, best_err = m, inliers, score
            w = inliers.mean()
            if w >= 1.0:
                break
            if w > 0:  # adaptive number of samples for 99.9 % confidence
                needed = int(math.ceil(math.log(1e-3) / math.log(max(1e-12, 1 - w ** 4))))
    if best_m is None or best_in.sum() < 4:
        raise InputError("no pose agrees with at least 4 landmarks (all samples degenerate or inconsistent)", where,
                         "check that each pixel matches its RAS point (col, row order) and the X-ray's geometry")
    m, inliers = best_m, best_in
    for _ in range(3):  # refine on the inliers, then re-select them
        m = solve_pnp(pixels[inliers], points[inliers], k) if inliers.sum() >= 4 else m
        err = reprojection_errors(m, pixels, points, k)
        new = err < threshold_px
        if new.sum() < 4 or np.array_equal(new, inliers):
            break
        inliers = new
    err = reprojection_errors(m, pixels, points, k)
    rms = float(np.sqrt(np.mean(err[inliers] ** 2)))
    return m, inliers, rms
