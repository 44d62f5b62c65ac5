"""Tiny synthetic CTs and label maps for the preparation tests (Testing/test_prepare.py).

Grid: 30 x 24 x 20 voxels of 2 x 2 x 2.5 mm, centred on world origin, LPS direction diag(1, -1, 1) like a real
scanner's (so RAS x = -LPS x and index j runs posterior -> anterior). Labels, as SimpleITK (i, j, k) index boxes:
  1: i 6..11,  j 5..12, k 4..10   (RAS x > 0: the patient's right) + a 1-voxel island at (20, 2, 15)
  2: i 18..25, j 8..15, k 6..12   (RAS x < 0: left)                + a 3-voxel island along i at (10..12, 20, 2)
  3: i 12..16, j 0..3,  k 15..19  (touches the j = 0 and k = 19 faces: crops there are clipped)
"""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

SIZE = (30, 24, 20)
SPACING = (2.0, 2.0, 2.5)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
BOXES = {1: ((6, 11), (5, 12), (4, 10)), 2: ((18, 25), (8, 15), (6, 12)), 3: ((12, 16), (0, 3), (15, 19))}
ISLANDS = {1: [(20, 2, 15)], 2: [(10, 20, 2), (11, 20, 2), (12, 20, 2)]}


def box_voxels(label: int) -> int:
    return int(np.prod([hi - lo + 1 for lo, hi in BOXES[label]]))


def centred(img: sitk.Image) -> sitk.Image:
    """Put the grid's centre at world origin (keeps spacing and direction)."""
    d = np.array(img.GetDirection()).reshape(3, 3)
    img.SetOrigin((-d @ (np.array(img.GetSpacing()) * (np.array(img.GetSize()) - 1) / 2)).tolist())
    return img


def labelled_phantom(direction=DIRECTION) -> tuple[sitk.Image, sitk.Image]:
    """(CT in HU as int16, label map as uint8) on the same grid."""
    seg = np.zeros(SIZE[::-1], np.uint8)  # numpy index (k, j, i)
    for label, ((i0, i1), (j0, j1), (k0, k1)) in BOXES.items():
        seg[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = label
    for label, voxels in ISLANDS.items():
        for i, j, k in voxels:
            seg[k, j, i] = label
    ct = np.where(seg > 0, 700, 40).astype(np.int16)
    ct[:, :, :2] = -1000  # some air at the sides
    images = []
    for arr in (ct, seg):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SPACING)
        img.SetDirection(tuple(np.asarray(direction, float).ravel()))
        images.append(centred(img))
    return images[0], images[1]


def oblique_direction(degrees: float = 20.0) -> np.ndarray:
    """DIRECTION rotated about the superior axis: an oblique, still left-handed LPS geometry."""
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return rot @ np.array(DIRECTION).reshape(3, 3)


def smooth_phantom(n: int = 40, spacing: float = 2.5) -> sitk.Image:
    """An asymmetric, blurred body (ellipsoid with an off-centre bone rod and a denser ball) for registration."""
    c = (np.arange(n) - (n - 1) / 2) * spacing
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    hu = np.full((n, n, n), -1000.0, np.float32)
    body = (x / 38) ** 2 + (y / 30) ** 2 + (z / 40) ** 2 < 1
    hu[body] = 0.0
    hu[body & (((x - 12) / 7) ** 2 + ((y + 5) / 7) ** 2 < 1)] = 1000.0
    hu[(x + 15) ** 2 + (y - 8) ** 2 + (z - 12) ** 2 < 10 ** 2] = 500.0
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing([spacing] * 3)
    img.SetOrigin([-(n - 1) / 2 * spacing] * 3)
    return sitk.SmoothingRecursiveGaussian(img, 2.0)


def write(img: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(img, str(path), True)
    return path


@pytest.fixture
def ct_seg_files(tmp_path) -> tuple[Path, Path]:
    """The labelled phantom written to tmp_path/in/ct.nii.gz and seg.nii.gz."""
    folder = tmp_path / "in"
    folder.mkdir()
    ct, seg = labelled_phantom()
    return write(ct, folder / "ct.nii.gz"), write(seg, folder / "seg.nii.gz")
