"""The whole preparation in one call: clean-seg -> crop (+mirror) -> coregister -> center, into one folder.

Every intermediate is kept with its step number (1_clean_seg, 2_crop_ct, 3_coreg_ct, 4_center_ct, ...), and
manifest.json records the inputs, parameters, package versions, each step's numbers and the sha256 of every input
and output file. The folder is written atomically: a failure or cancel leaves no folder at all.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .atomic import atomic_dir, atomic_path, write_text
from .center import INTERPOLATORS, center
from .coregister import checkerboard_png, metrics_csv, metrics_row, register
from .crop import crop, label_centroid_ras
from .errors import InputError
from .progress import Progress
from .segmentation import clean_seg
from .volumes import check_labels, read_labels, read_volume, write_image

MANIFEST = "manifest.json"


def prepare(ct_path: str | Path, out_dir: str | Path, seg_path: str | Path | None = None,
            labels: list[int] | None = None, padding_mm: float = 10.0, mirror: bool = False, spacing: float = 1.0,
            reference_path: str | Path | None = None, affine: bool = False, interpolator: str = "linear",
            progress: Progress | None = None) -> Path:
    """Run the preparation steps that apply (clean and crop need a segmentation, coregister a reference) and write
    OUT_DIR atomically. Returns OUT_DIR."""
    progress = progress or Progress()
    out_dir = Path(out_dir)
    _check_options(out_dir, seg_path, labels, padding_mm, mirror, spacing, interpolator)
    ct = read_volume(ct_path)
    seg = read_labels(seg_path, reference=ct) if seg_path is not None else None
    if seg is not None:
        labels = check_labels(seg, labels, seg_path)
    reference = read_volume(reference_path, "reference CT") if reference_path is not None else None
    steps = {}
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        if seg is not None:
            seg, removed = clean_seg(seg, labels, seg_path, progress.sub(0.0, 0.1))
            write_image(seg, tmp / "1_clean_seg.nii.gz")
            steps["clean_seg"] = {"voxels_removed": removed, "outputs": ["1_clean_seg.nii.gz"]}
            ct, seg = crop(ct, seg, labels, padding_mm, mirror, seg_path, progress.sub(0.1, 0.2))
            write_image(ct, tmp / "2_crop_ct.nii.gz")
            write_image(seg, tmp / "2_crop_seg.nii.gz")
            steps["crop"] = {"size": list(ct.GetSize()), "mirrored": mirror,
                             "label_centroid_ras_mm": [round(float(v), 2) for v in label_centroid_ras(seg, labels)],
                             "outputs": ["2_crop_ct.nii.gz", "2_crop_seg.nii.gz"]}
        if reference is not None:
            ct, seg, steps["coregister"] = _coregister(ct, seg, reference, affine, tmp, progress.sub(0.2, 0.8))
        ct, seg = center(ct, spacing, interpolator, seg, progress.sub(0.8, 0.98))
        write_image(ct, tmp / "4_center_ct.nii.gz")
        steps["center"] = {"size": list(ct.GetSize()), "spacing_mm": spacing, "outputs": ["4_center_ct.nii.gz"]}
        if seg is not None:
            write_image(seg, tmp / "4_center_seg.nii.gz")
            steps["center"]["outputs"].append("4_center_seg.nii.gz")
        inputs = {"ct": ct_path, "seg": seg_path, "reference": reference_path}
        parameters = {"labels": labels, "padding_mm": padding_mm, "mirror": mirror, "spacing_mm": spacing,
                      "affine": affine, "interpolator": interpolator}
        _write_manifest(tmp, inputs, parameters, steps, final=steps["center"]["outputs"])
    progress.update(1.0, "done")
    progress.log(f"wrote {out_dir}")
    return out_dir


def _check_options(out_dir, seg_path, labels, padding_mm, mirror, spacing, interpolator) -> None:
    """Every option error before any reading or writing."""
    if padding_mm < 0:
        raise InputError(f"--padding must be >= 0 mm, got {padding_mm:g}", None, "give a padding of 0 or more mm")
    if not spacing > 0:
        raise InputError(f"--spacing must be > 0 mm, got {spacing:g}", None, "give a voxel size such as 1.0")
    if interpolator not in INTERPOLATORS:
        raise InputError(f"unknown interpolator '{interpolator}'", None, f"use {' or '.join(INTERPOLATORS)}")
    if seg_path is None and (labels or mirror):
        raise InputError("--labels and --mirror belong to the crop step, which needs --seg", None,
                         "give --seg, or drop --labels/--mirror")
    # atomic_dir replaces the whole folder: only ever replace an earlier `prepare` output.
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).exists())):
        raise InputError("exists and is not an earlier prepare output", out_dir, "choose a new output folder")


def _coregister(ct, seg, reference, affine, tmp: Path, progress: Progress):
    result = register(ct, reference, affine, progress)
    write_image(result.resampled, tmp / "3_coreg_ct.nii.gz")
    with atomic_path(tmp / "3_coreg.tfm") as path:
        sitk.WriteTransform(result.transform, str(path))
    checkerboard_png(reference, result.resampled, tmp / "3_coreg_checkerboard.png")
    metrics_csv([metrics_row("3_coreg_ct", result)], tmp / "3_coreg_metrics.csv")
    outputs = ["3_coreg_ct.nii.gz", "3_coreg.tfm", "3_coreg_checkerboard.png", "3_coreg_metrics.csv"]
    if seg is not None:
        seg = sitk.Resample(seg, reference, result.transform, sitk.sitkNearestNeighbor, 0, seg.GetPixelID())
        write_image(seg, tmp / "3_coreg_seg.nii.gz")
        outputs.append("3_coreg_seg.nii.gz")
    info = {"final_metric": result.metric, "iterations": result.iterations, "seconds": round(result.seconds, 2),
            "outputs": outputs}
    return result.resampled, seg, info


def _write_manifest(folder: Path, inputs: dict, parameters: dict, steps: dict, final: list[str]) -> None:
    manifest = {
        "tool": "xraytodrr prepare",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {k: {"path": str(Path(v).resolve()), "sha256": sha256(v)} for k, v in inputs.items() if v},
        "parameters": parameters,
        "versions": _versions(),
        "steps": steps,
        "outputs": {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file()},
        "final": dict(zip(("ct", "seg"), final)),
    }
    write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def sha256(path: str | Path) -> str:
    """sha256 of a file, or of a DICOM folder's files in name order."""
    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
        if f.is_file():
            with open(f, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _versions() -> dict:
    import numpy

    return {"xraytodrr": __version__, "SimpleITK": sitk.Version_VersionString(), "numpy": numpy.__version__,
            "python": platform.python_version()}
