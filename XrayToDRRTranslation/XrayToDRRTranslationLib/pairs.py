"""Paired training data: (X-ray, DRR) pairs from registration results, or slice pairs from two co-registered volumes.

A registration output folder holds (the contract `xraytodrr register` writes):
  pose.json      the final canonical pose (XrayToDRRLib.pose)
  gt.png         the X-ray as registration saw it (preprocessed), 16-bit PNG at the pose's detector size
  metrics.json   at least {"ncc": float}
  parameters.pt  torch.save({"settings": {"volume": CT path, "mask": path | None, "labels": list | None}, ...})

`build_pairs` writes OUT/xray/NAME.png (gt.png, byte for byte) and OUT/drr/NAME.png (the DRR of the settings'
volume at the final pose, same size, 16-bit scaled 0..max like `xraytodrr drr`, by the same renderers: by default
the fast renderer's HQ mode, NCC >= 0.99 with Siddon; `renderer="siddon"` for exact ones), NAME = the registration
folder's name (its parent's name is prefixed when two folders share a name), and OUT/pairs.csv: one row per case
with status kept | dropped, the reason, source files, registration metrics and the pose. With `min_ncc`, cases whose
NCC is below it are dropped: listed in the CSV and the report, never silently; likewise cases whose registration
confidence (metrics.json `confidence`, see XrayToDRRRegistrationLib/confidence.py) is below `min_confidence`
(default: the registration's own warning threshold, 0.5; results written before confidences existed are kept,
and the log says they carry none). By default the DRR is rendered from
the whole CT; `masked` renders only the settings' mask labels (as registration rendered them).

Patients (`patient_id_from`, for `translate train --split-by patient`): None (one unnamed patient, the `patient`
column left empty), "parent" / "grandparent" (the name of the registration folder's parent or grandparent, e.g.
REG/PATIENT/XRAY or PATIENT/SESSION/XRAY), or "csv:FILE" (a CSV with columns `folder` and `patient`; `folder` is
a registration folder's path, absolute or relative to the CSV, or its name). Every case must get an id; the report
counts the kept pairs per patient.

`pairs_from_volumes` cuts two volumes on the same grid (e.g. MRI -> CT) into slices along an index axis:
OUT/xray/STEM_zNNNN.png from the first (input) and OUT/drr/... from the second (target), each volume windowed to
16 bits by its own 0.5/99.5 percentiles (so slices keep their relative brightness); slices where either is blank
are dropped (listed). The output folder is written as a whole (atomically).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from XrayToDRRLib.atomic import atomic_dir, atomic_path
from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.images import save_image
from XrayToDRRLib.pose import Pose, load_pose
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.torchfiles import load_torch_file

from .dataset import image_info
from .outputs import check_output_dir

REQUIRED = ("pose.json", "gt.png", "metrics.json", "parameters.pt")
FIX_FOLDER = "give folders written by `xraytodrr register` (pose.json, gt.png, metrics.json, parameters.pt)"
AXES = ("x", "y", "z")


@dataclasses.dataclass
class Case:
    folder: Path
    name: str
    pose: Pose
    gt: Path
    metrics: dict
    volume: Path
    mask: Path | None
    labels: list | None
    patient: str = ""

    @property
    def ncc(self) -> float | None:
        value = self.metrics.get("ncc")
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None


    @property
    def confidence(self) -> float | None:
        value = self.metrics.get("confidence")
        value = value.get("confidence") if isinstance(value, dict) else value
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None


DEFAULT_MIN_CONFIDENCE = 0.5  # confidence.WARN_BELOW: the registration warned about anything below it


@dataclasses.dataclass
class PairsReport:
    output: Path
    kept: list[str]
    dropped: list[dict]   # {"name", "reason"}
    table: Path
    patients: dict[str, int] = dataclasses.field(default_factory=dict)   # kept pairs per patient id

    def patient_summary(self) -> str:
        """'3 patients: A 4 pairs, B 2 pairs, C 1 pair' ('' when no ids were given)."""
        named = {k: v for k, v in self.patients.items() if k}
        if not named:
            return ""
        return f"{len(named)} patient(s): " + ", ".join(f"{k} {v} pair{'s' * (v != 1)}" for k, v in named.items())


# --- registration folders -------------------------------------------------------------------------------------
PATIENT_SOURCES = ("parent", "grandparent", "csv:FILE")
FIX_PATIENT = "use --patient-id-from parent, grandparent or csv:FILE (columns folder, patient)"


def assign_patients(cases: list[Case], source: str | None) -> None:
    """Set each case's patient id from the folder layout or a CSV (see the module docstring)."""
    if not source:
        return
    if source in ("parent", "grandparent"):
        for c in cases:
            folder = c.folder.parent if source == "parent" else c.folder.parent.parent
            c.patient = folder.name
            if not c.patient:
                raise InputError(f"has no {source} folder to name its patient", c.folder, FIX_PATIENT)
        return
    if not source.startswith("csv:"):
        raise InputError(f"unknown --patient-id-from '{source}'", None, FIX_PATIENT)
    table = require_file(source[4:], "patient CSV")
    ids = _read_patient_csv(table)
    missing = []
    for c in cases:
        c.patient = ids.get(str(c.folder.resolve())) or ids.get(c.folder.name) or ""
        if not c.patient:
            missing.append(c.folder.name)
    if missing:
        raise InputError(f"names no patient for {len(missing)} registration folder(s): {', '.join(missing[:8])}",
                         table, "add a row (folder, patient) for each of them")


def _read_patient_csv(path: Path) -> dict[str, str]:
    """folder (resolved path, and bare name) -> patient id."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read as a CSV ({e})", path, "write columns folder,patient") from None
    if not rows or not {"folder", "patient"} <= set(rows[0]):
        raise InputError("needs the columns folder and patient", path, "write a header line folder,patient")
    out: dict[str, str] = {}
    for row in rows:
        folder, patient = (row.get("folder") or "").strip(), (row.get("patient") or "").strip()
        if not folder or not patient:
            continue
        p = Path(folder)
        p = p if p.is_absolute() else path.parent / p
        out[str(p.resolve())] = patient
        out.setdefault(Path(folder).name, patient)
    return out


def find_registration_folders(paths: list[str | Path]) -> list[Path]:
    """Each path is a registration folder, or a folder whose direct subfolders are."""
    found: list[Path] = []
    for item in paths:
        p = require_file(item, "registration folder")
        if not p.is_dir():
            raise InputError("is a file, not a registration output folder", p, FIX_FOLDER)
        if (p / "pose.json").exists():
            found.append(p)
            continue
        subs = sorted(s for s in p.iterdir() if s.is_dir() and (s / "pose.json").exists())
        if not subs:
            raise InputError("is not a registration output folder (no pose.json) and holds none", p, FIX_FOLDER)
        found += subs
    unique = list(dict.fromkeys(f.resolve() for f in found))
    if not unique:
        raise InputError("no registration folders given", None, FIX_FOLDER)
    return unique


def read_case(folder: Path) -> Case:
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    if missing:
        raise InputError(f"registration folder lacks {', '.join(missing)}", folder, FIX_FOLDER)
    pose = load_pose(folder / "pose.json")
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", folder / "metrics.json", "write {\"ncc\": 0.9, ...}") from None
    if not isinstance(metrics, dict):
        raise InputError("must hold a JSON object", folder / "metrics.json", "write {\"ncc\": 0.9, ...}")
    params_path = folder / "parameters.pt"
    params = load_torch_file(params_path, "give the parameters.pt written by xraytodrr register")
    settings = params.get("settings") if isinstance(params, dict) else None
    if not isinstance(settings, dict) or not settings.get("volume"):
        raise InputError("has no settings['volume'] (the CT it was registered to)", params_path,
                         "give the parameters.pt written by xraytodrr register")
    h, w, _ = image_info(folder / "gt.png")
    if (h, w) != (pose.height, pose.width):
        raise InputError(f"X-ray is {h}x{w} but the pose's detector is {pose.height}x{pose.width}", folder / "gt.png",
                         "give the gt.png registration wrote with this pose")
    return Case(folder, folder.name, pose, folder / "gt.png", metrics, _resolve(settings["volume"], folder),
                _resolve(settings["mask"], folder) if settings.get("mask") else None,
                list(settings["labels"]) if settings.get("labels") else None)


def _resolve(path: str, folder: Path) -> Path:
    p = Path(str(path))
    if not p.is_absolute() and not p.exists() and (folder / p).exists():
        return folder / p
    return p


def _unique_names(cases: list[Case]) -> None:
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.name] = counts.get(c.name, 0) + 1
    for c in cases:
        if counts[c.name] > 1:
            c.name = f"{c.folder.parent.name}_{c.folder.name}"
    names = [c.name for c in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"several registration folders are named {', '.join(dupes[:5])}", None,
                         "give the registration folders distinct names")


def build_pairs(folders: list[str | Path], output: str | Path, min_ncc: float | None = None, masked: bool = False,
                device: str = "auto", progress: Progress | None = None, renderer: str = "fast",
                mode: str = "hq", min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                patient_id_from: str | None = None, dask: str | None = None) -> PairsReport:
    """(X-ray, DRR) pairs from registration output folders (see the module docstring); with `dask` (a scheduler's
    address) the DRRs are rendered by that Dask cluster's workers, each keeping its CT between cases."""
    from XrayToDRRLib.drr_engine import check_engine

    check_engine(renderer, mode)
    progress = progress or Progress()
    paths = find_registration_folders(folders)
    cases = [read_case(p) for p in paths]
    _unique_names(cases)
    assign_patients(cases, patient_id_from)
    dropped: list[dict] = []
    kept: list[Case] = []
    for c in cases:
        if min_ncc is not None:
            if c.ncc is None:
                raise InputError("has no numeric 'ncc' to compare with --min-ncc", c.folder / "metrics.json",
                                 "write the registration's NCC, or leave out --min-ncc")
            if c.ncc < min_ncc:
                dropped.append({"name": c.name, "reason": f"NCC {c.ncc:.4f} < {min_ncc}"})
                progress.log(f"dropped {c.name}: NCC {c.ncc:.4f} below --min-ncc {min_ncc}")
                continue
        if c.confidence is None:
            progress.log(f"{c.name}: its registration records no confidence (written by an older version): kept")
        elif c.confidence < min_confidence:
            dropped.append({"name": c.name, "reason": f"confidence {c.confidence:.3f} < {min_confidence}"})
            progress.log(f"dropped {c.name}: registration confidence {c.confidence:.3f} below --min-confidence "
                         f"{min_confidence} (see its metrics.json warning)")
            continue
        kept.append(c)
    if not kept:
        raise InputError(f"all {len(cases)} case(s) were dropped by --min-ncc / --min-confidence "
                         f"({'; '.join(d['name'] + ': ' + d['reason'] for d in dropped[:8])})", None,
                         "review those registrations, or lower --min-ncc / --min-confidence")
    for c in kept:
        require_file(c.volume, f"CT volume of {c.folder}")
        if masked and c.mask is not None:
            require_file(c.mask, f"mask of {c.folder}")
    out = check_output_dir(output, paths, "-o")
    client = None
    if dask:
        from XrayToDRRLib.dask_cluster import connect

        client = connect(dask)  # a wrong or unreachable address fails here, before anything is written

    groups: dict[tuple, list[Case]] = {}
    for c in kept:
        key = (str(c.volume), str(c.mask) if masked and c.mask else None,
               tuple(c.labels) if masked and c.mask and c.labels else None)
        groups.setdefault(key, []).append(c)
    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        (tmp / "xray").mkdir()
        (tmp / "drr").mkdir()
        if client is not None:
            _render_on_cluster(client, groups, renderer, mode, device, tmp, progress)
        done = 0
        for (volume, mask, labels), group in groups.items():
            engine = None
            for c in group:
                if client is None:
                    if engine is None:
                        progress.update(done / len(kept), f"reading {Path(volume).name}")
                        engine = _drr_engine(volume, mask, labels, renderer, mode, device)
                    progress.update(done / len(kept), f"DRR {done + 1}/{len(kept)} {c.name}")
                    _save_drr(engine, c.pose, tmp / "drr" / f"{c.name}.png")
                shutil.copyfile(c.gt, tmp / "xray" / f"{c.name}.png")
                done += 1
        table = _registration_table(cases, {d["name"]: d["reason"] for d in dropped}, masked)
        (tmp / "pairs.csv").write_text(table)
    progress.log(f"wrote {len(kept)} pair(s) to {out}" + (f"; dropped {len(dropped)}" if dropped else ""))
    progress.update(1.0, "done")
    patients: dict[str, int] = {}
    for c in sorted(kept, key=lambda c: c.patient):
        patients[c.patient] = patients.get(c.patient, 0) + 1
    return PairsReport(out, [c.name for c in kept], dropped, out / "pairs.csv", patients)


def _drr_engine(volume: str, mask: str | None, labels: tuple | None, renderer: str, mode: str, device: str):
    from XrayToDRRLib.drr_engine import DRREngine
    from XrayToDRRLib.render import label_mask
    from XrayToDRRLib.volumes import read_labels, read_volume

    ct = read_volume(volume)
    keep = label_mask(read_labels(mask, reference=ct), list(labels) if labels else None, mask) if mask else None
    return DRREngine(ct, keep, renderer, mode, device=device)


def _save_drr(engine, pose: Pose, path: Path) -> None:
    save_image(engine.render(pose), path, spacing=(pose.dely, pose.delx), metadata=engine.metadata)


def render_pair_task(progress: Progress, engine_args: tuple, pose: Pose, path: str) -> str:
    """One case's DRR, on a Dask worker (which keeps the engine of each CT between cases): written atomically
    into the pairs' temporary folder (shared with the caller)."""
    from XrayToDRRLib.dask_cluster import cache_key, worker_cached

    with worker_cached(cache_key("pairs", engine_args), lambda: _drr_engine(*engine_args)) as engine:
        with atomic_path(path) as tmp:
            _save_drr(engine, pose, Path(tmp))
    return path


def _render_on_cluster(client, groups: dict, renderer: str, mode: str, device: str, tmp: Path,
                       progress: Progress) -> None:
    """Every kept case's DRR on the cluster of `client` (closed when done); the first that fails stops the run."""
    from XrayToDRRLib.dask_cluster import map_in_order

    def absolute(path):  # a worker's working folder is not ours
        return str(Path(path).absolute()) if path else None

    cases = [(key, c) for key, group in groups.items() for c in group]
    tasks = [((absolute(volume), absolute(mask), labels, renderer, mode, device), c.pose,
              absolute(tmp / "drr" / f"{c.name}.png")) for (volume, mask, labels), c in cases]

    def failed(index: int, error: BaseException):
        raise error

    try:
        map_in_order(client, render_pair_task, tasks, [c.name for _, c in cases], progress, failed)
    finally:
        client.close()


def _registration_table(cases: list[Case], dropped: dict, masked: bool) -> str:
    columns = ["name", "status", "reason", "patient", "registration_folder", "xray_source", "volume", "mask",
               "labels", "drr_masked", "ncc", "metrics", "sdd", "height", "width", "delx", "dely", "x0", "y0",
               "world_from_camera"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for c in cases:
        p = c.pose
        writer.writerow({
            "name": c.name, "patient": c.patient, "status": "dropped" if c.name in dropped else "kept",
            "reason": dropped.get(c.name, ""),
            "registration_folder": str(c.folder), "xray_source": str(c.gt), "volume": str(c.volume),
            "mask": str(c.mask) if c.mask else "", "labels": json.dumps(c.labels) if c.labels else "",
            "drr_masked": bool(masked and c.mask), "ncc": "" if c.ncc is None else c.ncc,
            "metrics": json.dumps(c.metrics, sort_keys=True), "sdd": p.sdd, "height": p.height, "width": p.width,
            "delx": p.delx, "dely": p.dely, "x0": p.x0, "y0": p.y0,
            "world_from_camera": json.dumps(np.round(p.world_from_camera, 9).tolist()),
        })
    return buffer.getvalue()


# --- two co-registered volumes --------------------------------------------------------------------------------
def _window16(arr: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(arr, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _slices(arr: np.ndarray, axis: str):
    """2D slices (rows, cols) of a (k, j, i) array along index axis x (i), y (j) or z (k); for x and y the rows
    are flipped so the last k (superior in a usual LPS CT) is at the top."""
    if axis == "z":
        return [arr[k] for k in range(arr.shape[0])]
    if axis == "y":
        return [arr[::-1, j, :] for j in range(arr.shape[1])]
    return [arr[::-1, :, i] for i in range(arr.shape[2])]


def pairs_from_volumes(source: str | Path, target: str | Path, output: str | Path, axis: str = "z",
                       progress: Progress | None = None) -> PairsReport:
    """Slice pairs from two volumes on the same grid: `source` slices go to xray/ (input), `target` to drr/."""
    from XrayToDRRLib.volumes import read_volume

    from .dataset import stem_of

    progress = progress or Progress()
    if axis not in AXES:
        raise InputError(f"unknown axis '{axis}'", None, "use --axis x, y or z (the volume's index axes)")
    a = read_volume(source, "input volume")
    b = read_volume(target, "target volume")
    same = (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))
    if not same:
        raise InputError(f"grid {b.GetSize()} @ {np.round(b.GetSpacing(), 3).tolist()} mm, origin "
                         f"{np.round(b.GetOrigin(), 2).tolist()} differs from the input volume's {a.GetSize()} @ "
                         f"{np.round(a.GetSpacing(), 3).tolist()} mm, origin {np.round(a.GetOrigin(), 2).tolist()}",
                         target, "resample one volume onto the other's grid first (e.g. xraytodrr coregister)")
    out = check_output_dir(output, [source, target], "-o")
    arrays = [sitk.GetArrayFromImage(v).astype(np.float32) for v in (a, b)]
    windows = [_window16(arr) for arr in arrays]
    stem = stem_of(source)
    kept, dropped, rows = [], [], []
    sa, sb = _slices(arrays[0], axis), _slices(arrays[1], axis)
    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        (tmp / "xray").mkdir()
        (tmp / "drr").mkdir()
        for idx, (s0, s1) in enumerate(zip(sa, sb)):
            progress.update(idx / len(sa), f"slice {idx + 1}/{len(sa)}")
            name = f"{stem}_{axis}{idx:04d}"
            u0, u1 = [np.clip((s - lo) / (hi - lo), 0, 1) for s, (lo, hi) in zip((s0, s1), windows)]
            if float(u0.std()) < 1e-3 or float(u1.std()) < 1e-3:
                dropped.append({"name": name, "reason": "blank slice"})
                rows.append({"name": name, "status": "dropped", "reason": "blank slice", "index": idx})
                continue
            for img, sub in ((u0, "xray"), (u1, "drr")):
                sitk.WriteImage(sitk.GetImageFromArray(np.round(img * 65535).astype(np.uint16)),
                                str(tmp / sub / f"{name}.png"))
            kept.append(name)
            rows.append({"name": name, "status": "kept", "reason": "", "index": idx})
        if not kept:
            raise InputError("every slice is blank in one of the volumes", source, "check the two volumes overlap")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["name", "status", "reason", "input_volume", "target_volume",
                                                    "axis", "index"], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "input_volume": str(Path(source).resolve()),
                             "target_volume": str(Path(target).resolve()), "axis": axis})
        (tmp / "pairs.csv").write_text(buffer.getvalue())
    progress.log(f"wrote {len(kept)} slice pair(s) to {out}" + (f"; dropped {len(dropped)} blank" if dropped else ""))
    progress.update(1.0, "done")
    return PairsReport(out, kept, dropped, out / "pairs.csv")
