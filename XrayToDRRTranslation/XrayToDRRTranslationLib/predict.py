"""Translate X-rays into DRR-like images with a trained pix2pix generator.

Any X-ray the engine reads (XrayToDRRLib.xray.read_xray: DICOM, PNG/JPEG/TIFF/.npy, 2D NIfTI/NRRD) is normalised as
in training (dataset.py), resized to the network's size, translated, resized back to its own size, and written as
an image in [0, 1] (dense = bright) of the same kind beside the others in the output folder:

- DICOM -> DICOM: a copy of the input dataset (geometry tags such as DistanceSourceToDetector, ImagerPixelSpacing,
  PixelSpacing and positioner angles kept) with the new pixels as 16-bit MONOCHROME2, a new SOPInstanceUID and
  SeriesInstanceUID, ImageType DERIVED\\SECONDARY; uncompressed (Explicit VR Little Endian).
- PNG/TIFF -> 16-bit of the same type (0..65535 = 0..1); JPEG/BMP -> 16-bit PNG; NIfTI/NRRD/MetaImage -> the same
  type, float32, with the input's spacing, origin and direction; .npy -> float32 .npy.

A folder is translated file by file with a progress bar; outputs are staged and moved into place only when all
succeeded, so bad input leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from XrayToDRRLib.atomic import atomic_path
from XrayToDRRLib.errors import InputError, require_file
from XrayToDRRLib.progress import Progress
from XrayToDRRLib.render import pick_device
from XrayToDRRLib.xray import HEADER_SUFFIXES, PLAIN_SUFFIXES, Xray, read_xray

from .checkpoint import load_checkpoint, load_state
from .dataset import normalize, resize, suffix_of
from .networks import build_generator, cpu_convolutions

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
TO_PNG = (".jpg", ".jpeg", ".bmp")
RENAMED = {".mhd": ".mha", ".nhdr": ".nrrd"}  # two-file formats are written as one file


def load_generator(checkpoint: str | Path, device: str | torch.device = "auto"
                   ) -> tuple[torch.nn.Module, dict, torch.device]:
    """(generator in eval mode on the device, training config, device) from a training checkpoint."""
    data = load_checkpoint(checkpoint)
    config = data["config"]
    dev = pick_device(device)
    try:
        gen = build_generator(config)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"checkpoint config is incomplete ({e})", checkpoint,
                         "give a checkpoint written by `xraytodrr translate train`") from None
    load_state(gen, data["generator"], checkpoint, "generator")
    return gen.to(dev).eval(), config, dev


@torch.no_grad()
def translate_image(gen: torch.nn.Module, config: dict, pixels: np.ndarray, device: torch.device) -> np.ndarray:
    """(H, W) X-ray -> (H, W) float32 DRR-like image in [0, 1]."""
    size = int(config["image_size"])
    x = resize(normalize(pixels, config.get("normalization")), (size, size))
    with cpu_convolutions(device):
        y = gen(torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device)).float().cpu()
    y = resize(y, tuple(np.asarray(pixels).shape[:2]))[0, 0].numpy()
    return np.clip((y + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


# --- inputs ---------------------------------------------------------------------------------------------------
def _is_dicom_file(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_readable_name(p: Path) -> bool:
    kind = suffix_of(p)
    if kind in PLAIN_SUFFIXES or kind in HEADER_SUFFIXES or kind in DICOM_SUFFIXES:
        return True
    return kind == "" and _is_dicom_file(p)


def list_inputs(path: str | Path) -> list[Path]:
    """One X-ray file, or the X-ray files directly inside a folder (sorted; other files skipped)."""
    p = require_file(path, "X-ray or folder")
    if p.is_file():
        return [p]
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and is_readable_name(f))
    if not files:
        raise InputError("folder holds no X-ray images", p, "give a DICOM, PNG/TIFF/JPEG, NIfTI/NRRD or .npy X-ray")
    return files


def read_input(path: Path) -> Xray:
    """read_xray without its geometry requirement (translation needs none): files without an SDD get a
    placeholder one, and plain images a unit pixel spacing, neither of which is written back."""
    kind = suffix_of(path)
    if kind in PLAIN_SUFFIXES:
        return read_xray(path, sdd=1.0, pixel_spacing=1.0)
    if kind in HEADER_SUFFIXES:
        return read_xray(path, sdd=1.0)
    return read_xray(path)


def output_name(path: Path) -> str:
    kind = suffix_of(path)
    stem = path.name[: len(path.name) - len(kind)] if kind else path.name
    if kind in TO_PNG:
        return stem + ".png"
    return stem + RENAMED.get(kind, kind)


# --- outputs --------------------------------------------------------------------------------------------------
def write_like(image01: np.ndarray, source: Path, path: Path) -> Path:
    """Write a [0, 1] image as the same kind of file as `source` (see the module docstring)."""
    import SimpleITK as sitk

    kind = suffix_of(path)
    image01 = np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0)
    if kind in DICOM_SUFFIXES or kind == "":
        return _write_dicom_like(image01, source, path)
    with atomic_path(path) as tmp:
        if kind == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, image01)
        elif kind in (".png", ".tif", ".tiff"):
            out = sitk.GetImageFromArray(np.round(image01 * 65535).astype(np.uint16))
            if suffix_of(source) == kind:
                ref = _header(source)
                if ref is not None and ref.GetDimension() == 2:
                    out.SetSpacing(ref.GetSpacing())
            sitk.WriteImage(out, str(tmp))
        else:
            ref = _header(source)
            arr = image01 if ref is None or ref.GetDimension() == 2 else image01[None]
            out = sitk.GetImageFromArray(arr)
            if ref is not None:
                out.SetSpacing(ref.GetSpacing())
                out.SetOrigin(ref.GetOrigin())
                out.SetDirection(ref.GetDirection())
                for key in ref.GetMetaDataKeys():
                    if not key.startswith("ITK_") and not key.startswith("NRRD_") and key not in _NIFTI_KEYS:
                        out.SetMetaData(key, ref.GetMetaData(key))
            sitk.WriteImage(out, str(tmp), True)
    return path


_NIFTI_KEYS = {"bitpix", "datatype", "dim[0]", "dim[1]", "dim[2]", "dim[3]", "scl_slope", "scl_inter", "vox_offset",
               "cal_max", "cal_min", "sizeof_hdr", "qform_code", "sform_code"}


def _header(source: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    try:
        reader.ReadImageInformation()
        return _info_image(reader)
    except RuntimeError:
        return None


def _info_image(reader):
    """A 1-voxel image carrying the reader's geometry and metadata (no pixel data read)."""
    import SimpleITK as sitk

    dim = reader.GetDimension()
    img = sitk.Image([1] * dim, sitk.sitkUInt8)
    img.SetSpacing(reader.GetSpacing())
    img.SetOrigin(reader.GetOrigin())
    img.SetDirection(reader.GetDirection())
    for key in reader.GetMetaDataKeys():
        img.SetMetaData(key, reader.GetMetaData(key))
    return img


def _write_dicom_like(image01: np.ndarray, source: Path, path: Path) -> Path:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pydicom.valuerep import DS

    ds = pydicom.dcmread(source, force=True)
    stored = np.round(image01 * 65535).astype(np.uint16)
    for keyword in ("ModalityLUTSequence", "VOILUTSequence", "PlanarConfiguration", "NumberOfFrames",
                    "FrameIncrementPointer", "PerFrameFunctionalGroupsSequence", "PixelPaddingValue",
                    "PixelPaddingRangeLimit", "SmallestImagePixelValue", "LargestImagePixelValue",
                    "FloatPixelData", "DoubleFloatPixelData", "WindowCenterWidthExplanation", "IconImageSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if "PresentationLUTShape" in ds:
        ds.PresentationLUTShape = "IDENTITY"
    if "PixelIntensityRelationshipSign" in ds:
        ds.PixelIntensityRelationshipSign = -1  # higher value = denser, as the DRR shows it
    lo, hi = np.percentile(stored, [0.5, 99.5])
    ds.WindowCenter = DS((lo + hi) / 2, auto_format=True)
    ds.WindowWidth = DS(max(hi - lo, 1.0), auto_format=True)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    note = "DRR-like image translated from the X-ray by xraytodrr (pix2pix)"
    ds.DerivationDescription = note
    ds.SeriesDescription = "DRR-like (xraytodrr translate)"
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PixelData = np.ascontiguousarray(stored.astype("<u2")).tobytes()
    ds["PixelData"].VR = "OW"
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta = meta
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


# --- the verb's engine ----------------------------------------------------------------------------------------
def predict(inputs: str | Path, checkpoint: str | Path, output: str | Path, device: str = "auto",
            progress: Progress | None = None) -> list[Path]:
    """Translate one X-ray or every X-ray in a folder into `output` (a folder); returns the written files."""
    progress = progress or Progress()
    files = list_inputs(inputs)
    gen, config, dev = load_generator(checkpoint, device)
    out_dir = Path(output).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("output exists and is a file", out_dir, "give a folder for -o")
    names = [output_name(f) for f in files]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"several inputs would write the same output name ({', '.join(dupes[:5])})", inputs,
                         "rename the inputs so their names differ apart from the suffix")
    clash = [f for f, n in zip(files, names) if (out_dir / n).resolve() == f.resolve()]
    if clash:
        raise InputError("output would overwrite its input", clash[0], "write -o to another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for n, (src, name) in enumerate(zip(files, names)):
            progress.update(n / len(files), f"{n + 1}/{len(files)} {src.name}")
            xray = read_input(src)
            write_like(translate_image(gen, config, xray.pixels, dev), src, staging / name)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in names:
            os.replace(staging / name, out_dir / name)
            written.append(out_dir / name)
            progress.log(f"wrote {out_dir / name}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.update(1.0, "done")
    return written
