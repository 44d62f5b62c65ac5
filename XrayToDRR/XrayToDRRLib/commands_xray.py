"""CLI verbs: xray-info, set-sdd, inspect, simulate-xray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import DeviceOption, ProgressOption, echo_json, verb
from .dicom import set_sdd, xray_info
from .errors import InputError
from .inspect_checkpoint import format_inspection, inspect
from .simulate import write_simulated_xray


@verb("xray-info", "Reading X-ray")
def xray_info_verb(
    xray: Annotated[Path, typer.Argument(help="X-ray file: DICOM, PNG/JPEG/TIFF, 2D NIfTI/NRRD")],
    check: Annotated[bool, typer.Option("--check", help="exit 2 when SDD or pixel spacing is missing")] = False,
):
    """Print an X-ray's geometry as JSON (SDD, pixel spacing and the tags they came from, what is missing).
    A readable file exits 0 even when tags are missing (unless --check); an unreadable one exits 2."""
    info = xray_info(xray)
    if check and info["missing"]:
        raise InputError(f"missing {'; missing '.join(info['missing'])}", xray,
                         "add them to a copy with `xraytodrr set-sdd -i X.dcm -o NEW.dcm --sdd MM "
                         "[--pixel-spacing MM]`")
    echo_json(info)


@verb("set-sdd", "Writing DICOM")
def set_sdd_verb(
    input: Annotated[Path, typer.Option("-i", "--input", help="DICOM X-ray (never modified)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="new DICOM file")],
    sdd: Annotated[float, typer.Option("--sdd", help="source-to-detector distance in mm")],
    pixel_spacing: Annotated[Optional[str], typer.Option(
        "--pixel-spacing", help="detector pixel size in mm: MM or ROW,COL (written as ImagerPixelSpacing)")] = None,
):
    """Copy a DICOM X-ray with DistanceSourceToDetector (and optionally ImagerPixelSpacing) set, new SOPInstanceUID."""
    out = set_sdd(input, output, sdd, pixel_spacing)
    typer.echo(f"wrote {out}")
    return out


@verb("inspect", "Reading checkpoint")
def inspect_verb(
    file: Annotated[Path, typer.Argument(help="torch file: .pt, .pth, .pth.tar")],
    json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
):
    """List a checkpoint's keys, shapes and dtypes, and summarise any camera pose in it (safe load: no code runs)."""
    info = inspect(file)
    if json:
        echo_json(info)
    else:
        typer.echo(format_inspection(info))


@verb("simulate-xray", "Simulating X-ray")
def simulate_xray_verb(
    volume: Annotated[Path, typer.Option("--volume", help="CT volume in HU (NIfTI, NRRD or DICOM folder)")],
    pose: Annotated[Path, typer.Option("--pose", help="pose.json or registration parameters.pt")],
    output: Annotated[Path, typer.Option("-o", "--output", help="X.dcm (16-bit DX DICOM) or .png/.nii.gz/.npy")],
    seed: Annotated[int, typer.Option(help="random seed: same seed, same image")] = 0,
    raw: Annotated[bool, typer.Option(
        "--raw", help="log detector image without vendor processing or collimation")] = False,
    exposure: Annotated[str, typer.Option(
        help="aec: automatic exposure control (the dose behind the patient is set); fixed: the same tube output "
             "for every patient (thick views get very few photons)")] = "aec",
    device: DeviceOption = "auto",
    progress: ProgressOption = "bar",
):
    """Simulate a realistic X-ray of a CT at a known pose; writes the image and its true pose (X.pose.json)."""
    image, pose_file = write_simulated_xray(volume, pose, output, seed=seed, raw=raw, device=device,
                                            progress=progress, exposure=exposure)
    progress.log(f"wrote {image} and {pose_file}")
    return [image, pose_file]
