"""Intensity-based coregistration of CTs to a reference CT (SimpleITK): rigid, optionally followed by affine.

Mattes mutual information, multi-resolution (shrink 4-2-1, smoothing 2-1-0 mm), geometry-centred initialisation.
The transform follows ITK's convention: it maps reference points to CT points (what resampling needs); Slicer loads
the .tfm as the transform that moves the CT onto the reference.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from .atomic import atomic_path, write_text
from .errors import InputError, require_file
from .images import to_uint8
from .progress import Progress
from .volumes import read_volume, write_image

AIR_HU = -1024.0
SHRINK_FACTORS = [4, 2, 1]
SMOOTHING_MM = [2.0, 1.0, 0.0]
MAX_ITERATIONS = 200
SAMPLING = 0.25
SEED = 12345  # fixed metric sampling: the same inputs give the same result


@dataclass
class Registration:
    transform: sitk.Transform  # reference point -> CT point
    resampled: sitk.Image  # the CT on the reference grid
    metric: float  # final Mattes MI (lower is better)
    iterations: int
    seconds: float
    stop: str


def register(moving: sitk.Image, fixed: sitk.Image, affine: bool = False,
             progress: Progress | None = None) -> Registration:
    """Register `moving` (a CT) to `fixed` (the reference) and resample it onto the reference grid."""
    progress = progress or Progress()
    t0 = time.perf_counter()
    fixed_f, moving_f = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    # GEOMETRY, not MOMENTS: negative HU (air) would make intensity moments meaningless.
    rigid = sitk.CenteredTransformInitializer(fixed_f, moving_f, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.GEOMETRY)
    stages = [rigid] + ([None] if affine else [])
    iterations, transform, method = 0, rigid, None
    for n, stage in enumerate(stages):
        if stage is None:  # affine stage starts from the rigid result
            stage = sitk.AffineTransform(3)
            stage.SetCenter(transform.GetCenter())
            stage.SetMatrix(transform.GetMatrix())
            stage.SetTranslation(transform.GetTranslation())
        method, counter = _method(progress.sub(n / len(stages), (n + 1) / len(stages)), "affine" if n else "rigid")
        method.SetInitialTransform(stage, inPlace=True)
        method.Execute(fixed_f, moving_f)
        iterations += counter[0]
        transform = stage
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, AIR_HU, moving.GetPixelID())
    return Registration(transform, resampled, float(method.GetMetricValue()), iterations,
                        time.perf_counter() - t0, method.GetOptimizerStopConditionDescription())


def _method(progress: Progress, name: str) -> tuple[sitk.ImageRegistrationMethod, list[int]]:
    """A configured registration method and its iteration counter (all levels), which reports progress."""
    m = sitk.ImageRegistrationMethod()
    m.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    m.SetMetricSamplingStrategy(m.RANDOM)
    m.SetMetricSamplingPercentage(SAMPLING, SEED)
    m.SetInterpolator(sitk.sitkLinear)
    m.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=MAX_ITERATIONS,
                                               relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    m.SetOptimizerScalesFromPhysicalShift()
    m.SetShrinkFactorsPerLevel(SHRINK_FACTORS)
    m.SetSmoothingSigmasPerLevel(SMOOTHING_MM)
    m.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    counter = [0]

    def on_iteration():
        counter[0] += 1
        level = m.GetCurrentLevel()
        done = (level + min(m.GetOptimizerIteration() / MAX_ITERATIONS, 1.0)) / len(SHRINK_FACTORS)
        progress.update(done, f"{name} level {level + 1}/{len(SHRINK_FACTORS)} metric {m.GetMetricValue():.4f}")

    m.AddCommand(sitk.sitkIterationEvent, on_iteration)
    return m, counter


def checkerboard_png(fixed: sitk.Image, resampled: sitk.Image, path: str | Path, squares: int = 8) -> Path:
    """QA picture: the middle axial slice of a reference/result checkerboard, windowed to 8 bits."""
    board = sitk.CheckerBoard(sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(resampled, sitk.sitkFloat32),
                              [squares, squares, 1])
    z = board.GetSize()[2] // 2
    png = sitk.GetImageFromArray(to_uint8(sitk.GetArrayViewFromImage(board)[z]))
    with atomic_path(path) as tmp:
        sitk.WriteImage(png, str(tmp))
    return Path(path)


METRICS_HEADER = ["name", "final_metric", "iterations", "seconds", "stop_condition"]


def metrics_csv(rows: list[list], path: str | Path) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(METRICS_HEADER)
    writer.writerows(rows)
    return write_text(path, text.getvalue())


def write_registration(result: Registration, fixed: sitk.Image, out_dir: Path, stem: str) -> dict[str, Path]:
    """<stem>.nii.gz (CT on the reference grid), <stem>.tfm, <stem>_checkerboard.png."""
    out = {"ct": out_dir / f"{stem}.nii.gz", "transform": out_dir / f"{stem}.tfm",
           "checkerboard": out_dir / f"{stem}_checkerboard.png"}
    write_image(result.resampled, out["ct"])
    with atomic_path(out["transform"]) as tmp:
        sitk.WriteTransform(result.transform, str(tmp))
    checkerboard_png(fixed, result.resampled, out["checkerboard"])
    return out


def metrics_row(name: str, result: Registration) -> list:
    return [name, f"{result.metric:.6f}", result.iterations, f"{result.seconds:.2f}", result.stop.replace("\n", " ")]


def coregister(reference: str | Path, cts: list[str | Path], out_dir: str | Path, affine: bool = False,
               progress: Progress | None = None) -> list[Path]:
    """Register each CT file to the reference file; write its outputs and OUT_DIR/metrics.csv. Returns the paths."""
    progress = progress or Progress()
    out_dir = Path(out_dir)
    if not cts:
        raise InputError("no CT to coregister", None, "give one or more CT files after the options")
    stems = [_stem(p) for p in cts]
    if len(set(stems)) != len(stems):
        raise InputError("two CTs have the same file name", out_dir, "give the CTs distinct names")
    for p in cts:  # fail on any unreadable header before writing anything
        _check_header(p)
    fixed = read_volume(reference, "reference CT")
    written, rows = [], []
    for n, (path, stem) in enumerate(zip(cts, stems)):
        step = progress.sub(n / len(cts), (n + 1) / len(cts))
        step.update(0.0, f"CT {n + 1}/{len(cts)}: {stem}")
        result = register(read_volume(path), fixed, affine, step)
        written += write_registration(result, fixed, out_dir, stem).values()
        rows.append(metrics_row(stem, result))
        progress.log(f"{stem}: metric {result.metric:.4f} after {result.iterations} iterations, {result.seconds:.1f} s")
    written.append(metrics_csv(rows, out_dir / "metrics.csv"))
    progress.update(1.0, "done")
    return written


def _stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _check_header(path: str | Path) -> None:
    p = require_file(path, "CT volume")
    if p.is_dir():
        return  # DICOM folders are checked when read
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError("cannot read CT volume", p, "give an uncorrupted NIfTI, NRRD or MetaImage file") from None
    if reader.GetDimension() != 3:
        raise InputError(f"CT volume must be 3D, got size {reader.GetSize()}", p, "give a 3D volume, not a 2D image")

