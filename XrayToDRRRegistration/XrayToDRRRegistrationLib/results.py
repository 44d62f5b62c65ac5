"""The registration output folder: what is written, and how to read it back.

One folder per X-ray (written whole, atomically):

| file | holds |
|---|---|
| `pose.json` | the final pose (canonical: world_from_camera in the CT's RAS, the X-ray's detector after --crop) |
| `parameters.pt` | torch dict (loads with `weights_only=True`): `init_pose`, `final_pose` (4x4 float64), `pose` and `init` (canonical pose dicts; `xraytodrr drr --pose parameters.pt` reads `pose`), `trajectory` (N,4,4) float64, `losses` (N,), `stages` (N,), `scales` (one per stage), `stage_info`, `runtime` (s), `stopped`, `message`, `volume_center`, `settings` (every option as plain types, incl. `volume`, `mask`, `labels`, `xray`) |
| `gt.png` | the X-ray as registration saw it (cropped, rescaled, ...), 16-bit, at the detector of `pose.json` |
| `init_image.png`, `final_img.png` | quick DRRs (FastRenderer, preview mode) at the initial and final poses, same detector |
| `hq_drr.png` | the final DRR by `--renderer` (siddon/trilinear: DiffDRR; fast: FastRenderer at full resolution) |
| `field.png` | the exposed-field mask the similarity used (only when part of the X-ray was excluded) |
| `trajectory.csv` | one row per iteration: stage, scale, loss, learning rates, correction parameters, pose |
| `metrics.json` | `ncc` (gt vs hq_drr), `ncc_init`, `loss`, `iterations`, `seconds`, `stopped` (converged, max_itrs, nan, init_only), `confidence` (confidence.py: the value, its factors and a `warning` when the result is probably wrong), `initializer` (which one ran; for the search its candidates and seconds), ...; `xraytodrr evaluate` adds to it |
| `log.txt` | what happened, including a stop on a diverging (NaN) loss |
| `candidates.json` | when the global search ran (`--init-view`, `--init-dicom`): its best distinct poses, best first, each with its search score, refined score and canonical pose |
| `registration.png`, `registration.gif` | with --save-images: the evaluation figure and the animation |

A folder of X-rays gives one such folder per X-ray (named after the file) and `summary.csv`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import torch

from XrayToDRRLib.atomic import atomic_path, write_text
from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.pose import Pose

POSE = "pose.json"
PARAMETERS = "parameters.pt"
GT = "gt.png"
INIT_IMAGE = "init_image.png"
FINAL_IMAGE = "final_img.png"
HQ_DRR = "hq_drr.png"
FIELD = "field.png"
TRAJECTORY = "trajectory.csv"
METRICS = "metrics.json"
LOG = "log.txt"
FIGURE = "registration.png"
ANIMATION = "registration.gif"
SUMMARY = "summary.csv"
SUMMARY_FIELDS = ["xray", "folder", "status", "error", "ncc", "ncc_init", "loss", "iterations", "seconds", "stopped",
                  "confidence", "warning"]
CANDIDATES = "candidates.json"


def pose_entry(pose: Pose) -> dict:
    """A canonical pose as plain types + a float64 tensor (what XrayToDRRLib.pose.load_pose reads back)."""
    d = pose.to_dict()
    d["world_from_camera"] = torch.as_tensor(np.asarray(pose.world_from_camera), dtype=torch.float64)
    return d


def plain(value):
    """Options -> plain JSON/torch-safe types (paths as strings, tuples as lists, numpy scalars as Python)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "value") and type(value).__module__ != "builtins" and isinstance(getattr(value, "value"), str):
        return value.value  # enums
    return value


def parameters_dict(init: Pose, final: Pose, traj, scales: list[float], settings: dict, center) -> dict:
    poses = np.stack(traj.poses) if traj.poses else np.zeros((0, 4, 4))
    return {
        "init_pose": torch.as_tensor(init.world_from_camera, dtype=torch.float64),
        "final_pose": torch.as_tensor(final.world_from_camera, dtype=torch.float64),
        "pose": pose_entry(final),
        "init": pose_entry(init),
        "trajectory": torch.as_tensor(poses, dtype=torch.float64),
        "losses": torch.as_tensor(np.asarray(traj.losses, dtype=np.float64)),
        "stages": torch.as_tensor(np.asarray(traj.stages, dtype=np.int64)),
        "scales": [float(s) for s in scales],
        "stage_info": plain(traj.stage_info),
        "runtime": float(traj.seconds),
        "stopped": traj.stopped,
        "message": traj.message,
        "volume_center": [float(v) for v in np.asarray(center)],
        "settings": plain(settings),
    }


def save_parameters(data: dict, path: Path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def read_parameters(path) -> dict:
    p = require_file(path, "registration parameters")
    if p.is_dir():
        p = require_file(p / PARAMETERS, "registration parameters")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise InputError(f"cannot read as a torch file ({type(e).__name__})", p,
                         "give a parameters.pt written by xraytodrr register") from None
    if not isinstance(data, dict) or "pose" not in data or "trajectory" not in data:
        raise InputError("is not a registration result (no 'pose'/'trajectory')", p,
                         "give a parameters.pt written by xraytodrr register")
    return data


def pose_from_entry(entry: dict, source=None) -> Pose:
    return Pose.from_dict({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in entry.items()}, source)


def write_trajectory_csv(traj, scales: list[float], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["iteration", "stage", "scale", "loss", "lr_rot", "lr_xyz", "rx_rad", "ry_rad", "rz_rad", "tx_mm",
                "ty_mm", "tz_mm", "seconds"] + [f"m{r}{c}" for r in range(3) for c in range(4)])
    for n, (loss, stage, lrs, params, sec, pose) in enumerate(zip(traj.losses, traj.stages, traj.lrs, traj.params,
                                                                   traj.times, traj.poses)):
        w.writerow([n, stage, scales[stage], _num(loss), _num(lrs[0]), _num(lrs[1])] + [_num(v) for v in params]
                   + [f"{sec:.4f}"] + [_num(v) for v in np.asarray(pose)[:3].ravel()])
    return write_text(path, buf.getvalue())


def _num(v) -> str:
    v = float(v)
    return repr(v) if math.isfinite(v) else str(v)


def read_metrics(folder) -> dict:
    p = Path(folder) / METRICS
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError("metrics.json is not valid JSON", p, "delete it or rerun the registration") from None
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict) -> Path:
    return write_text(path, json.dumps(_finite(data), indent=2) + "\n")


def _finite(value):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def merge_metrics(folder, new: dict) -> Path:
    """Add keys to metrics.json (nested dicts merged), keeping everything already there."""
    current = read_metrics(folder)

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return write_json(Path(folder) / METRICS, merge(current, plain(new)))


def write_summary(rows: list[dict], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_FIELDS})
    return write_text(path, buf.getvalue())


def is_result_folder(folder) -> bool:
    """A single registration's folder (a batch folder holds summary.csv and one such folder per X-ray)."""
    return (Path(folder) / PARAMETERS).exists()
