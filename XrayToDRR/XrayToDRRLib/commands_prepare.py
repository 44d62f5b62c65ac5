"""CLI verbs: clean-seg, crop, coregister, center, prepare (data preparation before registration and rendering)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .center import center
from .cli import LabelsOption, ProgressOption, parse_labels, verb
from .coregister import coregister
from .crop import crop
from .errors import InputError
from .file_lists import volume_files
from .prepare import prepare
from .progress import JsonLinesProgress
from .segmentation import clean_seg
from .volumes import VOLUME_SUFFIXES, read_labels, read_volume, write_image

class Interpolator(str, Enum):
    linear = "linear"
    bspline = "bspline"


@verb("clean-seg", "Cleaning segmentation")
def clean_seg_cmd(
    input: Annotated[Path, typer.Option("-i", "--input", help="label map (NIfTI, NRRD...)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="cleaned label map file")],
    labels: LabelsOption = None,
    progress: ProgressOption = "bar",
):
    """Keep the largest connected component of each label; report the voxels removed per label."""
    _volume_file(output)
    cleaned, removed = clean_seg(read_labels(input), parse_labels(labels), input, progress)
    write_image(cleaned, output)
    unchanged = [label for label, n in removed.items() if not n]
    _report(progress, [f"label {label}: removed {n} voxels" for label, n in removed.items() if n]
            + ([f"label(s) {unchanged}: removed 0 voxels"] if unchanged else []))
    return output


@verb("crop", "Cropping")
def crop_cmd(
    ct: Annotated[Path, typer.Option("--ct", help="CT volume")],
    seg: Annotated[Path, typer.Option("--seg", help="label map on the CT grid")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder for crop_ct.nii.gz and crop_seg.nii.gz")],
    labels: LabelsOption = None,
    padding: Annotated[float, typer.Option(help="margin around the labels' box, mm")] = 10.0,
    mirror: Annotated[bool, typer.Option("--mirror", help="mirror right-sided anatomy to the left (about the "
                                                          "CT centre's sagittal plane)")] = False,
    progress: ProgressOption = "bar",
):
    """Crop CT and segmentation to the chosen labels' bounding box plus padding (optionally mirrored)."""
    if padding < 0:
        raise InputError(f"--padding must be >= 0 mm, got {padding:g}", None, "give a padding of 0 or more mm")
    _folder(output)
    ct_img = read_volume(ct)
    ct_box, seg_box = crop(ct_img, read_labels(seg, reference=ct_img), parse_labels(labels), padding, mirror, seg,
                           progress)
    targets = [output / "crop_ct.nii.gz", output / "crop_seg.nii.gz"]
    write_image(ct_box, targets[0])
    write_image(seg_box, targets[1])
    _report(progress, [f"cropped to {list(ct_box.GetSize())} voxels: {targets[0]}, {targets[1]}"])
    return targets


@verb("coregister", "Coregistering")
def coregister_cmd(
    cts: Annotated[list[Path], typer.Argument(help="CT volumes to register to the reference, or folders of NIfTI/NRRD "
                                                   "volumes (a DICOM folder is one CT)")],
    reference: Annotated[Path, typer.Option("--reference", help="reference CT (fixed image)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="folder for <ct>.nii.gz/.tfm/_checkerboard.png "
                                                                "and metrics.csv")],
    affine: Annotated[bool, typer.Option("--affine", help="refine the rigid result with an affine stage")] = False,
    progress: ProgressOption = "bar",
):
    """Rigid (optionally then affine) mutual-information registration of each CT to a reference CT."""
    _folder(output)
    return coregister(reference, volume_files(cts), output, affine, progress)


@verb("center", "Centring")
def center_cmd(
    input: Annotated[Path, typer.Option("-i", "--input", help="CT volume")],
    output: Annotated[Path, typer.Option("-o", "--output", help="centred CT file")],
    spacing: Annotated[float, typer.Option(help="isotropic voxel size, mm")] = 1.0,
    interpolator: Annotated[Interpolator, typer.Option(help="CT interpolation")] = Interpolator.linear,
    seg: Annotated[Optional[Path], typer.Option("--seg", help="label map to resample with the CT")] = None,
    seg_output: Annotated[Optional[Path], typer.Option("--seg-output", help="resampled label map file")] = None,
    progress: ProgressOption = "bar",
):
    """Move the CT's centre to world origin (RAS 0,0,0) and resample to isotropic voxels (air outside)."""
    _volume_file(output)
    if (seg is None) != (seg_output is None):
        raise InputError("--seg and --seg-output go together", seg or seg_output, "give both or neither")
    if seg_output is not None:
        _volume_file(seg_output)
    ct, labels = center(read_volume(input), spacing, interpolator.value,
                        read_labels(seg) if seg is not None else None, progress)
    write_image(ct, output)
    targets = [output]
    if labels is not None:
        targets.append(write_image(labels, seg_output))
    _report(progress, [f"{list(ct.GetSize())} voxels of {spacing:g} mm, centred at RAS (0, 0, 0): {output}"])
    return targets


@verb("prepare", "Preparing")
def prepare_cmd(
    ct: Annotated[Path, typer.Option("--ct", help="CT volume")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output folder (written atomically)")],
    seg: Annotated[Optional[Path], typer.Option("--seg", help="label map on the CT grid: enables clean and crop")] = None,
    labels: LabelsOption = None,
    padding: Annotated[float, typer.Option(help="crop margin around the labels' box, mm")] = 10.0,
    mirror: Annotated[bool, typer.Option("--mirror", help="mirror right-sided anatomy to the left")] = False,
    spacing: Annotated[float, typer.Option(help="final isotropic voxel size, mm")] = 1.0,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="reference CT: enables coregister")] = None,
    affine: Annotated[bool, typer.Option("--affine", help="affine stage after the rigid coregistration")] = False,
    interpolator: Annotated[Interpolator, typer.Option(help="CT interpolation when centring")] = Interpolator.linear,
    progress: ProgressOption = "bar",
):
    """clean-seg, crop, coregister and center in one go; keeps every intermediate and a manifest.json."""
    return prepare(ct, output, seg, parse_labels(labels), padding, mirror, spacing, reference, affine, interpolator.value,
                   progress)


def _is_volume_name(path: Path) -> bool:
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def _folder(path: Path) -> None:
    if _is_volume_name(path) or (path.exists() and not path.is_dir()):
        raise InputError("-o must be a folder, not a file", path, "give a folder name")


def _volume_file(path: Path) -> None:
    if not _is_volume_name(path):
        raise InputError("output must be a volume file", path, f"end the name with {', '.join(VOLUME_SUFFIXES)}")


def _report(progress, lines: list[str]) -> None:
    """Results on stdout for people, or as log events when stdout carries the JSON-lines protocol."""
    for line in lines:
        progress.log(line) if isinstance(progress, JsonLinesProgress) else typer.echo(line)
