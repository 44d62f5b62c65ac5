"""Reading 2D X-rays (DICOM, PNG/JPEG/TIFF, 2D NIfTI/NRRD) into one `Xray` record with its detector geometry.

Pixels are float32 (H, W) with row 0 = the first stored row, displayed dense = bright: MONOCHROME1 images are
inverted onto the MONOCHROME2 convention and the DICOM modality LUT (RescaleSlope/Intercept) is applied.
Geometry: `sdd` is DistanceSourceToDetector (0018,1110); `delx`/`dely` are the column/row spacing on the detector,
from ImagerPixelSpacing (0018,1164) else PixelSpacing (0028,0030). PNG/JPEG/TIFF carry no geometry, so the caller
passes `sdd` and `pixel_spacing`; values passed explicitly always override those stored in the file.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from .errors import InputError, require_file

SDD_TAG = "DistanceSourceToDetector (0018,1110)"
IMAGER_SPACING_TAG = "ImagerPixelSpacing (0018,1164)"
PIXEL_SPACING_TAG = "PixelSpacing (0028,0030)"
REDUCTIONS = ("max", "mean", "first")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")
HEADER_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")
FIX_TYPES = "give a DICOM X-ray (.dcm), a PNG/JPEG/TIFF with --sdd and --pixel-spacing, or a 2D NIfTI/NRRD"

# DICOM attributes copied into Xray.metadata (acquisition and geometry; no patient identifiers).
METADATA_KEYWORDS = (
    "Modality", "SOPClassUID", "SOPInstanceUID", "Manufacturer", "ManufacturerModelName", "BodyPartExamined",
    "ViewPosition", "ImageLaterality", "Laterality", "PatientOrientation", "PatientPosition", "ImageType",
    "PresentationIntentType", "KVP", "ExposureTime", "XRayTubeCurrent", "Exposure", "ExposureInuAs",
    "DistanceSourceToDetector", "DistanceSourceToPatient", "EstimatedRadiographicMagnificationFactor",
    "PositionerType", "PositionerPrimaryAngle", "PositionerSecondaryAngle", "DetectorPrimaryAngle",
    "DetectorSecondaryAngle", "TableHeight", "ImagerPixelSpacing", "PixelSpacing", "PixelSpacingCalibrationType",
    "DetectorType", "FieldOfViewShape", "FieldOfViewDimensions", "Rows", "Columns", "NumberOfFrames",
    "BitsAllocated", "BitsStored", "PixelRepresentation", "PhotometricInterpretation", "RescaleSlope",
    "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign", "BurnedInAnnotation", "TransferSyntaxUID",
)


@dataclasses.dataclass
class Xray:
    """One 2D X-ray. `delx` is the column spacing and `dely` the row spacing on the detector, in mm."""

    pixels: np.ndarray
    sdd: float | None = None
    delx: float | None = None
    dely: float | None = None
    path: Path | None = None
    photometric: str = "MONOCHROME2"
    n_frames: int = 1
    metadata: dict = dataclasses.field(default_factory=dict)
    sdd_source: str | None = None      # the DICOM tag, header key or "--sdd" the SDD came from
    spacing_source: str | None = None  # the DICOM tag, header or "--pixel-spacing" the spacing came from

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def has_geometry(self) -> bool:
        return self.sdd is not None and self.delx is not None and self.dely is not None

    def missing_geometry(self) -> list[str]:
        """Names of what is missing for a registration-ready X-ray (DICOM tags for DICOM files)."""
        dicom = self.metadata.get("format") == "DICOM"
        missing = []
        if self.sdd is None:
            missing.append(SDD_TAG if dicom else "SDD (source-to-detector distance)")
        if self.delx is None or self.dely is None:
            missing.append(f"{IMAGER_SPACING_TAG} or {PIXEL_SPACING_TAG}" if dicom else "pixel spacing")
        return missing


def read_xray(path: str | Path, sdd: float | None = None, pixel_spacing=None, reduce: str = "max",
              frame: int | None = None) -> Xray:
    """Read one X-ray. `pixel_spacing` is one number (square pixels) or (row, column) mm; `sdd` in mm. Both
    override the file's values. PNG/JPEG/TIFF/.npy need both; NIfTI/NRRD need `sdd` unless their header has it.
    `reduce` turns a multi-frame DICOM into one image: max | mean | first; `frame` (0-based) instead takes that
    frame alone, its metadata holding its own C-arm angles and distances (`dicom_frames.frame_geometry`), `frame`
    (1-based) and `frame_angles` (where the angles came from; absent when the file has none per frame)."""
    xray = _read_any(path, reduce, frame)
    _override(xray, sdd, pixel_spacing)
    kind = xray.metadata.get("format")
    if kind in ("PNG/JPEG/TIFF", "NumPy") or (kind == "NIfTI/NRRD" and xray.sdd is None):
        lacking = [flag for flag, ok in (("--sdd", xray.sdd is not None),
                                         ("--pixel-spacing", xray.delx is not None)) if not ok]
        if lacking:
            what = {"PNG/JPEG/TIFF": "a PNG/JPEG/TIFF image carries no X-ray geometry",
                    "NumPy": "a .npy array carries no X-ray geometry"}.get(kind, "the image header holds no SDD")
            raise InputError(f"{what} (missing {' and '.join(lacking)})",
                             xray.path, f"pass {' and '.join(f'{flag} MM' for flag in lacking)}")
    return xray


def require_geometry(xray: Xray) -> Xray:
    """Raise InputError naming exactly which geometry (DICOM tag) is missing; return the X-ray when complete."""
    missing = xray.missing_geometry()
    if missing:
        flags = [flag for flag, ok in (("--sdd MM", xray.sdd is not None),
                                       ("--pixel-spacing MM", xray.delx is not None and xray.dely is not None))
                 if not ok]
        raise InputError(f"missing {'; missing '.join(missing)}", xray.path,
                         f"pass {' and '.join(flags)}, or write the tag with `xraytodrr set-sdd`")
    return xray


# --- internals ------------------------------------------------------------------------------------------------
def one_line(error, limit: int = 120) -> str:
    """An exception's text on one line, shortened (CLI errors are one line)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suffix(path) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _positive(value, name: str, path) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}", path, f"pass a positive {name} in mm") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} must be positive, got {value}", path, f"pass a positive {name} in mm")
    return v


def parse_spacing(pixel_spacing, path=None) -> tuple[float, float] | None:
    """One number or (row, column) -> (dely, delx) in mm; None stays None."""
    if pixel_spacing is None:
        return None
    if isinstance(pixel_spacing, str):
        pixel_spacing = [s for s in pixel_spacing.replace("\\", ",").replace("x", ",").split(",") if s.strip()]
    values = list(pixel_spacing) if np.ndim(pixel_spacing) else [pixel_spacing]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise InputError(f"pixel spacing must be one or two numbers, got {pixel_spacing!r}", path,
                         "pass --pixel-spacing MM (or ROW,COL)")
    return _positive(values[0], "pixel spacing", path), _positive(values[1], "pixel spacing", path)


def _override(xray: Xray, sdd, pixel_spacing) -> None:
    if sdd is not None:
        xray.sdd, xray.sdd_source = _positive(sdd, "SDD", xray.path), "--sdd"
    spacing = parse_spacing(pixel_spacing, xray.path)
    if spacing is not None:
        (xray.dely, xray.delx), xray.spacing_source = spacing, "--pixel-spacing"


def _read_any(path: str | Path, reduce: str = "max", frame: int | None = None) -> Xray:
    """Read pixels and whatever geometry the file holds (None where it holds none)."""
    if reduce not in REDUCTIONS:
        raise InputError(f"unknown frame reduction '{reduce}'", None, f"use one of {', '.join(REDUCTIONS)}")
    p = require_file(path, "X-ray")
    if p.is_dir():
        raise InputError("is a folder, not an X-ray file", p, "give one X-ray image file (for example X.dcm)")
    kind = _suffix(p)
    if kind in PLAIN_SUFFIXES:
        return _read_plain(p)
    if kind in HEADER_SUFFIXES:
        return _read_header_image(p)
    return _read_dicom(p, reduce, frame)


def _to_gray(arr: np.ndarray, path) -> np.ndarray:
    """(H,W), (H,W,C) with C in 1..4 (gray+alpha, RGB, RGBA) -> float32 (H,W)."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4):
        channels = arr.shape[-1]
        if channels >= 3:
            arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        else:
            arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"is not a 2D image (array shape {tuple(arr.shape)})", path,
                         "give a single 2D X-ray, not a volume or a stack")
    if min(arr.shape) < 2:
        raise InputError(f"image is too small ({arr.shape[0]}x{arr.shape[1]} pixels)", path, "give a real X-ray")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _read_plain(p: Path) -> Xray:
    if _suffix(p) == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"cannot read as a NumPy array ({type(e).__name__})", p,
                             "give a valid .npy image") from None
        return Xray(_to_gray(arr, p), path=p, metadata={"format": "NumPy"})
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError:
        raise InputError("cannot read as an image (corrupt or not a PNG/JPEG/TIFF)", p, FIX_TYPES) from None
    arr = sitk.GetArrayFromImage(img)
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        arr = arr[0]
    return Xray(_to_gray(arr, p), path=p, metadata={"format": "PNG/JPEG/TIFF"})


def _read_header_image(p: Path) -> Xray:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError:
        raise InputError("cannot read as a NIfTI/NRRD/MetaImage image (corrupt?)", p, FIX_TYPES) from None
    size = img.GetSize()
    if img.GetDimension() > 3 or (img.GetDimension() == 3 and size[2] != 1):
        raise InputError(f"is a {img.GetDimension()}D volume of size {size}, not a 2D X-ray", p,
                         "give a 2D image (a CT volume goes to --volume)")
    arr = sitk.GetArrayFromImage(img)
    if img.GetDimension() == 3:
        arr = arr[0]
    spacing = img.GetSpacing()
    xray = Xray(_to_gray(arr, p), delx=float(spacing[0]), dely=float(spacing[1]), path=p,
                metadata={"format": "NIfTI/NRRD"}, spacing_source="image header")
    for key in img.GetMetaDataKeys():
        value = img.GetMetaData(key).strip()
        lower = key.lower()
        if lower in ("sdd", "distancesourcetodetector", "xraytodrr_sdd"):
            xray.sdd, xray.sdd_source = _positive(value, "SDD", p), f"header key {key}"
        elif lower == "descrip" and "sdd=" in value.lower():
            try:
                xray.sdd = _positive(value.lower().split("sdd=")[1].split()[0].rstrip(";,"), "SDD", p)
                xray.sdd_source = "header descrip"
            except InputError:
                pass
    return xray


def _json_value(value):
    """pydicom element value -> JSON-friendly Python value (None for sequences and bytes)."""
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence

    if isinstance(value, Sequence) or isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)


def find_dicom_value(ds, keyword: str):
    """A tag's value at the top level, else in the first shared / per-frame functional group (enhanced IODs)."""
    if keyword in ds and ds[keyword].value not in (None, "", b""):
        return ds[keyword].value
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(group)
        if not seq:
            continue
        for item in seq[0]:
            if item.VR == "SQ" and item.value:
                sub = item.value[0]
                if keyword in sub and sub[keyword].value not in (None, "", b""):
                    return sub[keyword].value
    return None


def read_dicom_dataset(p: Path, stop_before_pixels: bool = False):
    """pydicom Dataset, or InputError naming the file when it is not a readable DICOM file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(p, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        if _suffix(p) in (".dcm", ".dicom", ".ima"):  # DICOM without the 128-byte preamble ("DICM")
            try:
                ds = pydicom.dcmread(p, force=True, stop_before_pixels=stop_before_pixels)
                if "Rows" in ds and "Columns" in ds:
                    return ds
            except Exception:
                pass
        raise InputError("not a DICOM file (no DICM header)", p, FIX_TYPES) from None
    except Exception as e:  # truncated or corrupt: pydicom raises many types
        raise InputError(f"cannot read as DICOM ({type(e).__name__}: {one_line(e)})", p,
                         "give an uncorrupted DICOM file") from None


def dicom_geometry(ds) -> dict:
    """SDD and detector spacing with the tag each came from (None where absent or not positive)."""
    out = {"sdd": None, "sdd_source": None, "dely": None, "delx": None, "spacing_source": None}
    sdd = find_dicom_value(ds, "DistanceSourceToDetector")
    try:
        if sdd is not None and float(sdd) > 0:
            out["sdd"], out["sdd_source"] = float(sdd), SDD_TAG
    except (TypeError, ValueError):
        pass
    for keyword, tag in (("ImagerPixelSpacing", IMAGER_SPACING_TAG), ("PixelSpacing", PIXEL_SPACING_TAG)):
        value = find_dicom_value(ds, keyword)
        try:
            values = [float(v) for v in (value if np.ndim(value) else [value])] if value is not None else []
        except (TypeError, ValueError):
            values = []
        if len(values) == 1:
            values = values * 2
        if len(values) == 2 and min(values) > 0:
            out["dely"], out["delx"], out["spacing_source"] = values[0], values[1], tag
            break
    return out


def dicom_metadata(ds) -> dict:
    meta = {"format": "DICOM"}
    for keyword in METADATA_KEYWORDS:
        if keyword == "TransferSyntaxUID":
            value = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        else:
            value = find_dicom_value(ds, keyword)
        value = _json_value(value) if value is not None else None
        if value not in (None, "", []):
            meta[keyword] = value
    return meta


def _nominal_range(ds) -> tuple[float, float]:
    """The range of stored values the header allows (BitsStored, PixelRepresentation)."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _modality_lut(values, ds) -> np.ndarray:
    """Stored values -> modality values: Modality LUT Sequence, else RescaleSlope/Intercept (either may be absent)."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(np.asarray(values).astype(np.int64), ds), dtype=np.float64)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return np.asarray(values, dtype=np.float64) * slope + intercept


def _dicom_pixels(ds, p: Path) -> np.ndarray:
    """Modality values, frames first when multi-frame, colour samples last; MONOCHROME1 inverted."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError("DICOM file holds no image (no PixelData)", p,
                         "give the DICOM image itself, not a report, DICOMDIR or structured document")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        raise InputError("is a palette-colour image, not an X-ray", p, "give a MONOCHROME X-ray")
    try:
        stored = ds.pixel_array
    except Exception as e:  # no decoder for a compressed transfer syntax, or truncated pixel data
        return _pixels_via_simpleitk(p, e, photometric)
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        return np.asarray(stored, dtype=np.float64)
    values = _modality_lut(stored, ds)
    if photometric == "MONOCHROME1":
        lo, hi = _modality_lut(np.array(_nominal_range(ds)), ds)
        values = (float(lo) + float(hi)) - values
    return values


def _pixels_via_simpleitk(p: Path, first_error: Exception, photometric: str) -> np.ndarray:
    """Fallback decoder (GDCM inside SimpleITK handles JPEG, JPEG 2000 and RLE); it applies the rescale itself."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.SetImageIO("GDCMImageIO")
        img = reader.Execute()
        arr = sitk.GetArrayFromImage(img).astype(np.float64)
    except RuntimeError:
        raise InputError(f"cannot decode the DICOM pixel data ({type(first_error).__name__}: "
                         f"{one_line(first_error, 100)})", p, "give an uncorrupted, uncompressed DICOM X-ray") from None
    itk = (sitk.Version.ITKMajorVersion(), sitk.Version.ITKMinorVersion())
    if photometric == "MONOCHROME1" and itk < (5, 4):  # ITK >= 5.4 inverts MONOCHROME1 itself
        arr = float(arr.min()) + float(arr.max()) - arr
    return arr


def _read_dicom(p: Path, reduce: str, frame: int | None = None) -> Xray:
    ds = read_dicom_dataset(p)
    values = _dicom_pixels(ds, p)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    colour = int(ds.get("SamplesPerPixel", 1) or 1) > 1
    multi = frames > 1 or (values.ndim == 3 and not colour) or (values.ndim == 4)
    frames = values.shape[0] if multi else 1
    if frame is not None and not 0 <= frame < frames:
        raise InputError(f"has {frames} frame{'s' if frames != 1 else ''}: no frame {frame + 1}", p,
                         f"give frame numbers from 1 to {frames}")
    if frame is not None:
        values = values[frame] if multi else values
    elif multi:
        if reduce == "first":
            values = values[0]
        elif reduce == "mean":
            values = values.mean(axis=0)
        else:
            values = values.max(axis=0)
    pixels = _to_gray(values, p)
    geometry = dicom_geometry(ds)
    meta = dicom_metadata(ds)
    if frame is not None:
        from .dicom_frames import frame_geometry

        meta["frame"] = frame + 1
        per_frame = frame_geometry(ds, frames, p)
        own = per_frame[frame] if per_frame else {}
        meta.update(own)
        if "DistanceSourceToDetector" in own:
            geometry["sdd"], geometry["sdd_source"] = own["DistanceSourceToDetector"], f"frame {frame + 1}'s {SDD_TAG}"
    elif frames > 1:
        meta["frame_reduction"] = reduce
    return Xray(pixels, geometry["sdd"], geometry["delx"], geometry["dely"], p, photometric, frames, meta,
                geometry["sdd_source"], geometry["spacing_source"])
