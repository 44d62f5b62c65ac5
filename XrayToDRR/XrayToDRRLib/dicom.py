"""DICOM X-ray geometry: report it (`xray_info`), add it to a copy (`set_sdd`), and write new DX files.

Geometry tags: DistanceSourceToDetector (0018,1110) = SDD in mm; ImagerPixelSpacing (0018,1164) = (row, column)
spacing on the detector plane in mm, preferred over PixelSpacing (0028,0030), which may be calibrated to the patient.
"""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import InputError, require_file
from .xray import (IMAGER_SPACING_TAG, PIXEL_SPACING_TAG, _positive, _read_any, dicom_geometry,
                   parse_spacing, read_dicom_dataset)


def xray_info(path: str | Path) -> dict:
    """What an X-ray file holds: size, photometric interpretation, frames, SDD and pixel spacing with the tag each
    came from, and the geometry still missing (`missing`, empty when the file is registration-ready).
    Unreadable files raise InputError; a readable file with missing tags does not."""
    x = _read_any(path)
    meta = dict(x.metadata)
    kind = meta.pop("format", "unknown")
    missing = x.missing_geometry()
    info = {
        "file": str(x.path),
        "format": kind,
        "size": [x.height, x.width],
        "photometric_interpretation": x.photometric,
        "frames": x.n_frames,
        "sdd_mm": x.sdd,
        "sdd_tag": x.sdd_source,
        "pixel_spacing_mm": None if x.delx is None else [x.dely, x.delx],
        "pixel_spacing_tag": x.spacing_source,
        "pixel_range": [float(np.min(x.pixels)), float(np.max(x.pixels))],
        "missing": missing,
        "ready": not missing,
    }
    notes = []
    if x.spacing_source == PIXEL_SPACING_TAG:
        notes.append(f"spacing from {PIXEL_SPACING_TAG}: it may be calibrated to the patient plane; "
                     f"{IMAGER_SPACING_TAG} (detector plane) is what registration needs")
    if missing and kind == "DICOM":
        flag = "" if x.delx is not None else " --pixel-spacing MM"
        notes.append(f"add the geometry to a copy: xraytodrr set-sdd -i {x.path} -o NEW.dcm --sdd MM{flag}")
    elif missing:
        notes.append("this file type carries no X-ray geometry: pass --sdd and --pixel-spacing where it is used")
    if x.n_frames > 1:
        notes.append(f"{x.n_frames} frames: reduced by {meta.get('frame_reduction', 'max')} when read")
    info["notes"] = notes
    info["dicom"] = meta if kind == "DICOM" else {}
    return info


def set_sdd(src: str | Path, dst: str | Path, sdd: float, pixel_spacing=None) -> Path:
    """Copy a DICOM X-ray to `dst` with DistanceSourceToDetector = `sdd` mm (and ImagerPixelSpacing when
    `pixel_spacing` is given: one number or (row, column) mm) under a new SOPInstanceUID. Never touches `src`.
    Refuses to write a copy that would still lack pixel spacing."""
    from pydicom.uid import generate_uid
    from pydicom.valuerep import DS

    src = require_file(src, "DICOM X-ray")
    dst = Path(dst)
    if dst.is_dir():
        dst = dst / src.name
    if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src)):
        raise InputError("output is the input file; set-sdd never overwrites its input", dst,
                         "write to a new file, e.g. -o " + src.with_name(src.stem + "_sdd.dcm").name)
    sdd = _positive(sdd, "SDD", src)
    spacing = parse_spacing(pixel_spacing, src)
    ds = read_dicom_dataset(src)
    if "PixelData" not in ds:
        raise InputError("DICOM file holds no image (no PixelData)", src, "give a DICOM X-ray image")
    if spacing is None and dicom_geometry(ds)["delx"] is None:
        raise InputError(f"has neither {IMAGER_SPACING_TAG} nor {PIXEL_SPACING_TAG}", src,
                         "pass --pixel-spacing MM (the detector pixel size) as well")
    ds.DistanceSourceToDetector = DS(sdd, auto_format=True)
    if spacing is not None:
        ds.ImagerPixelSpacing = [DS(spacing[0], auto_format=True), DS(spacing[1], auto_format=True)]
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    if getattr(ds, "file_meta", None) is not None and "TransferSyntaxUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    note = "DistanceSourceToDetector" + (" and ImagerPixelSpacing" if spacing is not None else "") + \
        " set by xraytodrr set-sdd"
    ds.DerivationDescription = (str(ds.get("DerivationDescription", "")) + "; " + note).strip("; ")[:1024]
    with atomic_path(dst) as tmp:
        ds.save_as(tmp)
    return dst


def write_xray_dicom(pixels: np.ndarray, path: str | Path, sdd: float, delx: float, dely: float | None = None,
                     for_processing: bool = False, **meta) -> Path:
    """Write a (H,W) image as a DX DICOM (MONOCHROME2, 16-bit unsigned, Explicit VR Little Endian) with
    DistanceSourceToDetector, ImagerPixelSpacing and PixelSpacing, under new UIDs.

    Integer images within 0..65535 are stored as they are; any other image is scaled linearly from its minimum
    and maximum onto 0..65535 (DX requires RescaleSlope 1 and RescaleIntercept 0, so floats are not kept exactly).
    `for_processing` picks the SOP class "Digital X-Ray Image Storage - For Processing" (else For Presentation).
    Other keyword arguments are DICOM keywords (e.g. KVP=110, ViewPosition="AP", PositionerPrimaryAngle=0.0)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.datadict import tag_for_keyword
    from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, DigitalXRayImageStorageForPresentation,
                             DigitalXRayImageStorageForProcessing, ExplicitVRLittleEndian, generate_uid)
    from pydicom.valuerep import DS

    path = Path(path)
    img = np.asarray(pixels)
    if img.ndim != 2:
        raise InputError(f"expected a 2D image, got shape {img.shape}", path)
    sdd = _positive(sdd, "SDD", path)
    delx = _positive(delx, "pixel spacing", path)
    dely = _positive(dely if dely is not None else delx, "pixel spacing", path)
    stored = _as_uint16(img)

    sop_class = DigitalXRayImageStorageForProcessing if for_processing else DigitalXRayImageStorageForPresentation
    sop_uid, now = generate_uid(), datetime.datetime.now()
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    file_meta.ImplementationVersionName = "XRAYTODRR_01"

    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time
    # Patient / study / equipment (type 2: present, possibly empty)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.Manufacturer, ds.SoftwareVersions = "XrayToDRR", "0.1.0"
    # Series and image
    ds.Modality = "DX"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image pixel and DX image modules
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelIntensityRelationship = "LOG" if for_processing else "DISP"
    ds.PixelIntensityRelationshipSign = -1  # higher values = less X-ray intensity (dense = bright)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "IDENTITY"
    lo, hi = np.percentile(stored, [0.5, 99.5])
    ds.WindowCenter = DS((lo + hi) / 2, auto_format=True)
    ds.WindowWidth = DS(max(hi - lo, 1.0), auto_format=True)
    # Geometry: detector plane spacing (row, column), SDD
    ds.DetectorType = ""
    ds.ImagerPixelSpacing = [DS(dely, auto_format=True), DS(delx, auto_format=True)]
    ds.PixelSpacing = [DS(dely, auto_format=True), DS(delx, auto_format=True)]
    ds.DistanceSourceToDetector = DS(sdd, auto_format=True)
    for keyword, value in meta.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"write_xray_dicom: '{keyword}' is not a DICOM keyword")
        if isinstance(value, float):
            value = DS(value, auto_format=True)
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], float):
            value = [DS(v, auto_format=True) for v in value]
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored.astype("<u2")).tobytes()
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path


def _as_uint16(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if not np.all(np.isfinite(img)):
        raise InputError("image contains NaN or infinity", None, "write a finite image")
    if (np.issubdtype(img.dtype, np.integer) or np.all(np.mod(img, 1) == 0)) and img.min() >= 0 \
            and img.max() <= 65535:
        return img.astype(np.uint16)
    from .images import to_uint16

    return to_uint16(img)


# --- pose -> DICOM positioning ---------------------------------------------------------------------------------


def _direction_letters(v_ras) -> str:
    """DICOM patient-orientation letters of a RAS direction (largest components first, up to two letters)."""
    v = np.asarray(v_ras, dtype=np.float64)
    names = (("R", "L"), ("A", "P"), ("H", "F"))  # letter for the positive / negative RAS direction
    order = np.argsort(-np.abs(v))
    letters = [names[a][0 if v[a] > 0 else 1] for a in order if abs(v[a]) > 0.25]
    return "".join(letters[:2]) or names[order[0]][0 if v[order[0]] > 0 else 1]


def patient_orientation(pose) -> list[str]:
    """PatientOrientation (0020,0020): patient directions of increasing column and increasing row index,
    assuming the CT's RAS axes are the patient's (e.g. ['L', 'F'] for an AP view)."""
    return [_direction_letters(pose.rotation[:, 0]), _direction_letters(pose.rotation[:, 1])]


def positioner_angles(pose) -> tuple[float, float]:
    """(PositionerPrimaryAngle, PositionerSecondaryAngle) in degrees, DICOM C-arm convention for the detector
    direction seen from the isocentre: primary LAO positive / RAO negative about the patient's long axis (0 = the
    detector anterior, i.e. a PA beam), secondary cranial positive / caudal negative."""
    v = pose.principal_ray  # source -> detector in RAS
    primary = math.degrees(math.atan2(-v[0], v[1]))
    secondary = math.degrees(math.asin(float(np.clip(v[2], -1.0, 1.0))))
    primary = 180.0 if primary <= -179.9995 else primary  # report (-180, 180]
    return round(primary, 3) + 0.0, round(secondary, 3) + 0.0


def view_name(pose) -> str:
    """Nearest standard view within 20 degrees: 'AP', 'PA', 'LL' (left lateral: beam towards the patient's left),
    'RL', 'axial' (beam along the long axis), else 'oblique'."""
    v = pose.principal_ray
    axis = int(np.argmax(np.abs(v)))
    if abs(v[axis]) < math.cos(math.radians(20)):
        return "oblique"
    if axis == 2:
        return "axial"
    if axis == 1:
        return "AP" if v[1] < 0 else "PA"
    return "LL" if v[0] < 0 else "RL"  # beam towards the patient's left = left side against the detector
