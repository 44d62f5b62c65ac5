"""`xraytodrr evaluate`: how good is a registration? Image metrics always; pose errors when the true pose is known.

Image metrics (each image rescaled to [0, 1] by its own min and max first), DRR against the X-ray (gt.png):
MSE (lower is better), SSIM (higher; skimage, data_range 1), NMI (higher; skimage's normalized_mutual_information,
1 = independent, 2 = identical), NCC (higher; Pearson correlation, 1 = identical up to a linear map).

Pose errors (true pose from --gt-pose, else `X.pose.json` beside the registered X-ray X.dcm, as `simulate-xray`
writes it, else a `pose.json` in the X-ray's folder), for the initial and the final pose:
- `mtre_mm`: mean target registration error: the mean distance between the camera-frame positions of bone points
  under the true and the estimated pose (points: voxel centres with HU > 250, at most 5000, evenly spaced
  through the sorted voxel list, so the same CT always gives the same points; all non-air voxels when the CT
  has no bone);
- `mrpe_mm`: mean reprojection error: the mean distance between the points' projections on the detector plane
  (mm, relative to the detector centre) under the two poses;
- `rotation_deg`: the geodesic angle between the two camera orientations;
- `translation_mm`: the distance between the volume centre's camera-frame positions under the two poses (the
  camera-frame translation error measured at the isocentre, so a pure rotation about the volume centre counts
  as 0); `depth_mm` is its signed component along the beam (+: the estimate puts the volume farther from the
  source); `source_mm` is the distance between the two X-ray source positions.
For a pure translation d of the camera (same orientation) mTRE = translation_mm = source_mm = |d|.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.pose import Pose, load_pose
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.volumes import array_ijk, center_ras, ras_affine, read_volume

from . import results as R

BONE_HU = 250.0
MAX_POINTS = 5000


# --- pose errors ------------------------------------------------------------------------------------------------
def bone_points(volume: sitk.Image, threshold: float = BONE_HU, max_points: int = MAX_POINTS) -> np.ndarray:
    """(N,3) RAS voxel centres with HU > threshold (all non-air voxels if none), deterministically subsampled."""
    hu = array_ijk(volume)
    idx = np.argwhere(hu > threshold)
    if len(idx) == 0:
        idx = np.argwhere(hu > -500)
    if len(idx) == 0:
        idx = np.array([[i, j, k] for i in (0, hu.shape[0] - 1) for j in (0, hu.shape[1] - 1)
                        for k in (0, hu.shape[2] - 1)])
    if len(idx) > max_points:
        idx = idx[np.linspace(0, len(idx) - 1, max_points).round().astype(int)]
    a = ras_affine(volume)
    return idx @ a[:3, :3].T + a[:3, 3]


def _camera(pose: Pose, points: np.ndarray) -> np.ndarray:
    m = pose.camera_from_world
    return points @ m[:3, :3].T + m[:3, 3]


def _detector_mm(pose: Pose, cam: np.ndarray) -> np.ndarray:
    return pose.sdd * cam[:, :2] / cam[:, 2:3] - np.array([pose.x0, pose.y0])


def pose_errors(true: Pose, est: Pose, points: np.ndarray, center) -> dict:
    ct, ce = _camera(true, points), _camera(est, points)
    front = (ct[:, 2] > 0) & (ce[:, 2] > 0)
    rpe = np.linalg.norm(_detector_mm(true, ct[front]) - _detector_mm(est, ce[front]), axis=1)
    r = true.rotation.T @ est.rotation
    angle = math.degrees(math.acos(float(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))
    c = np.asarray(center, dtype=np.float64)[None]
    dc = (_camera(est, c) - _camera(true, c))[0]
    return {
        "mtre_mm": float(np.linalg.norm(ct - ce, axis=1).mean()),
        "mrpe_mm": float(rpe.mean()) if len(rpe) else float("nan"),
        "rotation_deg": angle,
        "translation_mm": float(np.linalg.norm(dc)),
        "depth_mm": float(dc[2]),
        "source_mm": float(np.linalg.norm(true.source - est.source)),
        "points": int(len(points)),
    }


def find_true_pose(settings: dict, gt_pose=None) -> Path | None:
    if gt_pose is not None:
        return require_file(gt_pose, "true pose")
    xray = settings.get("xray")
    if not xray:
        return None
    from XrayToDRRLib.simulate import pose_path_for

    xray = Path(xray)
    for candidate in (pose_path_for(xray), xray.parent / "pose.json"):
        if candidate.is_file():
            return candidate
    return None


# --- image metrics ------------------------------------------------------------------------------------------------
def unit(img) -> np.ndarray:
    img = np.asarray(img, dtype=np.float64)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def image_metrics(gt, img) -> dict:
    from skimage.metrics import mean_squared_error, normalized_mutual_information, structural_similarity

    a, b = unit(gt), unit(img)
    if a.shape != b.shape:
        raise InputError(f"images differ in size: {a.shape} vs {b.shape}", None,
                         "compare images of one registration folder")
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float((da * da).sum() * (db * db).sum()))
    return {
        "mse": float(mean_squared_error(a, b)),
        "ssim": float(structural_similarity(a, b, data_range=1.0)),
        "nmi": float(normalized_mutual_information(a, b, bins=64)),
        "ncc": float((da * db).sum() / den) if den > 0 else 0.0,
    }


def read_png(path) -> np.ndarray:
    p = require_file(path, "image")
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.float64)
    except RuntimeError:
        raise InputError("cannot read image", p, "give a PNG written by xraytodrr register") from None


# --- the verb -----------------------------------------------------------------------------------------------------
def evaluate(data_dir, title_suffix: str = "", gt_name: str = R.GT, output_name: str = "evaluation.png",
             gt_pose=None, volume=None, progress: Progress | None = None) -> list[Path]:
    """Evaluate a registration folder (or every folder of a batch run); returns the files written."""
    progress = progress or Progress()
    folder = require_file(data_dir, "registration folder")
    if not folder.is_dir():
        raise InputError("is not a folder", folder, "give the -o folder of xraytodrr register")
    if not (folder / R.PARAMETERS).exists() and "multiview" in R.read_metrics(folder):
        return evaluate_views(folder, title_suffix, gt_name, output_name, gt_pose, volume, progress)
    if not (folder / R.PARAMETERS).exists() and (folder / R.SUMMARY).exists():
        subs = sorted(p.parent for p in folder.glob(f"*/{R.PARAMETERS}"))
        if not subs:
            raise InputError("batch folder holds no registration results", folder, "rerun xraytodrr register")
        written = []
        for n, sub in enumerate(subs):
            progress.update(n / len(subs), sub.name)
            written += evaluate(sub, title_suffix, gt_name, output_name, gt_pose, volume, Progress())
        progress.update(1.0, "done")
        return written
    return [evaluate_one(folder, title_suffix, gt_name, output_name, gt_pose, volume, progress),
            folder / R.METRICS]


def evaluate_views(folder: Path, title_suffix="", gt_name=R.GT, output_name="evaluation.png", gt_pose=None,
                   volume=None, progress: Progress | None = None) -> list[Path]:
    """A multi-view result (register --multiview): every view's folder evaluated, one figure of all views, and
    the per-view pose errors (in-plane and along each view's beam) in the parent's metrics.json."""
    from .multiview import view_dir
    from .visualize import multiview_figure

    progress = progress or Progress()
    if gt_pose is not None:
        raise InputError("--gt-pose gives one view's true pose, but this is a multi-view result", gt_pose,
                         "drop --gt-pose: each view's X.pose.json beside its X-ray is used")
    n = int(R.read_metrics(folder)["multiview"].get("views", 0))
    subs = [folder / view_dir(k) for k in range(n)]
    missing = [s for s in subs if not (s / R.PARAMETERS).exists()]
    if missing or not subs:
        raise InputError(f"multi-view result lacks {missing[0].name if missing else 'its views'}", folder,
                         "rerun xraytodrr register --multiview")
    written, errors = [], []
    for k, sub in enumerate(subs):
        written.append(evaluate_one(sub, title_suffix, gt_name, output_name, None, volume,
                                    progress.sub(0.9 * k / n, 0.9 * (k + 1) / n)))
        errors.append((R.read_metrics(sub).get("pose_error") or {}).get("final"))
    out = multiview_figure(subs, folder / output_name, folder.resolve().name + (f" {title_suffix}" if title_suffix
                                                                                  else ""), errors)
    per_view = [{"view": k + 1, **({key: e[key] for key in ("mtre_mm", "mrpe_mm", "rotation_deg", "depth_mm",
                                                              "translation_mm")} if e else {}),
                 **({"in_plane_mm": math.sqrt(max(0.0, e["translation_mm"] ** 2 - e["depth_mm"] ** 2))} if e else {})}
                for k, e in enumerate(errors)]
    report = {"evaluation": {"per_view": per_view}}
    if all(errors):
        report["mtre"] = float(np.mean([e["mtre_mm"] for e in errors]))
    R.merge_metrics(folder, report)
    progress.update(1.0, "done")
    return [out, folder / R.METRICS] + written


def evaluate_one(folder: Path, title_suffix="", gt_name=R.GT, output_name="evaluation.png", gt_pose=None,
                 volume=None, progress: Progress | None = None) -> Path:
    from .visualize import evaluation_figure

    progress = progress or Progress()
    params = R.read_parameters(folder / R.PARAMETERS)
    settings = params.get("settings", {}) or {}
    progress.update(0.1, "image metrics")
    gt = read_png(folder / gt_name)
    images = {"init": R.INIT_IMAGE, "final": R.FINAL_IMAGE, "hq": R.HQ_DRR}
    found = {k: read_png(folder / v) for k, v in images.items() if (folder / v).exists()}
    metrics = {k: image_metrics(gt, img) for k, img in found.items()}
    report: dict = {"evaluation": {"gt": gt_name, **metrics}}
    truth_path = find_true_pose(settings, gt_pose)
    errors = None
    if truth_path is not None:
        progress.update(0.4, "pose errors")
        vol_path = volume or settings.get("volume")
        try:
            ct = read_volume(vol_path) if vol_path else None
        except InputError:
            if gt_pose is not None or volume is not None:
                raise
            ct = None
        if ct is None:
            progress.log(f"true pose {truth_path} found but the CT ({vol_path}) is not readable: no mTRE")
        else:
            truth = load_pose(truth_path)
            points, center = bone_points(ct), center_ras(ct)
            errors = {"gt_pose": str(truth_path)}
            for key, entry in (("init", "init"), ("final", "pose")):
                errors[key] = pose_errors(truth, R.pose_from_entry(params[entry]), points, center)
            report["pose_error"] = errors
            report["mtre"] = errors["final"]["mtre_mm"]
    progress.update(0.7, "figure")
    out = folder / output_name
    evaluation_figure(folder, out, gt_name=gt_name, title_suffix=title_suffix, metrics=metrics, pose_errors=errors)
    R.merge_metrics(folder, report)
    progress.update(1.0, "done")
    return out
