"""`xraytodrr register X1 X2 [X3 ...] --multiview rigid-rig|independent`: several views of one patient, one result.

A rig: for each view k its camera relative to the first, `first_camera_from_camera` (4x4, canonical OpenCV
camera axes, mm), so world_from_camera_k = world_from_camera_1 @ first_camera_from_camera_k. It comes from
- `--rig rig.json`: {"views": [{"file": "ap.dcm", "first_camera_from_camera": [[...4 rows...]]}, ...]}, one entry per
  X-ray in the order given on the command line ("file", optional, must then be that X-ray's file name; the first
  view's matrix is the identity); or
- the DICOM headers: each view's camera from its PositionerPrimaryAngle / PositionerSecondaryAngle and
  DistanceSourceToPatient (else SDD / EstimatedRadiographicMagnificationFactor) about a common isocentre
  (`initialize.pose_from_dicom`), relative to the first view's.

Views may be frames of one multi-frame DICOM (a rotational run; `--frames auto | all | 1,5,9`, auto being up to
four evenly spaced frames, the default for a single file): each frame is read on its own with its own C-arm angles
and distances (`XrayToDRRLib.dicom_frames`), and without --rig the rig comes from those angles. Its views are
files, frames and all, in command-line order, each view's metrics.json recording its `source` file and frame.

Modes:
- `rigid-rig`: the views share one patient pose. View 1 is initialised as a single view (any initialiser; the
  global search's candidates are ranked by their similarity over all views, so the rig as a whole picks the basin),
  then `register.optimize` refines one 6-DoF pose against all views at once (mean of the views' similarities, each
  view at its own detector size, collimation mask and preprocessing).
- `independent`: each view is registered on its own (its own initial pose: its own DICOM angles with
  --init-dicom, every standard view with --init-view auto, else view 1's initial pose carried by the rig), then
  `consistency` reports how far the views' poses disagree: with a rig, the patient motion between views (rotation
  deg, translation at the CT centre mm) and, where they agree, one reconciled pose (view 1's camera, the chordal
  mean over the views); without one only what an isocentric C-arm allows (how far the central rays miss each
  other). Above MOVED_DEG / MOVED_MM the result warns that the patient probably moved, and reconciles nothing.

Output folder: metrics.json (mode, rig, per-view and combined metrics, consistency), multiview.png (every view's
X-ray, DRR and overlay), and view-1/, view-2/, ...: each an ordinary single-view result folder (pose.json,
parameters.pt, DRRs, metrics.json), so evaluate, pairs, view3d and animate work on each view.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from XrayToDRRLib.atomic import atomic_dir
from XrayToDRRLib.dicom_frames import choose_frames, number_of_frames
from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.pose import RIGID_TOLERANCE
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.volumes import bounds_ras

from . import results as R
from .batch import RegistrationOptions, Session
from .initialize import SEARCHED, Initializer, check_initial_pose, distance_source_to_patient, pose_from_dicom, \
    with_camera
from .register import Trajectory, optimize

MODES = ("rigid-rig", "independent")
MOVED_DEG, MOVED_MM = 2.0, 5.0
FIGURE = "multiview.png"
RIG_FIX = ('write {"views": [{"file": "ap.dcm", "first_camera_from_camera": 4x4}, ...]}: one entry per X-ray, in '
           'order, each a rigid 4x4 (rotation orthonormal, det +1, last row 0 0 0 1), the first the identity')


def view_dir(k: int) -> str:
    return f"view-{k + 1}"


def view_folders(folder) -> list[Path]:
    """The views' result folders of a multi-view result folder ([] for anything else)."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / R.PARAMETERS).exists():
        return []
    n = int((R.read_metrics(folder).get("multiview") or {}).get("views", 0))
    return [folder / view_dir(k) for k in range(n) if (folder / view_dir(k) / R.POSE).exists()]


@dataclasses.dataclass
class Rig:
    matrices: list[np.ndarray]   # first_camera_from_camera per view (the first: identity)
    source: str                  # where it came from (for metrics.json and the log)
    path: Path | None = None     # the file to name in errors about it

    def to_dict(self) -> dict:
        return {"source": self.source, "first_camera_from_camera": [m.tolist() for m in self.matrices]}


# --- rigs --------------------------------------------------------------------------------------------------------
def check_rigid(m, where, what: str) -> np.ndarray:
    try:
        m = np.asarray(m, dtype=np.float64).reshape(4, 4)
    except (TypeError, ValueError):
        raise InputError(f"{what} is not a 4x4 matrix of numbers", where, RIG_FIX) from None
    r = m[:3, :3]
    if not np.all(np.isfinite(m)) or not np.allclose(m[3], [0, 0, 0, 1]) \
            or not np.allclose(r.T @ r, np.eye(3), atol=RIGID_TOLERANCE) or np.linalg.det(r) <= 0:
        raise InputError(f"{what} is not rigid (rotation must be orthonormal with det +1, last row 0 0 0 1)", where,
                         RIG_FIX)
    return m


def read_rig(path, xrays: list[Path]) -> Rig:
    p = require_file(path, "rig file")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", p, RIG_FIX) from None
    views = data.get("views") if isinstance(data, dict) else None
    if not isinstance(views, list) or not all(isinstance(v, dict) for v in views):
        raise InputError("has no 'views' list of objects", p, RIG_FIX)
    if len(views) != len(xrays):
        raise InputError(f"lists {len(views)} views but {len(xrays)} X-rays were given", p,
                         "give one rig entry per X-ray, in the order of the X-rays on the command line")
    matrices = []
    for k, (view, xray) in enumerate(zip(views, xrays)):
        if view.get("file") is not None and Path(str(view["file"])).name != xray.name:
            raise InputError(f"view {k + 1} is for '{view['file']}' but X-ray {k + 1} is '{xray.name}'", p,
                             "list the views in the order of the X-rays on the command line")
        if "first_camera_from_camera" not in view:
            raise InputError(f"view {k + 1} has no 'first_camera_from_camera'", p, RIG_FIX)
        matrices.append(check_rigid(view["first_camera_from_camera"], p, f"view {k + 1}'s first_camera_from_camera"))
    if not np.allclose(matrices[0], np.eye(4), atol=1e-6):
        raise InputError("the first view's first_camera_from_camera is not the identity", p, RIG_FIX)
    return Rig(matrices, f"rig file {p.name}", p)


def rig_from_dicom(prepared: list, ct) -> Rig:
    """Each view's camera from its DICOM positioner angles and distances, relative to the first view's."""
    cameras = []
    for prep in prepared:
        fix = "give --rig rig.json with each view's camera relative to the first, or use --multiview independent"
        if (prep.xray.metadata or {}).get("format") != "DICOM":
            raise InputError("--multiview rigid-rig without --rig needs DICOM X-rays with C-arm angles", prep.path,
                             fix)
        meta = prep.xray.metadata
        if meta.get("frame") and not meta.get("frame_angles"):
            raise InputError("multi-frame DICOM has no per-frame C-arm angles (neither PositionerPrimaryAngle"
                             "Increment (0018,1520) nor per-frame PositionerPositionSequence (0018,9405)): its "
                             "frames' relative geometry is unknown", prep.path,
                             "give --rig rig.json with one entry per frame, in --frames order, or use --multiview "
                             "independent")
        if meta.get("PositionerPrimaryAngle") is None:
            raise InputError("DICOM has no PositionerPrimaryAngle (0018,1510): the views' relative geometry is "
                             "unknown", prep.path, fix)
        if distance_source_to_patient(prep.xray) is None:
            raise InputError("DICOM has neither DistanceSourceToPatient (0018,1111) nor "
                             "EstimatedRadiographicMagnificationFactor: the source's distance is unknown", prep.path,
                             fix)
        cameras.append(pose_from_dicom(prep.xray, ct, prep.detector).world_from_camera)
    first = np.linalg.inv(cameras[0])
    return Rig([first @ c for c in cameras], "DICOM positioner angles and distances")


def check_sources_outside(poses, ct, where) -> None:
    """Every view's source outside the CT's box (a rig that puts one inside is wrong)."""
    corners = bounds_ras(ct)
    lo, hi = corners.min(0), corners.max(0)
    for k, pose in enumerate(poses):
        s = pose.source
        if np.all(s > lo) and np.all(s < hi):
            raise InputError(f"view {k + 1}'s X-ray source lies inside the CT ({np.round(s, 1).tolist()} mm RAS)",
                             where, "check the rig's translations (mm, camera axes of the first view) and the "
                                    "source distances")


# --- consistency -------------------------------------------------------------------------------------------------
def rotation_angle_deg(r: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def consistency(poses: list, rig: Rig | None, center) -> dict:
    """How far independently registered views disagree about the patient (see the module docstring)."""
    c = np.asarray(center, dtype=np.float64)
    pairs = []
    if rig is not None:
        implied = [p.world_from_camera @ np.linalg.inv(m) for p, m in zip(poses, rig.matrices)]  # view 1's camera
        for j in range(len(poses)):
            for k in range(j + 1, len(poses)):
                motion = implied[k] @ np.linalg.inv(implied[j])
                pairs.append({"views": [j + 1, k + 1], "rotation_deg": round(rotation_angle_deg(motion[:3, :3]), 3),
                              "translation_mm": round(float(np.linalg.norm(motion[:3, :3] @ c + motion[:3, 3] - c)),
                                                      3)})
        rot = max(p["rotation_deg"] for p in pairs)
        trans = max(p["translation_mm"] for p in pairs)
        moved = rot > MOVED_DEG or trans > MOVED_MM
        out = {"rig": rig.source, "measure": "patient motion between the views under the rig",
               "max_rotation_deg": rot, "max_translation_mm": trans, "pairs": pairs, "moved": moved,
               # one patient pose from all views where they agree; a moved patient has none
               "reconciled_view1_world_from_camera": None if moved else mean_pose(implied).tolist()}
    else:
        for j in range(len(poses)):
            for k in range(j + 1, len(poses)):
                pairs.append({"views": [j + 1, k + 1], "ray_miss_mm": round(_ray_miss(poses[j], poses[k]), 3)})
        miss = max(p["ray_miss_mm"] for p in pairs)
        moved = miss > MOVED_MM
        out = {"rig": None, "measure": "distance between the views' central rays (an isocentric C-arm's meet)",
               "max_ray_miss_mm": miss, "pairs": pairs, "moved": moved,
               "cannot_tell": "without a rig, patient rotation and motion along the central rays' common "
                              "perpendicular's complement are not observable; give --rig for the full check"}
    out["warning"] = (f"the views disagree by more than {MOVED_DEG:g} deg / {MOVED_MM:g} mm: the patient probably "
                      "moved between the views (or the X-rays are of different patients or regions)") if moved else ""
    return out


def mean_pose(matrices: list[np.ndarray]) -> np.ndarray:
    """The rigid transform nearest the views' (chordal mean: the summed rotations projected back onto SO(3) by
    SVD, translations averaged)."""
    m = np.stack(matrices)
    u, _, vt = np.linalg.svd(m[:, :3, :3].sum(axis=0))
    r = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, m[:, :3, 3].mean(axis=0)
    return out


def _ray_miss(a, b) -> float:
    """Closest distance between two poses' central rays (lines through the source along the principal ray)."""
    da, db = a.principal_ray, b.principal_ray
    n = np.cross(da, db)
    if np.linalg.norm(n) < 1e-6:  # parallel beams
        d = b.source - a.source
        return float(np.linalg.norm(d - (d @ da) * da))
    return float(abs((b.source - a.source) @ n) / np.linalg.norm(n))


# --- the engine function -----------------------------------------------------------------------------------------
def register_views(xrays: list, options: RegistrationOptions, init: Initializer, output, mode: str = "rigid-rig",
                   rig_path=None, progress: Progress | None = None, session: Session | None = None,
                   frames: str | None = None) -> list[Path]:
    """Register several views of one patient into one result folder `output` (see the module docstring).
    Everything is checked before any work, so bad input writes nothing. `session`: an open Session on the same
    CT and options to reuse (its volume pyramid), e.g. from a Slicer Logic. `frames`: which frames of each
    multi-frame DICOM are views (None: auto for a single file; several files stay one view each). Returns
    [output]."""
    progress = progress or Progress()
    if mode not in MODES:
        raise InputError(f"unknown --multiview '{mode}'", None, f"use --multiview {' | '.join(MODES)}")
    files = [require_file(p, "X-ray") for p in xrays]
    for p in files:
        if p.is_dir():
            raise InputError("--multiview takes X-ray files, not folders", p, "list each view's file")
    if len({p.resolve() for p in files}) != len(files):
        raise InputError("the same X-ray is given twice", files[0], "give each view once")
    paths, frame_of = _views(files, frames)
    if len(paths) < 2:
        raise InputError("--multiview needs at least two views: X-ray files, or frames of a multi-frame DICOM",
                         paths[0] if paths else None,
                         "give every view's X-ray file, --frames with two or more frames, or drop --multiview")
    output = Path(output)
    _check_output(output)
    if session is None:
        session = Session(options, init)
    session.init = init
    prepared = [session.read(p, f) for p, f in zip(paths, frame_of)]
    rig = read_rig(rig_path, paths) if rig_path else None
    if rig is None and mode == "rigid-rig":
        rig = rig_from_dicom(prepared, session.ct)
    if rig is None and all((p.xray.metadata or {}).get("format") == "DICOM" for p in prepared):
        try:  # independent: the DICOM rig, where the files have one, for the consistency check
            rig = rig_from_dicom(prepared, session.ct)
        except InputError:
            rig = None
    starts = _initial_poses(session, paths, frame_of, prepared, rig, mode)
    if rig is not None:
        check_sources_outside([with_camera(prepared[k].detector, starts[0][1].world_from_camera @ m)
                               for k, m in enumerate(rig.matrices)], session.ct, rig.path or paths[0])
    started = time.perf_counter()
    with atomic_dir(output) as tmp:
        if mode == "rigid-rig":
            views = _rigid(session, paths, prepared, starts[0], rig, tmp, progress)
            summary = {"consistency": None}
        else:
            views = _independent(session, paths, prepared, starts, tmp, progress)
            poses = [R.pose_from_entry(R.read_parameters(tmp / view_dir(k))["pose"]) for k in range(len(paths))]
            summary = {"consistency": consistency(poses, rig, session.center)}
        views = [_record_source(tmp / view_dir(k), p, f, v) for k, (p, f, v) in enumerate(zip(paths, frame_of, views))]
        metrics = _combined(mode, rig, views, summary, time.perf_counter() - started)
        for line in [metrics["warning"]] if metrics["warning"] else []:
            progress.log("WARNING: " + line)
        R.write_json(tmp / R.METRICS, R.plain(metrics))
        from .visualize import multiview_figure

        multiview_figure([tmp / view_dir(k) for k in range(len(paths))], tmp / FIGURE,
                         f"{mode}: " + ", ".join(_label(p, f) for p, f in zip(paths, frame_of)))
    progress.update(1.0, "done")
    return [output]


def _views(files: list[Path], frames: str | None) -> tuple[list[Path], list[int | None]]:
    """Each view's file and frame (0-based; None: the file as one image). A single file's frames are views by
    default; with several files only when --frames asks (a single-frame file stays one view)."""
    spec = frames if frames is not None or len(files) != 1 else "auto"
    paths, frame_of = [], []
    for p in files:
        n = number_of_frames(p) if spec is not None else 1
        chosen = choose_frames(spec, n, p) if n > 1 else [None]
        paths += [p] * len(chosen)
        frame_of += chosen
    return paths, frame_of


def _label(path: Path, frame: int | None) -> str:
    return path.name if frame is None else f"{path.name} frame {frame + 1}"


def _record_source(folder: Path, path: Path, frame: int | None, row: dict) -> dict:
    """The view's file and frame (1-based; None for a file read as one image) in its metrics.json and its row."""
    source = {"file": str(path), "frame": None if frame is None else frame + 1}
    R.write_json(folder / R.METRICS, R.plain({**R.read_metrics(folder), "source": source}))
    return {**row, "frame": source["frame"]}


def _check_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise InputError("output exists and is a file", output, "give a folder path for -o")
    if output.exists() and any(output.iterdir()) and "multiview" not in R.read_metrics(output):
        raise InputError("output folder is not empty and is not a multi-view registration result (it would be "
                         "replaced)", output, "give a new folder, or an earlier multi-view result to replace")


def _initial_poses(session: Session, paths, frame_of, prepared, rig: Rig | None, mode: str) -> list[tuple]:
    """(prepared, initial pose, info) per view: view 1 from the initialiser; the others (independent mode) from
    their own DICOM angles, every standard view, or view 1's pose carried by the rig."""
    first = session.prepare(paths[0], frame_of[0])
    if mode == "rigid-rig":
        return [first]
    out = [first]
    kind, value = session.init.kind, session.init.value
    for k, (path, frame, prep) in enumerate(zip(paths[1:], frame_of[1:], prepared[1:]), start=1):
        if kind == "dicom" or (kind == "view" and value == "auto"):
            out.append(session.prepare(path, frame))
        elif rig is not None:
            pose = with_camera(prep.detector, first[1].world_from_camera @ rig.matrices[k])
            out.append((prep, check_initial_pose(pose, session.ct, rig.path), {
                "initializer": f"{session.init.describe()} (view 1) carried by the {rig.source}", "log": []}))
        else:
            raise InputError(f"view {k + 1} has no initial pose: {session.init.describe()} gives view 1's, and "
                             "the views' relative geometry is unknown", path,
                             "give --rig rig.json, DICOM X-rays with C-arm angles, or --init-dicom / --init-view "
                             "auto (each view initialised on its own)")
    return out


def _rigid(session: Session, paths, prepared, start, rig: Rig, tmp: Path, progress: Progress) -> list[dict]:
    o = session.options
    prep1, init, info = start
    lines, log = session.start_log(paths[0], prep1, info, progress)
    log(f"multi-view rigid rig ({rig.source}): {len(paths)} views, one patient pose")
    began = time.perf_counter()
    candidates = None
    if o.search and session.init.kind in SEARCHED:
        progress.update(0.02, "searching the pose (view 1)")
        candidates, info["search"] = session.find_pose(prep1, init, progress.sub(0.02, 0.3), log)
        joint = [_joint_score(session, prepared, rig, c.refined_pose) for c in candidates]
        order = np.argsort(joint)[::-1]
        candidates = [candidates[i] for i in order]
        info["search"]["joint_scores"] = [round(float(joint[i]), 5) for i in order]
        log("candidates ranked by the similarity over all views: " + ", ".join(f"{joint[i]:.4f}" for i in order))
        init = candidates[0].refined_pose
    if o.init_only:
        traj = Trajectory(init=init.world_from_camera.copy(), final=init.world_from_camera.copy(),
                          stopped="init_only", message="--init-only: no optimisation")
    else:
        traj = optimize(session.fast, prepared, init, session.center, o.optimizer(), progress.sub(0.3, 0.85), log,
                        rig=rig.matrices)
    rows = []
    for k, (path, prep, m) in enumerate(zip(paths, prepared, rig.matrices)):
        if k == 0:
            view_lines, view_log, view_info = lines, log, info
        else:
            view_info = {"initializer": f"view 1's pose carried by the {rig.source}", "log": []}
            view_lines, view_log = session.start_log(path, prep, view_info, Progress())
            view_log("multi-view rigid rig: the pose of view 1's joint registration @ first_camera_from_camera")
        view_traj = _view_trajectory(traj, m, k)
        extra = {"multiview": {"mode": "rigid-rig", "view": k + 1, "views": len(paths),
                               "first_camera_from_camera": m.tolist()}}
        metrics = session.write_result(path, tmp / view_dir(k), prep, with_camera(prep.detector, traj.init @ m),
                                       view_traj, view_info, candidates if k == 0 else None, view_lines, view_log,
                                       began, progress.sub(0.85 + 0.15 * k / len(paths),
                                                           0.85 + 0.15 * (k + 1) / len(paths)), extra)
        rows.append({"xray": str(path), **metrics})
    return rows


def _joint_score(session: Session, prepared, rig: Rig, pose) -> float:
    from .confidence import probe

    return float(np.mean([probe(session.fast, p, with_camera(p.detector, pose.world_from_camera @ m),
                                session.center, session.options.similarity)[0]
                          for p, m in zip(prepared, rig.matrices)]))


def _view_trajectory(traj: Trajectory, m: np.ndarray, k: int) -> Trajectory:
    """The joint trajectory as seen by view k: its poses (first view's @ m) and its own losses."""
    losses = [v[k] for v in traj.view_losses] if traj.view_losses else traj.losses
    return dataclasses.replace(traj, init=traj.init @ m, final=traj.final @ m, poses=[p @ m for p in traj.poses],
                               losses=list(losses))


def _independent(session: Session, paths, prepared, starts, tmp: Path, progress: Progress) -> list[dict]:
    rows = []
    for k, (path, start) in enumerate(zip(paths, starts)):
        progress.log(f"[view {k + 1}/{len(paths)}] {path.name}")
        part = progress.sub(0.95 * k / len(paths), 0.95 * (k + 1) / len(paths))
        session.register(path, tmp / view_dir(k), part, start)
        rows.append({"xray": str(path), **R.read_metrics(tmp / view_dir(k))})
    return rows


def _combined(mode: str, rig: Rig | None, views: list[dict], summary: dict, seconds: float) -> dict:
    per_view = []
    for k, v in enumerate(views):
        conf = v.get("confidence") or {}
        per_view.append({"view": k + 1, "folder": view_dir(k), "xray": v["xray"], "frame": v.get("frame"),
                         "ncc": v.get("ncc"),
                         "ncc_init": v.get("ncc_init"), "similarity": conf.get("similarity"),
                         "confidence": conf.get("confidence"), "warning": conf.get("warning", "")})
    warnings = [f"view {p['view']}: {p['warning']}" for p in per_view if p["warning"]]
    if summary.get("consistency") and summary["consistency"]["warning"]:
        warnings.append(summary["consistency"]["warning"])
    if mode == "rigid-rig" and any(p["warning"] for p in per_view) and not all(p["warning"] for p in per_view):
        warnings.append("some views match the joint pose and others do not: views of different patients or "
                        "regions, a wrong rig, or a patient who moved (try --multiview independent)")
    return {
        "multiview": {"mode": mode, "views": len(views), "rig": None if rig is None else rig.to_dict()},
        "similarity": _mean([p["similarity"] for p in per_view]),
        "ncc": _mean([p["ncc"] for p in per_view]),
        "confidence": min((p["confidence"] for p in per_view if p["confidence"] is not None), default=None),
        "seconds": seconds, "per_view": per_view, **summary, "warning": "; ".join(warnings),
    }


def _mean(values):
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None
