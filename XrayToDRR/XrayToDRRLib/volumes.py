"""Reading and writing CT volumes and label maps (SimpleITK), with geometry in Slicer RAS.

SimpleITK works in LPS; Slicer shows RAS = LPS with x and y negated. Arrays handed to renderers are indexed
(i, j, k) = SimpleITK's (x, y, z) index order, with `ras_affine` mapping index -> RAS mm (voxel centres).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import InputError, require_file

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def read_image(path: str | Path, what: str = "image") -> sitk.Image:
    """Read a NIfTI/NRRD/MetaImage file or a DICOM series folder; bad files raise InputError naming the file."""
    p = require_file(path, what)
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise InputError(f"{what} folder holds no DICOM series", p, "point to a folder of DICOM slices or a volume file")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(p), series[0]))
            return reader.Execute()
        return sitk.ReadImage(str(p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1][:160] if str(e).strip() else "unreadable"
        raise InputError(f"cannot read {what} ({first})", p,
                         "give an uncorrupted NIfTI (.nii/.nii.gz), NRRD, MetaImage or DICOM series") from None


def read_volume(path: str | Path, what: str = "CT volume") -> sitk.Image:
    img = read_image(path, what)
    if img.GetDimension() != 3 or min(img.GetSize()) < 2:
        raise InputError(f"{what} must be 3D, got size {img.GetSize()}", path, "give a 3D volume, not a 2D image")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{what} must be scalar, got {img.GetNumberOfComponentsPerPixel()} components", path,
                         "give a single-channel volume")
    return img


def read_labels(path: str | Path, reference: sitk.Image | None = None, what: str = "segmentation") -> sitk.Image:
    """Read an integer label map; it must be non-empty and, when given, on the reference grid."""
    img = read_volume(path, what)
    if img.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkInt8, sitk.sitkUInt32,
                                sitk.sitkInt32, sitk.sitkInt64, sitk.sitkUInt64):
        arr = sitk.GetArrayViewFromImage(img)
        if not np.all(np.mod(arr, 1) == 0):
            raise InputError("segmentation has non-integer values", path, "give a label map (integer labels)")
        img = sitk.Cast(img, sitk.sitkUInt16)
    if not np.any(sitk.GetArrayViewFromImage(img)):
        raise InputError("segmentation is empty (all voxels are 0)", path, "give a label map with at least one label")
    if reference is not None:
        check_same_grid(reference, img, path)
    return img


def check_same_grid(reference: sitk.Image, other: sitk.Image, path) -> None:
    same = (reference.GetSize() == other.GetSize()
            and np.allclose(reference.GetSpacing(), other.GetSpacing(), atol=1e-4)
            and np.allclose(reference.GetOrigin(), other.GetOrigin(), atol=1e-3)
            and np.allclose(reference.GetDirection(), other.GetDirection(), atol=1e-4))
    if not same:
        raise InputError(f"grid {other.GetSize()} @ {np.round(other.GetSpacing(), 3).tolist()} differs from the CT's "
                         f"{reference.GetSize()} @ {np.round(reference.GetSpacing(), 3).tolist()}", path,
                         "resample the segmentation onto the CT grid (or use the CT it was drawn on)")


def labels_present(labels: sitk.Image) -> list[int]:
    return [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v != 0]


def check_labels(labels: sitk.Image, wanted: list[int] | None, path) -> list[int]:
    """Return the wanted labels (all present ones by default); an absent label is an error listing those present."""
    present = labels_present(labels)
    if not wanted:
        return present
    absent = [w for w in wanted if w not in present]
    if absent:
        raise InputError(f"label(s) {absent} not in segmentation; present: {present}", path,
                         "choose labels from those present")
    return list(wanted)


def write_image(img: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), compress)
    return path


def ras_affine(img: sitk.Image) -> np.ndarray:
    """4x4 matrix from (i, j, k) voxel index to RAS mm at voxel centres."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = d @ np.diag(img.GetSpacing())
    m[:3, 3] = img.GetOrigin()
    return LPS_TO_RAS @ m


def array_ijk(img: sitk.Image, dtype=np.float32) -> np.ndarray:
    """Voxel array indexed (i, j, k), matching `ras_affine`."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(dtype, copy=False))


def center_ras(img: sitk.Image) -> np.ndarray:
    """RAS position of the volume's geometric centre (middle of the voxel grid)."""
    size = np.array(img.GetSize(), dtype=np.float64)
    return (ras_affine(img) @ np.append((size - 1) / 2, 1.0))[:3]


def bounds_ras(img: sitk.Image) -> np.ndarray:
    """(8,3) RAS corners of the voxel grid (voxel centres of the corner voxels)."""
    size = np.array(img.GetSize()) - 1
    corners = np.array([[i, j, k, 1] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], float)
    return (corners @ ras_affine(img).T)[:, :3]
