"""DRR rendering at canonical poses: bead projections, physical line integrals, batching, masks, the drr verb."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import phantom
from scipy import ndimage
from scipy.spatial.transform import Rotation

from XrayToDRRLib.pose import look_at, standard_view
from XrayToDRRLib.render import MU_WATER_PER_MM, DRRRenderer
from XrayToDRRLib.volumes import center_ras, ras_affine

RENDERERS = ["siddon", "trilinear"]


def plant_beads(img: sitk.Image, ijk_points, hu=4000.0) -> tuple[sitk.Image, np.ndarray]:
    """3x3x3-voxel dense beads at voxel indices; returns the new image and the beads' RAS centres."""
    arr = sitk.GetArrayFromImage(img)
    for i, j, k in ijk_points:
        arr[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2] = hu
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    affine = ras_affine(img)
    return out, np.array([(affine @ [i, j, k, 1.0])[:3] for i, j, k in ijk_points])


def blob_centroids(image: np.ndarray, expected: int) -> np.ndarray:
    """(col, row) intensity centroids of the bright blobs."""
    labels, n = ndimage.label(image > 0.25 * image.max())
    assert n == expected, f"found {n} blobs, expected {expected}"
    return np.array(ndimage.center_of_mass(image, labels, range(1, n + 1)))[:, ::-1]


def nearest_errors(centroids, projections):
    return np.array([np.min(np.linalg.norm(centroids - p, axis=1)) for p in projections])


def poses_around(centre, sdd=1000.0, height=96, width=112, delx=2.6, dely=2.9):
    """AP, lateral and two oblique poses, with off-centre principal points."""
    views = [([0, 1, 0], [0, 0, 1]), ([1, 0, 0], [0, 0, 1]), ([1, 0.4, 0.3], [0, 0.3, 1]), ([-0.6, -1, 0.8], [1, 0, 0])]
    return [look_at(centre + 520 * np.array(d) / np.linalg.norm(d), centre, up, sdd, height, width, delx, dely,
                    x0=3.0, y0=-4.0) for d, up in views]


@pytest.mark.parametrize("renderer", RENDERERS)
def test_beads_in_an_oblique_volume_project_onto_their_pinhole_pixels(renderer):
    direction = Rotation.from_euler("xyz", [12, -25, 35], degrees=True).as_matrix()
    empty = sitk.Image(phantom(direction=direction))
    empty = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(empty).shape, -1000.0, np.float32))
    empty.CopyInformation(phantom(direction=direction))
    ct, beads = plant_beads(empty, [(8, 10, 8), (30, 34, 27), (20, 22, 18), (6, 36, 30), (33, 6, 9)])
    engine = DRRRenderer(ct, renderer=renderer, device="cpu")
    for pose in poses_around(beads.mean(0)):
        errors = nearest_errors(blob_centroids(engine.render(pose), 5), pose.project(beads))
        assert errors.max() < 1.0, errors


@pytest.mark.parametrize("renderer", RENDERERS)
def test_beads_planted_in_the_bundled_ct_project_within_one_pixel(small_ct, renderer):
    size = np.array(small_ct.GetSize())
    points = [tuple(int(v) for v in np.round(f * (size - 1))) for f in
              ([0.3, 0.3, 0.35], [0.7, 0.35, 0.6], [0.5, 0.6, 0.5], [0.35, 0.7, 0.65])]
    with_beads, beads = plant_beads(small_ct, points, hu=30000.0)
    plain = DRRRenderer(small_ct, renderer=renderer, device="cpu")
    beaded = DRRRenderer(with_beads, renderer=renderer, device="cpu")
    for pose in poses_around(center_ras(small_ct), delx=5.0, dely=5.5):
        # Rendering is linear in attenuation: the difference image holds the beads alone.
        only_beads = beaded.render(pose) - plain.render(pose)
        errors = nearest_errors(blob_centroids(only_beads, 4), pose.project(beads))
        assert errors.max() < 1.0, errors


@pytest.mark.parametrize("renderer", RENDERERS)
def test_pixel_value_is_the_line_integral_of_attenuation(renderer):
    # A 60 mm thick water slab (0 HU) in air, crossed perpendicularly by the central ray.
    arr = np.full((60, 40, 40), -1000.0, np.float32)  # k, j, i with 1 mm voxels
    arr[10:50, :, :] = 0.0  # 40 voxels of water along z -> 40 mm
    slab = sitk.GetImageFromArray(arr)
    slab.SetOrigin((-19.5, -19.5, -29.5))
    pose = look_at([0, 0, 500.0], [0, 0, 0], [0, 1.0, 0], sdd=1000, height=9, width=9, delx=0.5)
    value = DRRRenderer(slab, renderer=renderer, device="cpu").render(pose)[4, 4]
    assert value == pytest.approx(MU_WATER_PER_MM * 40.0, rel=0.03)


def test_a_batch_of_poses_equals_the_poses_rendered_one_by_one(small_ct):
    engine = DRRRenderer(small_ct, renderer="siddon", device="cpu")
    poses = poses_around(center_ras(small_ct), height=48, width=40, delx=8.0, dely=8.0)
    batch = engine.render(poses, batch_size=4)
    singles = np.stack([engine.render(p) for p in poses])
    assert batch.shape == (4, 48, 40)
    assert np.allclose(batch, singles, atol=1e-5)


def test_mixed_detectors_in_one_call_keep_their_own_sizes(small_ct):
    engine = DRRRenderer(small_ct, device="cpu")
    ap = standard_view("ap", center_ras(small_ct), 1020, 32, 32, 12.0)
    images = engine.render([ap, ap.with_detector(height=16, width=16), ap], batch_size=1)
    assert [im.shape for im in images] == [(32, 32), (16, 16), (32, 32)]
    assert np.allclose(images[0], images[2])
    # The half-size detector covers the same field of view: its mean signal matches the full one.
    assert images[1].mean() == pytest.approx(images[0].mean(), rel=0.05)


def test_siddon_and_trilinear_agree(small_ct):
    pose = standard_view("ap", center_ras(small_ct), 1020, 64, 64, 6.0)
    a = DRRRenderer(small_ct, renderer="siddon", device="cpu").render(pose)
    b = DRRRenderer(small_ct, renderer="trilinear", device="cpu").render(pose)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert abs(a.mean() - b.mean()) / a.mean() < 0.05
